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
    /// A list robot's intake (`list/intake`, a Maildir): each message as
    /// its author signed it, byte for byte, after a line naming the author
    /// and carrying their signature (`stubmail::list::intake_line`), so the
    /// robot can publish it with the author's signature.
    Intake(Maildir),
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
    /// This machine's name: the authserv-id of our Authentication-Results.
    pub hostname: &'a str,
    /// Largest decrypted (decompressed) message written: a few KB of
    /// compressed OpenPGP can expand to gigabytes.
    pub max_plain: u64,
    /// Which contacts claim each address (lower-cased): `from=pass` needs
    /// the From: address to be the signer's and no other contact's.
    pub claims: &'a Claims,
    /// Forwarding, when `[forward]` is set.
    pub forward: Option<&'a crate::forward::Forward>,
    /// The recipient's contacts: a list post's or a forward's author is
    /// checked against their certificate, when they are one.
    pub keyring: Option<&'a stubmail::keyring::Keyring>,
}

/// Address → the contacts whose certificates claim it.
pub type Claims = std::collections::BTreeMap<String, Vec<stubmail::protocol::Fpr>>;

/// Largest header block: the From: check reads all of it, so a message
/// whose header is longer is refused rather than checked in part.
const MAX_HEADER: usize = 1024 * 1024;

/// Fails the read once more than `left` bytes came through. Wraps the
/// decryptor's output, so decompression stops there, before the bytes
/// reach the disk.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte more than allowed, to tell "exactly the limit"
        // from "over it".
        let want = buf.len().min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "the decrypted message is larger than {} bytes (poll.max_decrypted_size): refused",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Decrypt, verify and write the message with trace headers and LF line
/// endings into `out`. Fails (and the caller discards `out`) unless the
/// whole message decrypted and the signature by `sender` verified.
pub fn render(m: &Incoming, out: &mut dyn Write) -> anyhow::Result<()> {
    // sequoia-openpgp 2.4.2 panics on some truncated encrypted messages (a
    // SEIPD packet shorter than its prefix, found by the decrypt_message
    // fuzz target). A contact's message must never take the poller down,
    // nor be retried for ever: a panic in here is a refusal like any other.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| render_checked(m, out))) {
        Ok(r) => r,
        Err(_) => Err(CryptoReject("the OpenPGP parser failed on this message (caught): refused".into()).into()),
    }
}

fn render_checked(m: &Incoming, out: &mut dyn Write) -> anyhow::Result<()> {
    let input = File::open(m.staged)?;
    let plain = pgp::decrypt_verify(m.me, m.sender, input).map_err(|e| CryptoReject(e.to_string()))?;
    let plain = Bounded { inner: plain, left: m.max_plain, limit: m.max_plain };
    let mut plain = BufReader::with_capacity(64 * 1024, plain);
    let header = stubmail::mail::read_header(&mut plain, MAX_HEADER).map_err(|e| CryptoReject(e.to_string()))?;
    if header.len() >= MAX_HEADER && !(header.ends_with(b"\n\n") || header.ends_with(b"\n\r\n")) {
        return Err(CryptoReject(format!("the header block is longer than {MAX_HEADER} bytes: refused unchecked")).into());
    }
    // RFC 8601 §5: our own verdicts are ours alone. Whatever a sender wrote
    // in our name (or as a Stubmail header) goes before ours is added.
    // A post of a list the sender runs, or a message the sender forwards:
    // its From: is the author's, and the field carrying the author's
    // signature stays (`stubmail::list`).
    let via = relayed_by(m.sender, &header);
    let author = match &via {
        Some(v) => author_verified(m, v, &header),
        None => None,
    };
    let header = strip_forged_trace(&header, m.hostname, via.is_some());
    let trace = trace_headers(m.sender, m.claims, &header, m.id, m.outbox_host, m.hostname, via.as_ref(), author.as_ref());
    let mut w = CrlfToLf::new(out);
    w.write_all(trace.as_bytes())?;
    w.write_all(&header)?;
    // Errors here include a bad signature, found at the end of the stream.
    io::copy(&mut plain, &mut w).map_err(|e| CryptoReject(e.to_string()))?;
    w.finish()?;
    Ok(())
}

