//! The mboxrd writer, fed in arbitrary chunks: no line of the output is a
//! "From " separator, and unquoting gives back the input exactly.
#![no_main]

use std::io::Write;

use http2mbox::mbox::{unquote_line, MboxrdWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (u8, &[u8])| {
    let (chunk, input) = data;
    let mut w = MboxrdWriter::new(Vec::new());
    for c in input.chunks(chunk.max(1) as usize) {
        w.write_all(c).unwrap();
    }
    let out = w.finish().unwrap();
    let mut back = Vec::new();
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(!line.starts_with(b"From "), "an unquoted separator");
        let (body, end) = match line.strip_suffix(b"\n") {
            Some(b) => (b, &b"\n"[..]),
            None => (line, &b""[..]),
        };
        back.extend_from_slice(unquote_line(body));
        back.extend_from_slice(end);
    }
    assert_eq!(back, input);
});
