//! The keyring: contacts' certificates, one file per fingerprint. It is the
//! address book (who has an outbox where) and the whitelist (whose mail is
//! fetched at all).

mod index;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sequoia_openpgp::Cert;

use crate::pgp::{self, PgpError};
use crate::protocol::Fpr;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Pgp(#[from] PgpError),
    #[error("keyring {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("no contact matches {0:?}; `stubmail keys list` shows the keyring")]
    NotFound(String),
    #[error("{0:?} matches several contacts; name one by its full fingerprint")]
    Ambiguous(String),
    #[error(
        "<{address}> already belongs to contact {old}, and certificate {new} claims it too: one address, one contact. \
         If {new} is now the right key for <{address}> (say, a new key), import it with `stubmail keys import --replace FILE`, \
         which removes {old}; otherwise keep the contact you have"
    )]
    AddressTaken { address: String, old: Fpr, new: Fpr },
}

/// A directory of certificates, `<FINGERPRINT>.pgp` each (binary).
#[derive(Clone, Debug)]
pub struct Keyring {
    dir: PathBuf,
    /// Which files name which address, shared by clones (see `index`).
    index: Arc<Mutex<index::Index>>,
}

impl Keyring {
    pub fn new(dir: PathBuf) -> Keyring {
        Keyring { dir, index: Default::default() }
    }

