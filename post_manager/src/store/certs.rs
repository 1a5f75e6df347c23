//! Recipients' certificates remembered from their polls (`certs/`).

use std::fs;

use stubmail::fsutil;
use stubmail::pgp;
use stubmail::protocol::Fpr;
use stubmail::openpgp::Cert;

use super::Store;

impl Store {
    pub(super) fn read_cert(&self, rel: &str) -> Option<Cert> {
        let b = fs::read(self.p(rel)).ok()?;
        pgp::parse_certs(&b).ok()?.into_iter().next()
    }


    /// A certificate that may sign recipient requests for `f`.
    pub fn known_cert(&self, f: &Fpr) -> Option<Cert> {
        self.read_cert(&format!("certs/{f}.pgp")).or_else(|| self.account(f))
    }

    /// Merge a verified recipient certificate into the cache (merge, never
    /// replace: a revocation once seen sticks).
    pub fn remember_cert(&self, cert: &Cert) -> anyhow::Result<()> {
        let f = pgp::fpr_of(cert);
        let path = self.p(&format!("certs/{f}.pgp"));
        let _lock = self.lock(&format!("cert-{f}"))?;
        let merged = match self.read_cert(&format!("certs/{f}.pgp")) {
            Some(old) => old.merge_public(cert.clone())?,
            None => cert.clone(),
        };
        fsutil::write_atomic(&path, &pgp::binary(&merged)?, 0o644)?;
        Ok(())
    }
}
