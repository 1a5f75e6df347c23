//! Recipients' certificates remembered from their polls (`certs/`).

use std::fs;

use stubmail::fsutil;
use stubmail::pgp;
use stubmail::protocol::Fpr;
use stubmail::openpgp::Cert;

use super::Files;
use crate::store::{Accounts, Certs};

/// Largest certificate file read (those kept here are reduced, far
/// smaller; an account's is the operator's).
const MAX_CERT_FILE: u64 = 1 << 20;

impl Files {
    pub(crate) fn read_cert(&self, rel: &str) -> Option<Cert> {
        self.try_read_cert(rel).ok().flatten()
    }

    /// A kept certificate: none if absent (or unreadable as one), an error
    /// if the file system cannot say.
    pub(crate) fn try_read_cert(&self, rel: &str) -> std::io::Result<Option<Cert>> {
        match fsutil::read_bounded(&self.p(rel), MAX_CERT_FILE) {
            Ok(b) => Ok(pgp::parse_certs(&b).ok().and_then(|v| v.into_iter().next())),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Certs for Files {

    /// A certificate that may sign recipient requests for `f`.
    fn known_cert(&self, f: &Fpr) -> std::io::Result<Option<Cert>> {
        match self.try_read_cert(&format!("certs/{f}.pgp"))? {
            Some(c) => Ok(Some(c)),
            None => self.account(f),
        }
    }

    /// Keep a verified recipient's certificate, reduced (own signatures
    /// only, few User IDs and subkeys, bounded size: see
    /// [`pgp::reduced`]), replacing the one kept before — unless that one
    /// is revoked: a revocation once seen sticks.
    fn remember_cert(&self, cert: &Cert) -> anyhow::Result<()> {
        let f = pgp::fpr_of(cert);
        let path = self.p(&format!("certs/{f}.pgp"));
        let _lock = self.lock(&format!("cert-{f}"))?;
        if self.read_cert(&format!("certs/{f}.pgp")).is_some_and(|old| pgp::is_revoked(&old)) {
            return Ok(());
        }
        let bytes = pgp::binary(&pgp::reduced(cert)?)?;
        if fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        fsutil::write_atomic(&path, &bytes, 0o600)?;
        Ok(())
    }

    /// If `presented` revokes a certificate this outbox keeps (a recipient's
    /// or an account's), store the revocation (only the revocation
    /// signatures are taken). Returns whether it did.
    fn take_revocation(&self, presented: &Cert) -> anyhow::Result<bool> {
        if !crate::store::revokes_itself(presented) {
            return Ok(false);
        }
        let f = pgp::fpr_of(presented);
        let mut took = false;
        for rel in [format!("certs/{f}.pgp"), format!("accounts/{f}.pgp")] {
            let _lock = self.lock(&format!("cert-{f}"))?;
            let Some(known) = self.read_cert(&rel) else { continue };
            if pgp::is_revoked(&known) {
                continue;
            }
            let merged = pgp::with_revocations_from(&known, presented)?;
            if pgp::is_revoked(&merged) {
                fsutil::write_atomic(&self.p(&rel), &pgp::binary(&merged)?, 0o600)?;
                tracing::info!(fpr = %f, "stored a revocation");
                took = true;
            }
        }
        Ok(took)
    }
}
