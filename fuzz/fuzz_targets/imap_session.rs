//! A whole IMAP session with arbitrary client bytes over a Maildir whose
//! second message is arbitrary too: the input is `MESSAGE \xff COMMANDS`.
//! When the commands' first byte is odd they follow a good LOGIN and
//! SELECT, so the fuzzer spends its time past authentication (FETCH
//! sections, BODYSTRUCTURE of hostile MIME, SEARCH, STORE, APPEND with
//! literals, IDLE). No panic; the greeting is `* OK`; the first message is
//! never altered (only flagged, moved or removed).
#![no_main]

use std::sync::{Arc, LazyLock};

use http2mbox::imap::{serve, Ctx};
use libfuzzer_sys::fuzz_target;

#[path = "duplex.rs"]
mod duplex;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());

const FIRST: &[u8] = b"From: a@b\r\nSubject: one\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nbody\r\n--x--\r\n";

fn reset(message: &[u8]) -> std::path::PathBuf {
    let md = DIR.path().join("Maildir");
    let _ = std::fs::remove_dir_all(&md);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    std::fs::write(md.join("new/1.a.host"), FIRST).unwrap();
    std::fs::write(md.join("new/2.b.host"), message).unwrap();
    md
}

fuzz_target!(|input: &[u8]| {
    let (message, commands) = match input.iter().position(|&b| b == 0xff) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&b"Subject: two\n\nhello\n"[..], input),
    };
    let md = reset(message);
    let mut script = Vec::new();
    if commands.first().is_some_and(|b| b % 2 == 1) {
        script.extend_from_slice(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    }
    script.extend_from_slice(commands);
    let ctx = Arc::new(Ctx {
        root: md.clone(),
        username: "bob".into(),
        password: "pw".into(),
        tls: None,
        require_tls: false,
        on_login: None,
        throttle: Default::default(),
        delivered: None,
        max_message: 1 << 20,
        max_append: 1 << 16,
    });
    let output = duplex::dialogue(&script, |server| async move {
        let _ = serve(server, "127.0.0.1:1".into(), ctx).await;
    });
    assert!(output.starts_with(b"* OK"), "greeting {:?}", String::from_utf8_lossy(&output));
    // Wherever the first message went, it is what it was.
    for dir in std::fs::read_dir(&md).unwrap().flatten().map(|e| e.path()).chain([md.clone()]) {
        for sub in ["new", "cur"] {
            for e in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with("1.a.host") {
                    assert_eq!(std::fs::read(e.path()).unwrap(), FIRST);
                }
            }
        }
    }
});