/// Write a message into a Maildir's `tmp/` with `write`, make it durable,
/// journal it, and move it into `new/`; on any error nothing is left.
fn into_maildir(md: &Maildir, m: &Incoming, journal: &Journal, write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let (name, file) = md.create_tmp()?;
    let result = (|| -> anyhow::Result<()> {
        let mut w = io::BufWriter::new(file);
        write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        md.discard(&name);
        return Err(e);
    }
    journal.record(m.id, &name)?;
    md.commit(&name)?;
    Ok(())
}

/// Write the message as its sender signed it (at most `max_plain` bytes)
/// into `out`; return their signature over it. A panic of the OpenPGP
/// parser is a refusal, as in [`render`].
fn signed_copy_caught(m: &Incoming, out: &mut dyn Write) -> anyhow::Result<Vec<u8>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| signed_copy(m, out))) {
        Ok(r) => r,
        Err(_) => Err(CryptoReject("the OpenPGP parser failed on this message (caught): refused".into()).into()),
    }
}

fn signed_copy(m: &Incoming, out: &mut dyn Write) -> anyhow::Result<Vec<u8>> {
    let input = File::open(m.staged)?;
    let mut plain = pgp::decrypt_verify_signed(m.me, m.sender, input).map_err(|e| CryptoReject(e.to_string()))?;
    io::copy(&mut Bounded { inner: &mut plain, left: m.max_plain, limit: m.max_plain }, out).map_err(|e| CryptoReject(e.to_string()))?;
    Ok(plain.signature().ok_or_else(|| CryptoReject(format!("no valid signature by {}", pgp::fpr_of(m.sender))))?)
}

