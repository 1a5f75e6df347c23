//! Header handling on what a peer wrote: removing fields (and forged trace
//! headers), reading addresses, telling HTTP from mail commands. No panic;
//! removing nothing changes nothing; removed fields are gone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubmail::mail;

fuzz_target!(|input: &[u8]| {
    let _ = stubmail::guard::looks_like_http(input);
    assert_eq!(mail::remove_fields_where(input, |_, _| false), input, "keeping every field keeps the bytes");
    let stripped = mail::remove_fields_where(input, |n, _| n.eq_ignore_ascii_case(b"From") || n.len() > 9 && n[..9].eq_ignore_ascii_case(b"stubmail-"));
    assert!(stripped.len() <= input.len());
    if let Some(n) = mail::header_len(&stripped) {
        assert!(mail::addresses(&stripped[..n], &["From"]).is_empty(), "no From: left");
    }
    let _ = mail::addresses(input, &["From", "To", "Cc"]);
    let _ = mail::remove_fields(input, &["Bcc", "Return-Path"]);
});
