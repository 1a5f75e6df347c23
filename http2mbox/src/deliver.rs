//! Delivery targets: Maildir (the default), mbox, or an MDA command. Each
//! is exactly-once with the journal (see `stubmail::maildir`): a message is
//! journalled before (Maildir: rename; mbox: append intent) or right after
//! (MDA) it becomes visible, and acked only after that.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use stubmail::maildir::{CrlfToLf, Journal, Maildir};
use stubmail::openpgp::Cert;
use stubmail::{pgp, Identity};

use crate::mbox;

/// Where messages go.
#[derive(Clone, Debug)]
pub enum Target {
    Maildir(Maildir),
    Mbox(PathBuf),
    /// A shell command receiving each message on stdin.
    Mda(String),
}

/// A message failed its checks: not delivered, not acked.
#[derive(Debug, thiserror::Error)]
#[error("signature or decryption check failed: {0}")]
pub struct CryptoReject(pub String);

/// Everything about one message needed to deliver it.
pub struct Incoming<'a> {
    pub me: &'a Identity,
    pub sender: &'a Cert,
    /// The fetched ciphertext (digest already checked).
    pub staged: &'a Path,
    pub id: &'a str,
    pub outbox_host: &'a str,
    pub hostname: &'a str,
}

/// Largest header block read into memory to check the From: field.
const MAX_HEADER: usize = 1024 * 1024;

/// Decrypt, verify and write the message with trace headers and LF line
/// endings into `out`. Fails (and the caller discards `out`) unless the
/// whole message decrypted and the signature by `sender` verified.
fn render(m: &Incoming, out: &mut dyn Write) -> anyhow::Result<()> {
    let input = File::open(m.staged)?;
    let plain = pgp::decrypt_verify(m.me, m.sender, input).map_err(|e| CryptoReject(e.to_string()))?;
    let mut plain = BufReader::with_capacity(64 * 1024, plain);
    let header = stubmail::mail::read_header(&mut plain, MAX_HEADER).map_err(|e| CryptoReject(e.to_string()))?;
    let trace = trace_headers(m.sender, &header, m.id, m.outbox_host, m.hostname);
    let mut w = CrlfToLf::new(out);
    w.write_all(trace.as_bytes())?;
    w.write_all(&header)?;
    // Errors here include a bad signature, found at the end of the stream.
    io::copy(&mut plain, &mut w).map_err(|e| CryptoReject(e.to_string()))?;
    w.finish()?;
    Ok(())
}

/// Deliver one message into `target`, journalled. `work` is a private
/// directory for mbox/MDA staging.
pub fn deliver(m: &Incoming, target: &Target, journal: &Journal, work: &Path) -> anyhow::Result<()> {
    match target {
        Target::Maildir(md) => {
            let (name, file) = md.create_tmp()?;
            let result = (|| -> anyhow::Result<()> {
                let mut w = io::BufWriter::new(file);
                render(m, &mut w)?;
                let file = w.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(())
            })();
            if let Err(e) = result {
                md.discard(&name);
                return Err(e);
            }
            journal.record(m.id, &name)?;
            md.commit(&name)?;
        }
        Target::Mbox(path) => {
            let rendered = work.join(format!("{}.mbox", m.id));
            let result = (|| -> anyhow::Result<()> {
                let mut w = io::BufWriter::new(File::create(&rendered)?);
                w.write_all(mbox::from_line(&pgp::emails_of(m.sender).first().cloned().unwrap_or_default(), stubmail::time::unix_now()).as_bytes())?;
                let mut q = mbox::MboxrdWriter::new(EnsureNewline::new(&mut w));
                render(m, &mut q)?;
                q.finish()?.finish()?;
                // A blank line separates messages.
                w.write_all(b"\n")?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                Ok(())
            })();
            if let Err(e) = result {
                let _ = std::fs::remove_file(&rendered);
                return Err(e);
            }
            append_mbox(path, &rendered, journal, m.id)?;
        }
        Target::Mda(cmd) => {
            let rendered = work.join(format!("{}.msg", m.id));
            let result = (|| -> anyhow::Result<()> {
                let mut w = io::BufWriter::new(File::create(&rendered)?);
                render(m, &mut w)?;
                w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                let status = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(File::open(&rendered)?)
                    .status()?;
                match status.code() {
                    Some(0) => Ok(()),
                    Some(75) => anyhow::bail!("the MDA asked to try again later (exit 75)"),
                    other => anyhow::bail!("the MDA {cmd:?} failed ({other:?})"),
                }
            })();
            let _ = std::fs::remove_file(&rendered);
            result?;
            // An MDA cannot tell us whether it delivered before a crash:
            // this is the one target where a crash right here could repeat.
            journal.record(m.id, "mda")?;
        }
    }
    Ok(())
}

