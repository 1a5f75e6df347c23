//! Maildir delivery (tmp → new with fsync, unique names) and the delivery
//! journal that makes delivery exactly-once across crashes.
//!
//! The journal (`state/delivered/<id>`) records the tmp file name of a
//! message *after* the tmp file is fsync'd and *before* it is renamed into
//! `new/`. So after a crash:
//! - no journal entry: nothing visible was delivered; fetch again (an orphan
//!   in `tmp/` is invisible to mail readers and cleaned up later);
//! - journal entry and the file still in `tmp/`: finish the rename;
//! - journal entry and the file gone from `tmp/`: it was delivered.
//!
//! Either way the message is acked only afterwards, and a message already in
//! the journal is never delivered again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::fsutil::{self, fsync_dir};

#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    /// Open a Maildir, creating `tmp`, `new` and `cur` (mode 0700) if needed.
    pub fn open(root: &Path) -> io::Result<Maildir> {
        for d in ["tmp", "new", "cur"] {
            fsutil::ensure_private_dir(&root.join(d))?;
        }
        Ok(Maildir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A unique file name (the Maildir convention: time, randomness, pid, host).
    pub fn unique_name() -> String {
        use rand::Rng;
        let r: u64 = rand::rng().random();
        format!("{}.R{r:016x}P{}.{}", crate::time::unix_now(), std::process::id(), hostname())
    }

    /// Create a new file in `tmp/`.
    pub fn create_tmp(&self) -> io::Result<(String, File)> {
        let name = Maildir::unique_name();
        let f = OpenOptions::new().write(true).create_new(true).open(self.root.join("tmp").join(&name))?;
        Ok((name, f))
    }

    pub fn tmp_path(&self, name: &str) -> PathBuf {
        self.root.join("tmp").join(name)
    }

    /// Move a finished, fsync'd tmp file into `new/`, durably.
    pub fn commit(&self, name: &str) -> io::Result<()> {
        fs::rename(self.tmp_path(name), self.root.join("new").join(name))?;
        fsync_dir(&self.root.join("new"))?;
        fsync_dir(&self.root.join("tmp"))
    }

    /// Drop a tmp file that will not be delivered.
    pub fn discard(&self, name: &str) {
        let _ = fs::remove_file(self.tmp_path(name));
    }
}

/// The delivery journal, one file per delivered message id.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(dir: &Path) -> io::Result<Journal> {
        fsutil::ensure_private_dir(dir)?;
        Ok(Journal { dir: dir.to_path_buf() })
    }

    /// The tmp name recorded for `id`, if it was delivered.
    pub fn get(&self, id: &str) -> io::Result<Option<String>> {
        match fs::read_to_string(self.dir.join(id)) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Durably record that `id` is delivered as `name`.
    pub fn record(&self, id: &str, name: &str) -> io::Result<()> {
        fsutil::write_atomic(&self.dir.join(id), name.as_bytes(), 0o600)
    }

    /// Durably record that an mbox append of `len` bytes at `offset` is
    /// about to start.
    pub fn record_intent(&self, id: &str, offset: u64, len: u64) -> io::Result<()> {
        fsutil::write_atomic(&self.dir.join(format!("{id}.intent")), format!("{offset} {len}").as_bytes(), 0o600)
    }

    pub fn clear_intent(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(format!("{id}.intent"))) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pending mbox appends: (id, offset, length).
    pub fn intents(&self) -> io::Result<Vec<(String, u64, u64)>> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let p = e?.path();
            let Some(id) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".intent")) else { continue };
            let text = fs::read_to_string(&p)?;
            let mut it = text.split_whitespace().map(|x| x.parse::<u64>());
            if let (Some(Ok(o)), Some(Ok(l))) = (it.next(), it.next()) {
                v.push((id.to_string(), o, l));
            }
        }
        Ok(v)
    }

    /// Finish any delivery a crash interrupted between journal and rename.
    pub fn recover(&self, md: &Maildir) -> io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let file = e.file_name();
            let Some(file) = file.to_str() else { continue };
            if file.starts_with(".tmp.") {
                // A journal write cut short by a crash: the entry never
                // happened, so its message was never delivered and will be
                // fetched again. Acting on it would deliver it twice.
                let _ = fs::remove_file(e.path());
                continue;
            }
            if !crate::protocol::is_valid_id(file) {
                continue;
            }
            let Ok(name) = fs::read_to_string(e.path()) else { continue };
            let name = name.trim();
            if !name.is_empty() && !name.contains('/') && md.tmp_path(name).exists() {
                md.commit(name)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Writes CRLF text with LF line endings (the Maildir convention), keeping
/// lone CRs. Streaming: a CR at the end of one chunk waits for the next.
pub struct CrlfToLf<W: Write> {
    inner: W,
    pending_cr: bool,
}

impl<W: Write> CrlfToLf<W> {
    pub fn new(inner: W) -> Self {
        CrlfToLf { inner, pending_cr: false }
    }
    pub fn finish(mut self) -> io::Result<W> {
        if self.pending_cr {
            self.inner.write_all(b"\r")?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for CrlfToLf<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len() + 1);
        for &b in buf {
            if self.pending_cr {
                self.pending_cr = false;
                if b != b'\n' {
                    out.push(b'\r');
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hostname() -> String {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    // '/' and ':' are not allowed in Maildir names.
    h.trim().replace('/', "\\057").replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_to_lf_every_split() {
        let input = b"a\r\nb\rc\r\n\r\nd\r";
        for split in 0..=input.len() {
            let mut w = CrlfToLf::new(Vec::new());
            w.write_all(&input[..split]).unwrap();
            w.write_all(&input[split..]).unwrap();
            assert_eq!(w.finish().unwrap(), b"a\nb\rc\n\nd\r".to_vec(), "split {split}");
        }
    }

    #[test]
    fn a_journal_write_cut_short_is_not_a_delivery() {
        // The crash the crash test found: killed inside the journal's own
        // atomic write, leaving its temporary file behind.
        let d = tempfile::tempdir().unwrap();
        let md = Maildir::open(&d.path().join("Maildir")).unwrap();
        let j = Journal::open(&d.path().join("journal")).unwrap();
        let (name, mut f) = md.create_tmp().unwrap();
        f.write_all(b"Subject: x\n\nhi\n").unwrap();
        std::fs::write(d.path().join("journal").join(".tmp.123.456.789"), &name).unwrap();
        assert_eq!(j.recover(&md).unwrap(), 0, "not delivered: it will be fetched again");
        assert!(!md.root().join("new").join(&name).exists());
        assert_eq!(std::fs::read_dir(d.path().join("journal")).unwrap().count(), 0, "the leftover is removed");
    }

    #[test]
    fn journal_recovers_interrupted_delivery() {
        let d = tempfile::tempdir().unwrap();
        let md = Maildir::open(&d.path().join("Maildir")).unwrap();
        let j = Journal::open(&d.path().join("journal")).unwrap();
        let (name, mut f) = md.create_tmp().unwrap();
        f.write_all(b"Subject: x\n\nhi\n").unwrap();
        f.sync_all().unwrap();
        let id = "a".repeat(64);
        j.record(&id, &name).unwrap();
        // Crash here: the file is still in tmp/.
        assert_eq!(j.recover(&md).unwrap(), 1);
        assert!(md.root().join("new").join(&name).exists());
        assert_eq!(j.recover(&md).unwrap(), 0);
        assert_eq!(j.get(&id).unwrap().as_deref(), Some(name.as_str()));
        assert_eq!(j.get(&"b".repeat(64)).unwrap(), None);
    }
}