/// Deliver one message into `target`, journalled. `work` is a private
/// directory for mbox/MDA staging.
pub fn deliver(m: &Incoming, target: &Target, journal: &Journal, work: &Path) -> anyhow::Result<()> {
    // Forwarded first (queued durably, once per message id), then kept.
    if let Some(f) = m.forward {
        // The message as its author signed it, streamed to a file (it may
        // be as large as poll.max_decrypted_size), then into the spool.
        let raw = work.join(format!("{}.fwd", m.id));
        let copied = (|| -> anyhow::Result<Vec<u8>> {
            let mut w = io::BufWriter::new(File::create(&raw)?);
            let sig = signed_copy_caught(m, &mut w)?;
            w.into_inner().map_err(|e| e.into_error())?;
            Ok(sig)
        })();
        let forwarded = copied.and_then(|sig| f.forward(m.id, &pgp::fpr_of(m.sender), &raw, &sig));
        let _ = std::fs::remove_file(&raw);
        match forwarded? {
            crate::forward::Forwarded::Queued => {
                tracing::info!(id = m.id, to = f.config.to, "forwarded");
                if !f.config.keep {
                    journal.record(m.id, "forwarded")?;
                    return Ok(());
                }
            }
            crate::forward::Forwarded::No(why) => tracing::info!(id = m.id, "not forwarded: {why}; kept here"),
        }
    }
    match target {
        Target::Maildir(md) => into_maildir(md, m, journal, |w| render(m, w))?,
        Target::Intake(md) => into_maildir(md, m, journal, |w| {
            // Held in memory: a list's posts are bounded by list.max_post_size.
            let mut raw = Vec::new();
            let sig = signed_copy_caught(m, &mut raw)?;
            w.write_all(&stubmail::list::intake_line(&pgp::fpr_of(m.sender), &sig))?;
            w.write_all(&raw)?;
            Ok(())
        })?,
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

/// The header without what only we may write: every `Stubmail-*` field,
/// `Return-Path` (the delivering agent's to add), and each
/// `Authentication-Results` whose authserv-id is ours.
fn strip_forged_trace(header: &[u8], hostname: &str, list_post: bool) -> Vec<u8> {
    stubmail::mail::remove_fields_where(header, |name, value| {
        let name = String::from_utf8_lossy(name);
        if list_post && name.eq_ignore_ascii_case(stubmail::list::AUTHOR_FIELD) {
            return false;
        }
        if name.as_bytes().get(..9).is_some_and(|p| p.eq_ignore_ascii_case(b"stubmail-")) || name.eq_ignore_ascii_case("return-path") {
            return true;
        }
        if name.eq_ignore_ascii_case("authentication-results") {
            // authserv-id: the first token, comments (CFWS) aside. One we
            // cannot read is dropped too: it might be meant as ours.
            let v = String::from_utf8_lossy(value);
            let mut plain = String::new();
            let mut depth = 0usize;
            for ch in v.chars() {
                match ch {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    c if depth == 0 => plain.push(c),
                    _ => {}
                }
            }
            let id = plain.split(|c: char| c == ';' || c.is_whitespace()).find(|t| !t.is_empty()).unwrap_or("");
            // RFC 8601: the id may be a quoted string; a DNS name may end
            // in a dot. All of these are ours.
            let id = id.trim_matches('"').trim_end_matches('.');
            return id.is_empty() || id.eq_ignore_ascii_case(hostname.trim_end_matches('.'));
        }
        false
    })
}

/// The headers http2mbox adds on top (docs/PROTOCOL.md §6).
/// The author of a list post or a forward, if their signature in
/// `Stubmail-Author-Signature` verifies over the message it carries with
/// the certificate of a contact of ours: a second pass over the message
/// (decrypted again; only list posts and forwards take it).
fn author_verified(m: &Incoming, via: &Via, header: &[u8]) -> Option<Cert> {
    let (fpr, sig, at) = stubmail::list::author_of(header)?;
    // Above the author field only what a list or a forwarder writes: any
    // other field there (a Subject:, a Reply-To:) is the relayer's, not
    // covered by the author's signature, yet shown first by mail clients.
    if !only_relay_fields(&header[..at], via) {
        return None;
    }
    let cert = m.keyring?.get(&fpr).ok()??;
    let input = File::open(m.staged).ok()?;
    let plain = pgp::decrypt_verify(m.me, m.sender, input).ok()?;
    let mut plain = BufReader::with_capacity(64 * 1024, Bounded { inner: plain, left: m.max_plain, limit: m.max_plain });
    let again = stubmail::mail::read_header(&mut plain, MAX_HEADER).ok()?;
    // The header read again is the same (and so the offset), or nothing.
    if again != header {
        return None;
    }
    let tail = io::Cursor::new(header[at..].to_vec()).chain(plain);
    pgp::verify_detached_reader(&cert, tail, &sig).ok().map(|()| cert)
}

/// Whether `fields` (the header above the author field) holds only the
/// fields a list (`List-*`, `Precedence`) or a forwarder (`Resent-*`)
/// writes, and the author field itself.
fn only_relay_fields(fields: &[u8], via: &Via) -> bool {
    fields.split_inclusive(|&b| b == b'\n').all(|line| {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return true;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
        let name = &line[..colon];
        let prefixed = |p: &[u8]| name.len() > p.len() && name[..p.len()].eq_ignore_ascii_case(p);
        name.eq_ignore_ascii_case(stubmail::list::AUTHOR_FIELD.as_bytes())
            || match via {
                Via::List(_) => prefixed(b"List-") || name.eq_ignore_ascii_case(b"Precedence"),
                Via::Forward(_) => prefixed(b"Resent-"),
            }
    })
}

/// How a message came to be signed by someone else than its author.
#[derive(Debug, PartialEq, Eq)]
enum Via {
    /// A post of the list `sender` runs.
    List(String),
    /// Forwarded by `sender`, whose address is the first `Resent-From:`.
    Forward(String),
}

/// The list `sender` runs, if `header` is one of its posts: the sender's
/// key is a list's ([`pgp::list_of`]) and `List-Post:` names that list.
fn list_of_post(sender: &Cert, header: &[u8]) -> Option<String> {
    pgp::list_of(sender).filter(|l| list_post_address(header).as_deref() == Some(l))
}

fn relayed_by(sender: &Cert, header: &[u8]) -> Option<Via> {
    if let Some(l) = list_of_post(sender, header) {
        return Some(Via::List(l));
    }
    let resent = stubmail::mail::addresses(header, &["Resent-From"]).into_iter().next()?;
    pgp::emails_of(sender).contains(&resent).then_some(Via::Forward(resent))
}

/// The address a `List-Post: <mailto:ADDR>` field names (RFC 2369).
fn list_post_address(header: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::default().parse_headers(header)?;
    let v = msg.headers().iter().find(|h| h.name().eq_ignore_ascii_case("List-Post"))?;
    let raw = String::from_utf8_lossy(&header[v.offset_start() as usize..v.offset_end() as usize]).into_owned();
    let inner = raw.trim().strip_prefix('<')?.split('>').next()?;
    let addr = inner.strip_prefix("mailto:")?.split('?').next()?.to_ascii_lowercase();
    stubmail::mail::is_plain_address(&addr).then_some(addr)
}

#[allow(clippy::too_many_arguments)]
fn trace_headers(sender: &Cert, claims: &Claims, header: &[u8], id: &str, outbox_host: &str, hostname: &str, via: Option<&Via>, author: Option<&Cert>) -> String {
    let fpr = pgp::fpr_of(sender);
    let signer_emails = pgp::emails_of(sender);
    let from = stubmail::mail::addresses(header, &["From"]);
    // Every From: address is a User ID of `cert`, and belongs to no other
    // contact (one address, one contact).
    let owned_by = |cert: &Cert| {
        let (f, emails) = (pgp::fpr_of(cert), pgp::emails_of(cert));
        !from.is_empty() && from.iter().all(|a| emails.contains(a) && claims.get(a).is_none_or(|owners| owners.iter().all(|o| *o == f)))
    };
    let from_ok = owned_by(sender);
    // A list post or a forward whose author's own signature verified, by
    // a contact whose address the From: is.
    let author_ok = author.is_some_and(owned_by);
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
        match via {
            _ if from_ok => "pass".to_string(),
            Some(Via::List(l)) if author_ok => format!("pass; author verified, via {l}"),
            Some(Via::Forward(f)) if author_ok => format!("pass; author verified, forwarded by {f}"),
            // The list checked that its member wrote it under their own
            // address; the author's signature travels in its field.
            Some(Via::List(l)) => format!("list; via {l}"),
            // A forwarder vouches for nothing: anyone can write
            // Resent-From: above a forged From:.
            Some(Via::Forward(f)) => format!("fail; forwarded by {f}, author not verified"),
            None => "fail".to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_check_in_trace_headers() {
        let a = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let t = trace_headers(&a.cert(), &Claims::new(), b"From: Alice <Alice@Example.org>\r\n\r\n", "ab", "h", "me", None, None);
        assert!(t.contains("(from=pass)"), "{t}");
        let t = trace_headers(&a.cert(), &Claims::new(), b"From: ceo@bank.example\r\n\r\n", "ab", "h", "me", None, None);
        assert!(t.contains("(from=fail)") && t.contains(&format!("Stubmail-Sender-Fingerprint: {}", a.fpr())), "{t}");
        // The signer's address, but another contact claims it too: fail.
        let mut claims = Claims::new();
        claims.insert("alice@example.org".into(), vec![a.fpr(), stubmail::protocol::Fpr::parse(&"E".repeat(40)).unwrap()]);
        let t = trace_headers(&a.cert(), &claims, b"From: alice@example.org\r\n\r\n", "ab", "h", "me", None, None);
        assert!(t.contains("(from=fail)"), "{t}");
        // Two From: fields, one of them the signer's: fail.
        let t = trace_headers(&a.cert(), &Claims::new(), b"From: carol@example.com\r\nFrom: alice@example.org\r\n\r\n", "ab", "h", "me", None, None);
        assert!(t.contains("(from=fail)"), "{t}");
    }

    #[test]
    fn a_list_post_keeps_the_authors_signature_and_says_the_list_vouches_for_its_from() {
        let list = Identity::generate_list(None, "team@example.org", "http://a/", None).unwrap();
        let h = b"List-Id: <team.example.org>\r\nList-Post: <mailto:Team@Example.org>\r\n\
Stubmail-Author-Signature: fpr=AA; sig=AA==\r\nStubmail-Id: forged\r\nFrom: alice@example.org\r\n\r\n";
        let l = list_of_post(&list.cert(), h);
        assert_eq!(l.as_deref(), Some("team@example.org"));
        // An ordinary contact writing List-Post: with their own address is
        // no list: their From: is checked as always.
        let mallory = Identity::generate(None, "team@example.org", "http://a/").unwrap();
        assert_eq!(list_of_post(&mallory.cert(), h), None);
        assert_eq!(list_of_post(&list.cert(), b"From: alice@example.org\r\n\r\n"), None);
        let kept = String::from_utf8(strip_forged_trace(h, "me", true)).unwrap();
        assert!(kept.contains("Stubmail-Author-Signature: fpr=AA") && !kept.contains("Stubmail-Id"), "{kept}");
        assert!(!String::from_utf8(strip_forged_trace(h, "me", false)).unwrap().contains("Stubmail-Author"));
        // A field name with a multi-byte character where the prefix ends
        // (the list_posts fuzz target's find): no panic, nothing removed.
        assert_eq!(strip_forged_trace("Stubmail\u{e9}: x\r\n\r\n".as_bytes(), "me", false), "Stubmail\u{e9}: x\r\n\r\n".as_bytes());
        let t = trace_headers(&list.cert(), &Claims::new(), h, "ab", "h", "me", relayed_by(&list.cert(), h).as_ref(), None);
        assert!(t.contains("header.from=alice@example.org (from=list; via team@example.org)"), "{t}");
        // The author's own signature verified with a contact's certificate
        // owning the From: address: pass.
        let alice = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let t = trace_headers(&list.cert(), &Claims::new(), h, "ab", "h", "me", relayed_by(&list.cert(), h).as_ref(), Some(&alice.cert()));
        assert!(t.contains("(from=pass; author verified, via team@example.org)"), "{t}");
        // Verified, but by someone whose address the From: is not: still the list's word only.
        let t = trace_headers(&list.cert(), &Claims::new(), h, "ab", "h", "me", relayed_by(&list.cert(), h).as_ref(), Some(&mallory.cert()));
        assert!(t.contains("(from=list; via team@example.org)"), "{t}");
        // Any contact can write Resent-From: above a forged From: — a
        // forward vouches for nothing unless the author's signature does.
        let fwd = b"Resent-From: team@example.org\r\nFrom: ceo@bank.example\r\nStubmail-Author-Signature: fpr=AA; sig=AA==\r\n\r\n";
        let via = relayed_by(&mallory.cert(), fwd);
        assert_eq!(via, Some(Via::Forward("team@example.org".into())));
        let t = trace_headers(&mallory.cert(), &Claims::new(), fwd, "ab", "h", "me", via.as_ref(), None);
        assert!(t.contains("(from=fail; forwarded by team@example.org, author not verified)"), "{t}");
        // Above the author field, only the relayer's own fields: a Subject:
        // or Reply-To: there is not covered by the author's signature.
        let fw = Via::Forward("x@y".into());
        assert!(only_relay_fields(b"Resent-From: x@y\r\nresent-to: z@y\r\n\tz2@y\r\nStubmail-Author-Signature: fpr=AA;\r\n sig=AA==\r\n", &fw));
        assert!(!only_relay_fields(b"Resent-From: x@y\r\nSubject: URGENT\r\nStubmail-Author-Signature: fpr=AA; sig=AA==\r\n", &fw));
        assert!(!only_relay_fields(b"Resent-From: x@y\r\nList-Id: <l>\r\n", &fw));
        assert!(!only_relay_fields(b"Reply-To: m@x\r\n", &Via::List("l@x".into())));
        assert!(!only_relay_fields(b"junk without a colon\r\n", &Via::List("l@x".into())));
        assert!(only_relay_fields(b"List-Id: <l.x>\r\nPrecedence: list\r\nList-Post: <mailto:l@x>\r\n", &Via::List("l@x".into())));
        // Anything but a plain mailto: names no list.
        for bad in [&b"List-Post: NO\r\n\r\n"[..], b"List-Post: <https://x/>\r\n\r\n", b"List-Post: <mailto:a b@x>\r\n\r\n", b"Subject: x\r\n\r\n"] {
            assert_eq!(list_post_address(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(list_post_address(b"List-Post: <mailto:t@x.org?subject=hi>\r\n\r\n").as_deref(), Some("t@x.org"));
    }

    #[test]
    fn forged_trace_headers_are_removed_before_ours_are_added() {
        let h = b"Authentication-Results: Me.Example; stubmail=pass\r\n\theader.from=alice@example.org (from=pass)\r\n\
Authentication-Results: mx.other.example; dkim=pass\r\n\
Authentication-Results: (comment) me.example; spf=pass\r\n\
:Authentication-Results: me.example; dkim=pass\r\n\
Authentication-Results: \"me.example\"; stubmail=pass\r\n\
Authentication-Results: ME.example.; stubmail=pass\r\n\
Authentication-Results : me.example; stubmail=pass\r\n\
Authentication-\x20Results: me.example; stubmail=pass\r\n\
Authentication-Results: other.example (me.example); spf=pass\r\n\
Stubmail-Sender-Fingerprint: AAAA\r\nSTUBMAIL-ID: x\r\nReturn-Path: <alice@example.org>\r\n\
Subject: hi\r\n\r\n";
        let got = String::from_utf8(strip_forged_trace(h, "me.example", false)).unwrap();
        assert_eq!(got, "Authentication-Results: mx.other.example; dkim=pass\r\nAuthentication-Results: other.example (me.example); spf=pass\r\nSubject: hi\r\n\r\n");
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound_and_writes_nothing_beyond_it() {
        use stubmail::openpgp::serialize::stream::{Compressor, Encryptor, LiteralWriter, Message, Signer};
        use stubmail::openpgp::types::CompressionAlgorithm;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (
            Identity::generate(None, "alice@example.org", "http://a/").unwrap(),
            Identity::generate(None, "bob@example.net", "http://b/").unwrap(),
        );
        // 64 MiB of zeros, bzip2'd inside a signed, encrypted message: a
        // few hundred bytes of ciphertext.
        let mut ct = Vec::new();
        {
            let policy = stubmail::openpgp::policy::StandardPolicy::new();
            let bc = b.cert();
            let recipients = bc.keys().with_policy(&policy, None).supported().for_transport_encryption();
            let m = Message::new(&mut ct);
            let m = Encryptor::for_recipients(m, recipients).build().unwrap();
            let m = Compressor::new(m).algo(CompressionAlgorithm::BZip2).build().unwrap();
            let m = Signer::new(m, a.signing_keypair().unwrap()).unwrap().build().unwrap();
            let mut w = LiteralWriter::new(m).build().unwrap();
            w.write_all(b"From: alice@example.org\r\nSubject: bomb\r\n\r\n").unwrap();
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                w.write_all(&zeros).unwrap();
            }
            w.finalize().unwrap();
        }
        assert!(ct.len() < 64 * 1024, "a small ciphertext: {}", ct.len());
        let id = stubmail::client::sha256_hex(&ct);
        let p = d.path().join("bomb.part");
        std::fs::write(&p, &ct).unwrap();
        let cert = a.cert();
        let md = Maildir::open(&d.path().join("Maildir")).unwrap();
        let journal = Journal::open(&d.path().join("journal")).unwrap();
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h", max_plain: 1 << 20, claims: &Claims::new(), forward: None, keyring: None };
        let e = deliver(&m, &Target::Maildir(md), &journal, d.path()).unwrap_err();
        assert!(e.downcast_ref::<CryptoReject>().is_some() && e.to_string().contains("larger than"), "{e:#}");
        for sub in ["tmp", "new", "cur"] {
            assert_eq!(std::fs::read_dir(d.path().join("Maildir").join(sub)).unwrap().count(), 0, "{sub}: nothing left");
        }
        assert_eq!(journal.get(&id).unwrap(), None);
        // The same message under a bound it fits: delivered whole.
        let m = Incoming { max_plain: 65 << 20, ..m };
        let md = Maildir::open(&d.path().join("Maildir")).unwrap();
        deliver(&m, &Target::Maildir(md), &journal, d.path()).unwrap();
    }

    #[test]
    fn a_message_that_makes_the_openpgp_parser_panic_is_refused_not_a_crash() {
        // Found by the decrypt_message fuzz target: a PKESK to Bob, then a
        // SEIPD packet shorter than its prefix; sequoia-openpgp 2.4.2
        // unwraps an EOF there.
        use stubmail::openpgp::parse::Parse;
        let data = |f: &str| std::fs::read(format!("{}/testdata/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let key = |f: &str| Identity::from_cert(stubmail::openpgp::Cert::from_bytes(&data(f)).unwrap()).unwrap();
        let (a, b) = (key("alice.asc"), key("bob.asc"));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.part");
        std::fs::write(&p, data("truncated-seipd.pgp")).unwrap();
        let cert = a.cert();
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: "x", outbox_host: "o", hostname: "h", max_plain: 1 << 20, claims: &Claims::new(), forward: None, keyring: None };
        let e = render(&m, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("OpenPGP parser failed"), "{e:#}");
    }

    #[test]
    fn a_header_block_past_the_limit_is_refused_not_checked_in_part() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (
            Identity::generate(None, "alice@example.org", "http://a/").unwrap(),
            Identity::generate(None, "bob@example.net", "http://b/").unwrap(),
        );
        // From: carol, 1.1 MiB of header fields, then From: alice.
        let mut text = b"From: carol@example.com\r\n".to_vec();
        for i in 0..15_000 {
            text.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(60)).as_bytes());
        }
        text.extend_from_slice(b"From: alice@example.org\r\nSubject: s\r\n\r\nbody\r\n");
        let (p, id) = staged(d.path(), &a, &b, &text);
        let cert = a.cert();
        let md = Maildir::open(&d.path().join("Maildir")).unwrap();
        let journal = Journal::open(&d.path().join("journal")).unwrap();
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h", max_plain: 1 << 30, claims: &Claims::new(), forward: None, keyring: None };
        let e = deliver(&m, &Target::Maildir(md), &journal, d.path()).unwrap_err();
        assert!(e.to_string().contains("header block is longer"), "{e:#}");
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
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h", max_plain: 1 << 30, claims: &Claims::new(), forward: None, keyring: None };
        deliver(&m, &Target::Mbox(mbox_path.clone()), &journal, &work).unwrap();
        let got = std::fs::read_to_string(&mbox_path).unwrap();
        assert!(got.starts_with("From alice@example.org "), "{got}");
        assert!(got.ends_with("\n>From the start\n>>From quoted\nno final newline\n\n"), "{got:?}");
        assert_eq!(journal.get(&id).unwrap().as_deref(), Some("mbox"));

        // A torn append: intent recorded, half the bytes written, crash.
        let (p2, id2) = staged(d.path(), &a, &b, b"Subject: two\r\n\r\nsecond\r\n");
        let m2 = Incoming { me: &b, sender: &cert, staged: &p2, id: &id2, outbox_host: "o", hostname: "h", max_plain: 1 << 30, claims: &Claims::new(), forward: None, keyring: None };
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
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h", max_plain: 1 << 30, claims: &Claims::new(), forward: None, keyring: None };
        let out = d.path().join("out.txt");
        let cmd = format!("cat > {}", out.display());
        deliver(&m, &Target::Mda(cmd), &journal, d.path()).unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().ends_with("Subject: mda\n\npiped\n"));
        let (p, id) = staged(d.path(), &a, &b, b"Subject: x\r\n\r\nx\r\n");
        let m = Incoming { me: &b, sender: &cert, staged: &p, id: &id, outbox_host: "o", hostname: "h", max_plain: 1 << 30, claims: &Claims::new(), forward: None, keyring: None };
        assert!(deliver(&m, &Target::Mda("exit 75".into()), &journal, d.path()).is_err());
        assert_eq!(journal.get(&id).unwrap(), None);
    }
}
