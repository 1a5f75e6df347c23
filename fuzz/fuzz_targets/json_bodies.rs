//! The protocol's JSON bodies: no panic, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubmail::protocol::{AckRequest, MessageStatus, NotifyRequest, PollRequest, PollResponse};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(input: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(input) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(again, v);
    }
}

fuzz_target!(|input: &[u8]| {
    round_trip::<PollRequest>(input);
    round_trip::<PollResponse>(input);
    round_trip::<AckRequest>(input);
    round_trip::<NotifyRequest>(input);
    round_trip::<MessageStatus>(input);
});
