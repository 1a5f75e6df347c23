//! The signed-request header and the recipients header: no panic, and what
//! parses formats back to something that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubmail::protocol::{format_recipients, parse_recipients, SignatureHeader};

fuzz_target!(|input: &[u8]| {
    let Ok(s) = std::str::from_utf8(input) else { return };
    if let Ok(h) = SignatureHeader::parse(s) {
        let again = SignatureHeader::parse(&h.format()).expect("a formatted header parses");
        assert_eq!(again.format(), h.format());
    }
    if let Ok(r) = parse_recipients(s) {
        assert_eq!(parse_recipients(&format_recipients(&r)).unwrap(), r);
    }
});
