//! What a hostile contact or outbox can make http2mbox decrypt: arbitrary
//! OpenPGP (compressed, nested, truncated, unsigned, wrongly signed) through
//! the real render path (decrypt, verify, bound the output, check the
//! header, strip forged trace headers). No panic, and never more output
//! than the bound, whatever the compression ratio.
#![no_main]

use std::io::Write;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stubmail::Identity;

/// Fixed keys (fuzz/keys), so seeds made with them decrypt.
static KEYS: LazyLock<(Identity, Identity, tempfile::TempDir)> = LazyLock::new(|| {
    // A panic inside sequoia-openpgp is caught by render (a known upstream
    // bug on truncated packets; the message is refused): let it unwind to
    // that catch. Any other panic still aborts, as libFuzzer wants.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.location().is_some_and(|l| l.file().contains("sequoia-openpgp")) {
            return;
        }
        prev(info)
    }));
    let load = |n: &str| {
        let c = stubmail::openpgp::Cert::from_bytes(&std::fs::read(format!("{}/keys/{n}.asc", env!("CARGO_MANIFEST_DIR"))).unwrap()).unwrap();
        Identity::from_cert(c).unwrap()
    };
    (load("alice"), load("bob"), tempfile::tempdir().unwrap())
});

use stubmail::openpgp::parse::Parse;

/// Counts what is written; fails past the bound.
struct Counted(u64);
impl Write for Counted {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const BOUND: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let (alice, bob, dir) = &*KEYS;
    let staged = dir.path().join("m.part");
    std::fs::write(&staged, input).unwrap();
    let cert = alice.cert();
    let claims = http2mbox::deliver::Claims::new();
    let m = http2mbox::deliver::Incoming {
        me: bob,
        sender: &cert,
        staged: &staged,
        id: "0000000000000000000000000000000000000000000000000000000000000000",
        outbox_host: "o",
        hostname: "h",
        max_plain: BOUND,
        claims: &claims,
        forward: None,
        keyring: None,
    };
    let mut out = Counted(0);
    let _ = http2mbox::deliver::render(&m, &mut out);
    // Trace headers come on top of the bounded plaintext.
    assert!(out.0 <= BOUND + 4096, "output {} past the bound", out.0);
});
