//! What a list robot, a forwarder and an outbox's archive read from a peer:
//! an intake file, a post's author field, the robot's decision on a
//! member's message, a confirmation token, an archived post's feed entry.
//! No panic; a post the robot publishes ends with the message byte for
//! byte, and its author field reads back as written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubmail::list::{author_of, hops, parse_intake, Addresses};
use stubmail::protocol::Fpr;

fuzz_target!(|input: &[u8]| {
    let _ = parse_intake(input);
    let _ = author_of(input);
    let _ = hops(input);
    let _ = lists::notices::token_in(input);
    let addrs = Addresses::of("team@example.org").unwrap();
    let author = Fpr::parse(&"AB".repeat(20)).unwrap();
    let emails = vec!["alice@example.org".to_string()];
    if let lists::decide::Decision::Publish(post) = lists::decide::decide(input, &author, b"\x01sig", &emails, &addrs, Some("T")) {
        assert!(post.ends_with(input), "the message is carried unchanged");
        let (f, sig, at) = author_of(&post).expect("the list's own field reads back");
        assert_eq!((f, sig.as_slice(), &post[at..]), (author, &b"\x01sig"[..], input));
    }
    let e = post_manager::archive::entry_of(&"0".repeat(64), input, 0);
    let xml = post_manager::archive::feed(&Fpr::parse(&"CD".repeat(20)).unwrap(), "t", &[e], 1, 1);
    assert!(!xml.bytes().any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')), "no control character in the feed");
});
