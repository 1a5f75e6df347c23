//! The keyring's address index: which certificate files name an address.
//!
//! Looking a recipient up by parsing every certificate cost smtp2stub a
//! quarter of a second per RCPT at 3,000 contacts. The index keeps, per
//! file, its stamp (size, mtime, inode) and the addresses of its User IDs
//! (all of them; validity is checked on the few candidates at lookup, so
//! an expiry is seen the moment it happens). It is brought up to date when
//! the directory changes — every keyring write is a rename into it — and a
//! file is parsed again only when its own stamp changed.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use crate::pgp;
use crate::protocol::Fpr;

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp { len: m.len(), mtime: m.modified().ok(), ino: m.ino() }
    }
}

#[derive(Debug, Default)]
pub(super) struct Index {
    /// The directory's mtime at the last scan; None: scan next time.
    dir_mtime: Option<SystemTime>,
    /// Per certificate file: its stamp and the addresses it names.
    files: HashMap<Fpr, (Stamp, Vec<String>)>,
    /// Address (lower-cased) to the certificates naming it.
    by_email: HashMap<String, Vec<Fpr>>,
}

/// A directory changed within this long of a scan may change again
/// without its mtime moving (coarse timestamps): such a scan is not
/// trusted, and the next lookup scans again (git's "racy" entries).
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

impl Index {
    /// The fingerprints of certificates naming `email` (lower-cased).
    pub(super) fn lookup(&mut self, dir: &Path, email: &str) -> std::io::Result<Vec<Fpr>> {
        let mtime = match std::fs::metadata(dir) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        if mtime.is_none() || self.dir_mtime != mtime {
            self.scan(dir)?;
            let racy = mtime.is_none_or(|t| SystemTime::now().duration_since(t).map_or(true, |age| age < RACY));
            self.dir_mtime = if racy { None } else { mtime };
        }
        Ok(self.by_email.get(email).cloned().unwrap_or_default())
    }

    /// Bring the index up to date with the directory: files gone are
    /// dropped, new or changed ones parsed.
    fn scan(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut seen: HashMap<Fpr, (Stamp, Vec<String>)> = HashMap::with_capacity(self.files.len());
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(f) = name.to_str().and_then(|n| n.strip_suffix(".pgp")).and_then(|n| Fpr::parse(n).ok()) else { continue };
            let Ok(meta) = e.metadata() else { continue };
            let stamp = Stamp::of(&meta);
            let emails = match self.files.remove(&f) {
                Some((old, emails)) if old == stamp => emails,
                _ => match std::fs::read(e.path()).map_err(anyhow::Error::from).and_then(|b| Ok(pgp::parse_certs(&b)?)) {
                    Ok(certs) => certs.iter().flat_map(pgp::all_emails_of).collect(),
                    // Skipped, as `Keyring::all` skips it (it warns).
                    Err(_) => vec![],
                },
            };
            seen.insert(f, (stamp, emails));
        }
        self.files = seen;
        self.by_email.clear();
        for (f, (_, emails)) in &self.files {
            for e in emails {
                self.by_email.entry(e.clone()).or_default().push(f.clone());
            }
        }
        for v in self.by_email.values_mut() {
            v.sort();
            v.dedup();
        }
        Ok(())
    }
}
