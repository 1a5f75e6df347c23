//! A whole SMTP session with arbitrary client bytes (commands, DATA, bare
//! CR/LF, smuggling attempts, huge lines): no panic, and every reply line
//! is a well-formed reply.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use smtp2stub::session::{serve, Ctx, Policy, Reply, SessionConfig};
use smtp2stub::spool::{Route, Spool};
use stubmail::protocol::Fpr;

#[path = "duplex.rs"]
mod duplex;

struct AnyPolicy;
impl Policy for AnyPolicy {
    fn sender(&self, addr: &str) -> Result<(), Reply> {
        if addr.eq_ignore_ascii_case("alice@example.org") { Ok(()) } else { Err(Reply::new(550, "5.7.1 not yours")) }
    }
    async fn recipient(&self, addr: &str) -> Result<Route, Reply> {
        match addr.len() % 3 {
            0 => Ok(Route::Stub { fpr: Fpr::parse(&"B".repeat(40)).unwrap() }),
            1 => Ok(Route::Relay),
            _ => Err(Reply::new(550, "5.1.1 unknown")),
        }
    }
    async fn check_outbox(&self, _qid: &str, _size: u64, _copies: u64, _: &[&Fpr]) -> Result<(), Reply> {
        Ok(())
    }
}

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());

fuzz_target!(|input: &[u8]| {
    let ctx = Ctx {
        config: SessionConfig { max_size: 64 * 1024, min_free_bytes: 0, auth_required: false, ..SessionConfig::default() },
        policy: AnyPolicy,
        spool: Spool::open(DIR.path()).unwrap(),
        accepted: Arc::new(tokio::sync::Notify::new()),
    };
    let ctx = &ctx;
    let output = duplex::dialogue(input, |server| async move {
        let _ = serve(server, "127.0.0.1:1".into(), ctx).await;
    });
    for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.len() >= 5 && line[..3].iter().all(u8::is_ascii_digit) && matches!(line[3], b' ' | b'-') && line.ends_with(b"\r"), "bad reply line {:?}", String::from_utf8_lossy(line));
    }
    // Keep the spool small across runs.
    for d in ["msg", "queue", "tmp"] {
        if let Ok(rd) = std::fs::read_dir(DIR.path().join(d)) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
});