/// Append a rendered message to an mbox under its locks. The journal's
/// intent (offset, length) is durable before the first byte is written, so
/// recovery can tell a complete append from a torn one.
fn append_mbox(path: &Path, rendered: &Path, journal: &Journal, id: &str) -> anyhow::Result<()> {
    let len = std::fs::metadata(rendered)?.len();
    let mut lock = mbox::lock(path, Duration::from_secs(120))?;
    let f = &mut lock.file;
    let mut offset = f.metadata()?.len();
    if offset > 0 {
        // Keep the format sound if a previous writer left no final newline.
        f.seek(SeekFrom::Start(offset - 1))?;
        let mut last = [0u8];
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.seek(SeekFrom::End(0))?;
            f.write_all(b"\n")?;
            offset += 1;
        }
    }
    journal.record_intent(id, offset, len)?;
    f.seek(SeekFrom::End(0))?;
    io::copy(&mut File::open(rendered)?, f)?;
    f.sync_all()?;
    journal.record(id, "mbox")?;
    journal.clear_intent(id)?;
    let _ = std::fs::remove_file(rendered);
    Ok(())
}

/// Finish or undo mbox appends a crash interrupted. Returns how many were
/// found complete.
pub fn recover_mbox(path: &Path, journal: &Journal, work: &Path) -> anyhow::Result<usize> {
    let mut done = 0;
    for (id, offset, len) in journal.intents()? {
        let rendered = work.join(format!("{id}.mbox"));
        let lock = mbox::lock(path, Duration::from_secs(120))?;
        let mut f = &lock.file;
        let size = f.metadata()?.len();
        let mut ours = Vec::new();
        if let Ok(mut r) = File::open(&rendered) {
            r.read_to_end(&mut ours)?;
        }
        let mut there = Vec::new();
        f.seek(SeekFrom::Start(offset.min(size)))?;
        f.take(len).read_to_end(&mut there)?;
        if ours.len() as u64 == len && there == ours {
            journal.record(&id, "mbox")?;
            done += 1;
        } else if size <= offset + len && ours.starts_with(&there) {
            // A torn append of ours and nothing after it: take it back.
            lock.file.set_len(offset)?;
            lock.file.sync_all()?;
        }
        journal.clear_intent(&id)?;
        let _ = std::fs::remove_file(&rendered);
    }
    Ok(done)
}

/// Makes sure the text ends with a newline (so the blank separator line
/// is a blank line).
struct EnsureNewline<W: Write> {
    inner: W,
    last: u8,
}