    /// The directory holding the certificates.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn io(&self, source: std::io::Error) -> KeyringError {
        KeyringError::Io { path: self.dir.display().to_string(), source }
    }

    fn file(&self, f: &Fpr) -> PathBuf {
        self.dir.join(format!("{f}.pgp"))
    }

    /// Every certificate in the keyring (unreadable files are skipped with a
    /// warning, so one bad file does not hide every contact).
    pub fn all(&self) -> Result<Vec<Cert>, KeyringError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let path = e.map_err(|e| self.io(e))?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("pgp") {
                continue;
            }
            match std::fs::read(&path).map_err(anyhow::Error::from).and_then(|b| Ok(pgp::parse_certs(&b)?)) {
                Ok(mut c) => out.append(&mut c),
                Err(e) => tracing::warn!("skipping {}: {e:#}", path.display()),
            }
        }
        out.sort_by_key(|c| c.fingerprint().to_hex());
        Ok(out)
    }

    /// Import certificates: every new one is checked first (valid, not
    /// revoked or expired, has an email User ID); if any fails, nothing
    /// changes. An already-known certificate is merged whatever its state,
    /// so a contact's revocation is always taken (and the contact is then
    /// no longer polled nor sent to).
    ///
    /// One address, one contact: a certificate (or the merge of an update
    /// into a known one) that claims an address already bound to another
    /// usable contact is refused, naming both, unless `replace` says to
    /// remove the other contact.
    pub fn import(&self, certs: Vec<Cert>) -> Result<Vec<Cert>, KeyringError> {
        self.import_with(certs, false)
    }

    /// [`Keyring::import`], removing the contacts whose addresses the new
    /// certificates claim (`stubmail keys import --replace`).
    pub fn import_replacing(&self, certs: Vec<Cert>) -> Result<Vec<Cert>, KeyringError> {
        self.import_with(certs, true)
    }

    fn import_with(&self, certs: Vec<Cert>, replace: bool) -> Result<Vec<Cert>, KeyringError> {
        for c in &certs {
            if self.get(&pgp::fpr_of(c))?.is_none() {
                pgp::check_contact(c)?;
            }
        }
        // Who holds which address now (usable contacts only: a revoked or
        // expired key speaks for nobody).
        let mut owner: std::collections::BTreeMap<String, Fpr> = Default::default();
        for c in self.all()? {
            if let Ok(emails) = pgp::check_contact(&c) {
                for e in emails {
                    owner.insert(e, pgp::fpr_of(&c));
                }
            }
        }
        let mut remove = Vec::new();
        for c in &certs {
            let f = pgp::fpr_of(c);
            let claimed = match self.get(&f)? {
                Some(old) => pgp::emails_of(&old.merge_public(c.clone()).map_err(PgpError::from)?),
                None => pgp::emails_of(c),
            };
            for address in claimed {
                match owner.get(&address) {
                    Some(old) if *old != f && replace => remove.push(old.clone()),
                    Some(old) if *old != f => return Err(KeyringError::AddressTaken { address, old: old.clone(), new: f }),
                    _ => {
                        // Also between the certificates of this one import.
                        owner.insert(address, f.clone());
                    }
                }
            }
        }
        crate::fsutil::ensure_dir(&self.dir).map_err(|e| self.io(e))?;
        let mut done = Vec::new();
        for c in certs {
            let c = c.strip_secret_key_material();
            let f = pgp::fpr_of(&c);
            let merged = match self.get(&f)? {
                Some(old) => old.merge_public(c).map_err(PgpError::from)?,
                None => c,
            };
            crate::fsutil::write_atomic(&self.file(&f), &pgp::binary(&merged)?, 0o644).map_err(|e| self.io(e))?;
            done.push(merged);
        }
        for f in remove {
            if self.get(&f)?.is_some() {
                std::fs::remove_file(self.file(&f)).map_err(|e| self.io(e))?;
                let _ = std::fs::remove_file(self.dir.join(format!("{f}.discovered")));
            }
        }
        crate::fsutil::fsync_dir(&self.dir).map_err(|e| self.io(e))?;
        Ok(done)
    }

    /// Take a known contact's current certificate (fetched from their
    /// outbox): merged with the one kept and reduced as a whole
    /// ([`pgp::reduced`]), so refresh after refresh cannot grow it, and
    /// still under "one address, one contact".
    pub fn refresh(&self, cert: Cert) -> Result<Cert, KeyringError> {
        let f = pgp::fpr_of(&cert);
        let old = self.get(&f)?.ok_or_else(|| KeyringError::NotFound(f.to_string()))?;
        let merged = pgp::reduced(&old.merge_public(cert).map_err(PgpError::from)?)?;
        let claimed = pgp::emails_of(&merged);
        for c in self.all()? {
            let other = pgp::fpr_of(&c);
            if other == f {
                continue;
            }
            if let Ok(emails) = pgp::check_contact(&c)
                && let Some(address) = emails.into_iter().find(|e| claimed.contains(e))
            {
                return Err(KeyringError::AddressTaken { address, old: other, new: f });
            }
        }
        crate::fsutil::write_atomic(&self.file(&f), &pgp::binary(&merged)?, 0o644).map_err(|e| self.io(e))?;
        Ok(merged)
    }

    /// Import certificates found by key discovery (WKD): usable for
    /// sending, but marked as not yet vouched for by the user.
    pub fn import_discovered(&self, certs: Vec<Cert>) -> Result<Vec<Cert>, KeyringError> {
        let done = self.import(certs)?;
        for c in &done {
            let f = pgp::fpr_of(c);
            crate::fsutil::write_atomic(&self.dir.join(format!("{f}.discovered")), b"wkd\n", 0o644)
                .map_err(|e| self.io(e))?;
        }
        Ok(done)
    }

    /// Mark a certificate as vouched for by the user (an explicit import).
    pub fn vouch(&self, f: &Fpr) -> Result<(), KeyringError> {
        match std::fs::remove_file(self.dir.join(format!("{f}.discovered"))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Was this certificate found by discovery and never vouched for?
    pub fn is_discovered(&self, f: &Fpr) -> bool {
        self.dir.join(format!("{f}.discovered")).exists()
    }

    /// The certificate with this fingerprint, if present.
    pub fn get(&self, f: &Fpr) -> Result<Option<Cert>, KeyringError> {
        match std::fs::read(self.file(f)) {
            Ok(b) => Ok(pgp::parse_certs(&b)?.into_iter().next()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Usable certificates with this email address (valid now). Reads
    /// only the certificates that name it (the index), so a lookup does
    /// not grow with the keyring.
    pub fn by_email(&self, email: &str) -> Result<Vec<Cert>, KeyringError> {
        let email = email.to_ascii_lowercase();
        let candidates = self.index.lock().expect("not poisoned").lookup(&self.dir, &email).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for f in candidates {
            if let Some(c) = self.get(&f).ok().flatten()
                && pgp::check_contact(&c).is_ok_and(|e| e.contains(&email))
            {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Resolve an address or fingerprint to exactly one contact.
    pub fn find(&self, what: &str) -> Result<Cert, KeyringError> {
        if let Ok(f) = Fpr::parse(what) {
            return self.get(&f)?.ok_or_else(|| KeyringError::NotFound(what.into()));
        }
        let email = what.to_ascii_lowercase();
        let mut m: Vec<Cert> =
            self.all()?.into_iter().filter(|c| pgp::emails_of(c).contains(&email)).collect();
        match m.len() {
            0 => Err(KeyringError::NotFound(what.into())),
            1 => Ok(m.remove(0)),
            _ => Err(KeyringError::Ambiguous(what.into())),
        }
    }

    /// Remove a contact by address or fingerprint.
    pub fn remove(&self, what: &str) -> Result<Cert, KeyringError> {
        let c = self.find(what)?;
        std::fs::remove_file(self.file(&pgp::fpr_of(&c))).map_err(|e| self.io(e))?;
        let _ = std::fs::remove_file(self.dir.join(format!("{}.discovered", pgp::fpr_of(&c))));
        crate::fsutil::fsync_dir(&self.dir).map_err(|e| self.io(e))?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn import_find_remove() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path().join("kr"));
        let b = Identity::generate(None, "Bob@Example.net", "http://b/").unwrap();
        k.import(vec![b.cert()]).unwrap();
        assert_eq!(k.all().unwrap().len(), 1);
        assert_eq!(k.by_email("bob@example.net").unwrap().len(), 1);
        assert_eq!(pgp::fpr_of(&k.find("BOB@example.net").unwrap()), b.fpr());
        // Re-import merges, does not duplicate.
        k.import(vec![b.cert()]).unwrap();
        assert_eq!(k.all().unwrap().len(), 1);
        k.remove(b.fpr().as_str()).unwrap();
        assert!(k.all().unwrap().is_empty());
        assert!(matches!(k.remove("bob@example.net"), Err(KeyringError::NotFound(_))));
    }

    /// The address index follows every change another process makes,
    /// whether the directory's mtime is fresh (racy) or long settled.
    #[test]
    fn the_address_index_follows_changes_made_elsewhere() {
        use sequoia_openpgp::cert::prelude::*;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("kr");
        let mine = Keyring::new(dir.clone());
        let other = Keyring::new(dir.clone());
        let settle = || {
            let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            std::fs::File::open(&dir).unwrap().set_modified(hour_ago).unwrap();
        };
        assert!(mine.by_email("bob@example.net").unwrap().is_empty(), "no keyring yet");
        let (bob, _) = CertBuilder::general_purpose(["<bob@example.net>"]).generate().unwrap();
        other.import(vec![bob.clone()]).unwrap();
        assert_eq!(mine.by_email("BOB@example.net").unwrap().len(), 1, "seen at once (racy)");
        settle();
        assert_eq!(mine.by_email("bob@example.net").unwrap().len(), 1, "a settled index is trusted");
        let (carol, _) = CertBuilder::general_purpose(["<carol@example.com>"]).generate().unwrap();
        other.import(vec![carol]).unwrap();
        assert_eq!(mine.by_email("carol@example.com").unwrap().len(), 1, "an added contact");
        settle();
        mine.by_email("carol@example.com").unwrap();
        other.remove("bob@example.net").unwrap();
        assert!(mine.by_email("bob@example.net").unwrap().is_empty(), "a removed contact");
        // Bob's key revoked: in the index, but not usable.
        let (bob2, rev) = CertBuilder::general_purpose(["<bob@example.net>"]).generate().unwrap();
        other.import(vec![bob2.clone()]).unwrap();
        assert_eq!(mine.by_email("bob@example.net").unwrap().len(), 1);
        settle();
        mine.by_email("bob@example.net").unwrap();
        other.import(vec![bob2.insert_packets(rev).unwrap().0]).unwrap();
        assert!(mine.by_email("bob@example.net").unwrap().is_empty(), "a revoked contact");
    }

    #[test]
    fn one_address_one_contact_unless_replaced() {
        use sequoia_openpgp::cert::prelude::*;
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path().join("kr"));
        let alice = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        k.import(vec![alice.cert()]).unwrap();
        // Eve's key also claims alice@example.org: refused, naming both.
        let (eve, _) = CertBuilder::general_purpose(["<eve@evil.example>", "<Alice@Example.org>"]).generate().unwrap();
        let e = k.import(vec![eve.clone()]).unwrap_err().to_string();
        assert!(e.contains(alice.fpr().as_str()) && e.contains(pgp::fpr_of(&eve).as_str()) && e.contains("--replace"), "{e}");
        assert_eq!(k.all().unwrap().len(), 1, "nothing changed");
        // Two new certificates claiming one address in one import: refused.
        let (x, _) = CertBuilder::general_purpose(["<x@example.org>"]).generate().unwrap();
        let (y, _) = CertBuilder::general_purpose(["<x@example.org>"]).generate().unwrap();
        assert!(k.import(vec![x, y]).is_err());
        assert_eq!(k.all().unwrap().len(), 1);
        // An update of a known contact may not add someone else's address.
        let (bob, _) = CertBuilder::general_purpose(["<bob@example.net>"]).generate().unwrap();
        k.import(vec![bob.clone()]).unwrap();
        let mut kp = bob.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
        let uid = sequoia_openpgp::packet::UserID::from("<alice@example.org>");
        let sig = uid.bind(&mut kp, &bob, sequoia_openpgp::packet::signature::SignatureBuilder::new(sequoia_openpgp::types::SignatureType::PositiveCertification)).unwrap();
        let bob2 = bob.clone().insert_packets(vec![sequoia_openpgp::Packet::from(uid), sig.into()]).unwrap().0;
        assert!(matches!(k.import(vec![bob2]), Err(KeyringError::AddressTaken { .. })));
        assert_eq!(k.by_email("alice@example.org").unwrap().len(), 1);
        // Said explicitly: the new key replaces the old contact.
        let alice2 = Identity::generate(None, "alice@example.org", "http://a2/").unwrap();
        k.import_replacing(vec![alice2.cert()]).unwrap();
        let now: Vec<_> = k.by_email("alice@example.org").unwrap().iter().map(pgp::fpr_of).collect();
        assert_eq!(now, vec![alice2.fpr()]);
    }

    #[test]
    fn bad_certificates_change_nothing() {
        use sequoia_openpgp::cert::prelude::*;
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path().join("kr"));
        let good = Identity::generate(None, "a@example.org", "http://a/").unwrap().cert();
        let (no_email, _) = CertBuilder::general_purpose(["Just A Name"]).generate().unwrap();
        let (revoked, rev) = CertBuilder::general_purpose(["<r@example.org>"]).generate().unwrap();
        let revoked = revoked.insert_packets(rev).unwrap().0;
        for bad in [no_email, revoked] {
            assert!(k.import(vec![good.clone(), bad]).is_err());
            assert!(k.all().unwrap().is_empty(), "a failed import must change nothing");
        }
        assert!(pgp::parse_certs(b"garbage").is_err());
    }

    #[test]
    fn refreshes_do_not_add_up_and_keep_one_address_one_contact() {
        use sequoia_openpgp::packet::{signature::SignatureBuilder, UserID};
        use sequoia_openpgp::types::SignatureType;
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path().join("kr"));
        let bob = Identity::generate(None, "bob@example.net", "http://b/").unwrap();
        let carol = Identity::generate(None, "carol@example.com", "http://c/").unwrap();
        k.import(vec![bob.cert(), carol.cert()]).unwrap();
        for round in 0..3 {
            let mut kp = bob.signing_keypair().unwrap();
            let mut cert = bob.cert();
            for i in 0..5 {
                let uid = UserID::from(format!("Round {round} {i} <bob@example.net>"));
                let sig = uid.bind(&mut kp, &cert, SignatureBuilder::new(SignatureType::PositiveCertification)).unwrap();
                cert = cert.insert_packets(vec![sequoia_openpgp::Packet::from(uid), sig.into()]).unwrap().0;
            }
            let kept = k.refresh(cert).unwrap();
            assert!(kept.userids().count() <= 8, "round {round}");
        }
        // A refresh naming another contact's address is refused.
        let mut kp = bob.signing_keypair().unwrap();
        let uid = UserID::from("<carol@example.com>");
        let sig = uid.bind(&mut kp, &bob.cert(), SignatureBuilder::new(SignatureType::PositiveCertification)).unwrap();
        let claim = bob.cert().insert_packets(vec![sequoia_openpgp::Packet::from(uid), sig.into()]).unwrap().0;
        assert!(matches!(k.refresh(claim), Err(KeyringError::AddressTaken { .. })));
        assert_eq!(k.by_email("carol@example.com").unwrap().len(), 1);
    }
}
