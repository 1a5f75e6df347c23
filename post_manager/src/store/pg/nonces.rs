//! Replay protection, shared by every instance: a request replayed to
//! another instance finds its nonce here.

use std::io;

use stubmail::protocol::{self, Fpr};

use super::{io_err, Pg};
use crate::store::Nonces;

impl Nonces for Pg {
    fn remember_nonce(&self, fpr: &Fpr, nonce: &str, ts: i64) -> io::Result<bool> {
        let mut c = self.conn()?;
        let n = c
            .execute("INSERT INTO nonces VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[&fpr.as_str(), &nonce, &ts])
            .map_err(io_err)?;
        if rand::random::<u8>() < 4 {
            // A request older than this is refused as stale whatever its
            // nonce, so its nonce need not be remembered.
            let before = stubmail::time::unix_now() - protocol::NONCE_MEMORY - protocol::MAX_CLOCK_SKEW;
            c.execute("DELETE FROM nonces WHERE ts < $1", &[&before]).map_err(io_err)?;
        }
        Ok(n == 1)
    }
}
