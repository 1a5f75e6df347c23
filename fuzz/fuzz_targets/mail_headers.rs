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
    // Removed means gone: no field line left whose name (read leniently:
    // leading colons skipped, blanks inside ignored) is From. (mail-parser
    // reads still more into malformed lines — a junk line makes it take the
    // next, indented one as a field — which only adds From fields to the
    // From check, so it can only fail, never pass, a message.)
    for line in stripped.split(|&b| b == b'\n') {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let lead = line.iter().take_while(|&&b| b == b':').count();
        if let Some(c) = line[lead..].iter().position(|&b| b == b':') {
            let name: Vec<u8> = line[lead..lead + c].iter().copied().filter(|b| !b.is_ascii_whitespace() && !b.is_ascii_control()).collect();
            assert!(!name.eq_ignore_ascii_case(b"From"), "a From field left");
        }
    }
    let _ = mail::addresses(input, &["From", "To", "Cc"]);
    let _ = mail::remove_fields(input, &["Bcc", "Return-Path"]);
});
