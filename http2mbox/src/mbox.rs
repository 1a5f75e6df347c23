//! mbox: the mboxrd format, and locking compatible with mutt, procmail and
//! Dovecot (a `.lock` dotlock, then an fcntl write lock; both, in that
//! order, as those programs take them).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Writes message text in mboxrd form: every line matching `^>*From `
/// gets one more `>`. Streaming, in constant memory: only the start of a
/// line is held back until it is known not to need quoting.
pub struct MboxrdWriter<W: Write> {
    inner: W,
    /// Bytes of the current line held back (only '>'s and a prefix of "From ").
    pending: Vec<u8>,
    /// Still deciding whether the current line needs quoting.
    at_start: bool,
}

const FROM: &[u8] = b"From ";

impl<W: Write> MboxrdWriter<W> {
    pub fn new(inner: W) -> Self {
        MboxrdWriter { inner, pending: Vec::new(), at_start: true }
    }
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&self.pending)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for MboxrdWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in buf {
            if !self.at_start {
                out.push(b);
                if b == b'\n' {
                    self.at_start = true;
                }
                continue;
            }
            self.pending.push(b);
            let gts = self.pending.iter().take_while(|&&c| c == b'>').count();
            let rest = &self.pending[gts..];
            if rest.len() <= FROM.len() && FROM.starts_with(rest) {
                if rest.len() == FROM.len() {
                    out.push(b'>');
                    out.append(&mut self.pending);
                    self.at_start = false;
                }
                // else: still a possible ">*From " prefix; keep holding.
            } else {
                out.append(&mut self.pending);
                self.at_start = b == b'\n';
            }
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Undo mboxrd quoting of one line (without its line ending).
pub fn unquote_line(line: &[u8]) -> &[u8] {
    let gts = line.iter().take_while(|&&c| c == b'>').count();
    if gts > 0 && line[gts..].starts_with(FROM) { &line[1..] } else { line }
}

/// The "From " separator line: `From <sender> <asctime>`.
pub fn from_line(sender: &str, unix: i64) -> String {
    let s = if sender.is_empty() { "MAILER-DAEMON" } else { sender };
    format!("From {s} {}\n", asctime(unix))
}

/// asctime(3) format in UTC: "Mon Nov  3 05:00:26 2026".
fn asctime(unix: i64) -> String {
    // "Mon, 03 Nov 2026 05:00:26 GMT"
    let h = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64));
    let p: Vec<&str> = h.split_whitespace().collect();
    let day: u32 = p[1].parse().unwrap_or(1);
    format!("{} {} {:>2} {} {}", p[0].trim_end_matches(','), p[2], day, p[4], p[3])
}

/// A held mbox lock: the dotlock (if the directory allows one) and an
/// fcntl write lock on the open file. Released on drop.
pub struct MboxLock {
    pub file: File,
    dotlock: Option<PathBuf>,
}

impl Drop for MboxLock {
    fn drop(&mut self) {
        let _ = fcntl(&self.file, libc::F_UNLCK as libc::c_short);
        if let Some(p) = &self.dotlock {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn fcntl(file: &File, kind: libc::c_short) -> io::Result<()> {
    // SAFETY: a zeroed flock is a valid value; fcntl only reads it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: fd is open for the lifetime of `file`; fl is valid.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &fl) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A dotlock older than this is stale (its holder died), as procmail and
/// mutt also assume.
const STALE: Duration = Duration::from_secs(300);

/// Take `<mbox>.lock` the NFS-safe way (link a unique file to the lock
/// name). Returns None when the directory does not let us create one
/// (e.g. /var/spool/mail without group mail): fcntl alone then protects.
fn dotlock(mbox: &Path, wait: Duration) -> io::Result<Option<PathBuf>> {
    let lock = PathBuf::from(format!("{}.lock", mbox.display()));
    let tmp = PathBuf::from(format!("{}.lock.{}.{:x}", mbox.display(), std::process::id(), rand::random::<u64>()));
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied) => {
            tracing::debug!("no dotlock for {}: {e}; using fcntl only", mbox.display());
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + wait;
    let result = loop {
        match std::fs::hard_link(&tmp, &lock) {
            Ok(()) => break Ok(Some(lock.clone())),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE);
                if stale {
                    tracing::warn!("removing stale {}", lock.display());
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                if Instant::now() > deadline {
                    break Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{} is locked", mbox.display())));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => break Err(e),
        }
    };
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Lock an mbox for writing (creating it, mode 0600, if missing), waiting
/// up to `wait` for other holders.
pub fn lock(mbox: &Path, wait: Duration) -> io::Result<MboxLock> {
    let dotlock = dotlock(mbox, wait)?;
    let file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(mbox) {
        Ok(f) => f,
        Err(e) => {
            if let Some(p) = &dotlock {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    let guard = MboxLock { file, dotlock };
    fcntl(&guard.file, libc::F_WRLCK as libc::c_short)?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mboxrd_quoting_every_split() {
        let input = b"From here\nFrom: header\n>From there\nFro\n>>>From deep\nno From here\n>\n>Fro";
        let want = b">From here\nFrom: header\n>>From there\nFro\n>>>>From deep\nno From here\n>\n>Fro";
        for split in 0..=input.len() {
            let mut w = MboxrdWriter::new(Vec::new());
            w.write_all(&input[..split]).unwrap();
            w.write_all(&input[split..]).unwrap();
            assert_eq!(String::from_utf8(w.finish().unwrap()).unwrap(), String::from_utf8(want.to_vec()).unwrap(), "split {split}");
        }
        for line in want.split(|&b| b == b'\n') {
            let orig = unquote_line(line);
            let mut w = MboxrdWriter::new(Vec::new());
            w.write_all(orig).unwrap();
            assert_eq!(w.finish().unwrap(), line, "round trip {:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn from_line_is_asctime() {
        assert_eq!(from_line("a@x.org", 0), "From a@x.org Thu Jan  1 00:00:00 1970\n");
        assert_eq!(from_line("", 1_000_000_000), "From MAILER-DAEMON Sun Sep  9 01:46:40 2001\n");
    }

    #[test]
    fn dotlock_excludes_and_is_released() {
        let d = tempfile::tempdir().unwrap();
        let mbox = d.path().join("mbox");
        let held = lock(&mbox, Duration::from_secs(1)).unwrap();
        assert!(d.path().join("mbox.lock").exists());
        let e = dotlock(&mbox, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(held);
        assert!(!d.path().join("mbox.lock").exists());
        assert!(lock(&mbox, Duration::from_secs(1)).is_ok());
    }
}
