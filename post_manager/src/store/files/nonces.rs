//! Replay protection: nonces of signed requests (`nonces/`).

use std::fs::{self, OpenOptions};
use std::io;

use stubmail::protocol::{self, Fpr};

use super::Files;
use crate::store::Nonces;

impl Nonces for Files {
    /// `nonces/<FPR>/<window>/<nonce>`, where a window is NONCE_MEMORY/2
    /// seconds of the request's (signed, checked) timestamp: a replay
    /// carries the same timestamp, so it lands in the same window. Whole
    /// windows are dropped once no acceptable timestamp can fall in them —
    /// pruning costs a listing of a few directories, not a stat per nonce
    /// (which, under load, was the outbox's largest cost).
    fn remember_nonce(&self, fpr: &Fpr, nonce: &str, ts: i64) -> io::Result<bool> {
        let span = (protocol::NONCE_MEMORY / 2).max(1);
        let window = ts.div_euclid(span);
        let root = self.p(&format!("nonces/{fpr}"));
        let dir = root.join(window.to_string());
        fs::create_dir_all(&dir)?;
        match OpenOptions::new().write(true).create_new(true).open(dir.join(nonce)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        if rand::random::<u8>() < 8 {
            // A window is over when its last second is more than the skew
            // window in the past: any request from it is refused as stale.
            let now = stubmail::time::unix_now();
            for e in fs::read_dir(&root)?.flatten() {
                let old = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()).is_some_and(|w| (w + 1) * span < now - protocol::MAX_CLOCK_SKEW);
                // Leftovers of the old flat layout (plain nonce files) go too.
                let flat = e.file_type().is_ok_and(|t| t.is_file());
                if old {
                    let _ = fs::remove_dir_all(e.path());
                } else if flat {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod nonce_tests {
    use super::*;
    

    #[test]
    fn replays_are_caught_in_their_window_and_old_windows_go() {
        let d = tempfile::tempdir().unwrap();
        let s = Files::open(d.path()).unwrap();
        let f = Fpr::parse(&"A".repeat(40)).unwrap();
        let now = stubmail::time::unix_now();
        let n = "0123456789abcdef0123456789abcdef";
        assert!(s.remember_nonce(&f, n, now).unwrap());
        assert!(!s.remember_nonce(&f, n, now).unwrap(), "a replay");
        // An old window (no request from it is acceptable any more).
        let old = (now - 4 * protocol::NONCE_MEMORY).div_euclid(protocol::NONCE_MEMORY / 2);
        std::fs::create_dir_all(d.path().join(format!("nonces/{f}/{old}"))).unwrap();
        for i in 0..2000 {
            s.remember_nonce(&f, &format!("{i:032x}"), now).unwrap();
        }
        assert!(!d.path().join(format!("nonces/{f}/{old}")).exists(), "pruned");
        assert!(!s.remember_nonce(&f, n, now).unwrap(), "the current window is kept");
    }
}
