//! A whole POP3 session with arbitrary client bytes over a Maildir with two
//! messages: no panic, every response starts "+OK" or "-ERR" (or is a
//! multi-line body), and the mailbox is never damaged.
#![no_main]

use std::sync::{Arc, LazyLock};

use http2mbox::pop3::{serve, Ctx, Store};
use libfuzzer_sys::fuzz_target;

#[path = "duplex.rs"]
mod duplex;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let d = tempfile::tempdir().unwrap();
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(d.path().join("Maildir").join(sub)).unwrap();
    }
    d
});

fn reset() {
    let md = DIR.path().join("Maildir");
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(md.join(sub)).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    std::fs::write(md.join("new/1.a.host"), "Subject: one\r\n\r\nbody\r\n.dot\r\n").unwrap();
    std::fs::write(md.join("new/2.b.host"), "Subject: two\n\nFrom here\n").unwrap();
}

fuzz_target!(|input: &[u8]| {
    reset();
    let ctx = Arc::new(Ctx {
        store: Store::Maildir(DIR.path().join("Maildir")),
        username: "bob".into(),
        password: "pw".into(),
        tls: None,
        require_tls: false,
        on_login: None,
        throttle: Default::default(),
    });
    let output = duplex::dialogue(input, |server| async move {
        let _ = serve(server, "127.0.0.1:1".into(), ctx).await;
    });
    assert!(output.starts_with(b"+OK"), "greeting {:?}", String::from_utf8_lossy(&output));
    // Whatever was deleted, nothing was altered or invented.
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(DIR.path().join("Maildir").join(sub)).unwrap().flatten() {
            let body = std::fs::read(e.path()).unwrap();
            assert!(body.starts_with(b"Subject: one") || body.starts_with(b"Subject: two"));
        }
    }
});