impl<W: Write> EnsureNewline<W> {
    fn new(inner: W) -> Self {
        EnsureNewline { inner, last: b'\n' }
    }
    fn finish(mut self) -> io::Result<W> {
        if self.last != b'\n' {
            self.inner.write_all(b"\n")?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for EnsureNewline<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if n > 0 {
            self.last = buf[n - 1];
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The headers http2mbox adds on top (docs/PROTOCOL.md §6).
fn trace_headers(sender: &Cert, header: &[u8], id: &str, outbox_host: &str, hostname: &str) -> String {
    let fpr = pgp::fpr_of(sender);
    let signer_emails = pgp::emails_of(sender);
    let from = stubmail::mail::addresses(header, &["From"]);
    let from_ok = !from.is_empty() && from.iter().all(|a| signer_emails.contains(a));
    let signer = signer_emails.first().cloned().unwrap_or_default();
    let now = stubmail::time::unix_now();
    format!(
        "Return-Path: <{signer}>\r\n\
         Received: by {hostname} (http2mbox) from {outbox_host}\r\n\twith stubmail id {id};\r\n\t{}\r\n\
         Authentication-Results: {hostname}; stubmail=pass smtp.mailfrom={signer}\r\n\
         \theader.from={} (from={})\r\n\
         Stubmail-Sender-Fingerprint: {fpr}\r\n\
         Stubmail-Id: {id}\r\n",
        stubmail::time::rfc5322(now),
        from.first().map(String::as_str).unwrap_or("(none)"),
        if from_ok { "pass" } else { "fail" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_check_in_trace_headers() {
        let a = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let t = trace_headers(&a.cert(), b"From: Alice <Alice@Example.org>\r\n\r\n", "ab", "h", "me");
        assert!(t.contains("(from=pass)"), "{t}");
        let t = trace_headers(&a.cert(), b"From: ceo@bank.example\r\n\r\n", "ab", "h", "me");
        assert!(t.contains("(from=fail)") && t.contains(&format!("Stubmail-Sender-Fingerprint: {}", a.fpr())), "{t}");
    }

    /// A message encrypted for `me` by `sender`, staged in `dir`.
    fn staged(dir: &Path, sender: &Identity, me: &Identity, text: &[u8]) -> (PathBuf, String) {
        let mut ct = Vec::new();
        pgp::sign_encrypt(sender, &[me.cert()], &mut &text[..], &mut ct).unwrap();
        let id = stubmail::client::sha256_hex(&ct);
        let p = dir.join(format!("{id}.part"));
        std::fs::write(&p, &ct).unwrap();
        (p, id)
    }

    #[test]
    fn mbox_delivery_and_torn_append_recovery() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (
            Identity::generate(None, "alice@example.org", "http://a/").unwrap(),
            Identity::generate(None, "bob@example.net", "http://b/").unwrap(),
        );
        let journal = Journal::open(&d.path().join("journal")).unwrap();
        let work = d.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mbox_path = d.path().join("mbox");
        let cert = a.cert();
        let text = b"From: alice@example.org\r\nSubject: s\r\n\r\nFrom the start\r\n>From quoted\r\nno final newline";
        let (p, id) = staged(d.path(), &a, &b, text);
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h" };
        deliver(&m, &Target::Mbox(mbox_path.clone()), &journal, &work).unwrap();
        let got = std::fs::read_to_string(&mbox_path).unwrap();
        assert!(got.starts_with("From alice@example.org "), "{got}");
        assert!(got.ends_with("\n>From the start\n>>From quoted\nno final newline\n\n"), "{got:?}");
        assert_eq!(journal.get(&id).unwrap().as_deref(), Some("mbox"));

        // A torn append: intent recorded, half the bytes written, crash.
        let (p2, id2) = staged(d.path(), &a, &b, b"Subject: two\r\n\r\nsecond\r\n");
        let m2 = Incoming { me: &b, sender: &cert, staged: &p2, id: &id2, outbox_host: "o", hostname: "h" };
        let rendered = work.join(format!("{id2}.mbox"));
        let before = std::fs::metadata(&mbox_path).unwrap().len();
        deliver(&m2, &Target::Mbox(mbox_path.clone()), &journal, &work).unwrap();
        let full = std::fs::read(&mbox_path).unwrap();
        std::fs::write(&rendered, &full[before as usize..]).unwrap();
        std::fs::write(&mbox_path, &full[..before as usize + 10]).unwrap();
        std::fs::remove_file(journal_path(d.path(), &id2)).unwrap();
        journal.record_intent(&id2, before, (full.len() as u64) - before).unwrap();
        assert_eq!(recover_mbox(&mbox_path, &journal, &work).unwrap(), 0);
        assert_eq!(std::fs::read(&mbox_path).unwrap(), full[..before as usize].to_vec(), "torn append taken back");
        assert_eq!(journal.get(&id2).unwrap(), None, "so it is fetched and delivered again");

        // A complete append whose journal entry was lost: recognised.
        std::fs::write(&mbox_path, &full).unwrap();
        std::fs::write(&rendered, &full[before as usize..]).unwrap();
        journal.record_intent(&id2, before, (full.len() as u64) - before).unwrap();
        assert_eq!(recover_mbox(&mbox_path, &journal, &work).unwrap(), 1);
        assert_eq!(journal.get(&id2).unwrap().as_deref(), Some("mbox"));
        assert_eq!(std::fs::read(&mbox_path).unwrap(), full, "nothing duplicated, nothing lost");
    }

    fn journal_path(root: &Path, id: &str) -> PathBuf {
        root.join("journal").join(id)
    }

    #[test]
    fn mda_gets_the_message_and_its_failure_is_not_delivery() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (
            Identity::generate(None, "alice@example.org", "http://a/").unwrap(),
            Identity::generate(None, "bob@example.net", "http://b/").unwrap(),
        );
        let journal = Journal::open(&d.path().join("journal")).unwrap();
        let cert = a.cert();
        let (p, id) = staged(d.path(), &a, &b, b"Subject: mda\r\n\r\npiped\r\n");
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h" };
        let out = d.path().join("out.txt");
        let cmd = format!("cat > {}", out.display());
        deliver(&m, &Target::Mda(cmd), &journal, d.path()).unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().ends_with("Subject: mda\n\npiped\n"));
        let (p, id) = staged(d.path(), &a, &b, b"Subject: x\r\n\r\nx\r\n");
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h" };
        assert!(deliver(&m, &Target::Mda("exit 75".into()), &journal, d.path()).is_err());
        assert_eq!(journal.get(&id).unwrap(), None);
    }
}
