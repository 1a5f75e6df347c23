//! What a blocklist reads from others: a shared list's published document
//! (from any web server the user subscribed to) and its entries. No
//! panic; nothing is taken without the subscription's signer; what is
//! taken is bounded; entries round-trip through their stored form.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stubmail::blocklist::{self, Subscription, Target};

fn subscription() -> &'static Subscription {
    static S: OnceLock<Subscription> = OnceLock::new();
    S.get_or_init(|| {
        let id = stubmail::Identity::generate(None, "lists@example.org", "http://o/").unwrap();
        Subscription {
            url: "https://lists.example/bl".into(),
            signer: stubmail::pgp::armored(&id.cert()).unwrap(),
            signer_fpr: id.fpr(),
            refresh_secs: 3600,
            published: 0,
            fetched: 0,
            tried: 0,
            error: None,
            entries: vec![],
        }
    })
}

fuzz_target!(|input: &[u8]| {
    if let Ok(body) = blocklist::verify(subscription(), input, 2_000_000_000) {
        // Only possible with the signer's key: the fuzzer has none.
        panic!("an unsigned list was taken: {} entries", body.entries.len());
    }
    if let Ok(text) = std::str::from_utf8(input) {
        if let Ok(t) = text.parse::<Target>() {
            assert_eq!(t.to_string().parse::<Target>().unwrap(), t);
        }
        let _ = Target::from_user(text, None);
        if let Some((a, b)) = text.split_once('\n') {
            let _ = Target::from_user(a, Some(b));
        }
    }
});
