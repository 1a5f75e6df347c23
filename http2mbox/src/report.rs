//! Reporting spam (issue #19): a message the user received is reported to
//! the outbox it came from — a signed complaint naming the message's id and
//! sender, never its content — and its sender is blocked here at once.
//! `stubmail report ID` does it, and so does moving a message into the
//! Maildir's `.Junk` folder (a mail client's "this is spam"): the daemon
//! reports what it finds there.
//!
//! The outbox holds the message itself: the id, checked against its own
//! records (it refuses anyone who was not a recipient), is the evidence.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stubmail::blocklist::{self, Entry, Target};
use stubmail::client::OutboxClient;
use stubmail::protocol::{ComplaintRequest, Fpr};
use stubmail::{pgp, Home, Identity};

/// A delivered message found in the Maildir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its Stubmail id (the SHA-256 of what the outbox stored).
    pub id: String,
    /// Its sender, as http2mbox recorded on delivery.
    pub sender: Fpr,
    pub path: PathBuf,
}

/// How much of a message's start is read for its header.
const HEADER_READ: u64 = 64 * 1024;

/// The `Stubmail-Id` and `Stubmail-Sender-Fingerprint` http2mbox wrote on
/// top of a delivered message (it strips every `Stubmail-*` field a message
/// brings along, so the first ones are its own).
pub fn stubmail_fields(path: &Path) -> Option<(String, Fpr)> {
    let mut buf = Vec::new();
    // A regular file only: no FIFO to hang on, no symbolic link to follow.
    stubmail::fsutil::open_regular(path).ok()?.take(HEADER_READ).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (mut id, mut sender) = (None, None);
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Stubmail-Id:") {
            id = id.or_else(|| Some(v.trim().to_string()));
        } else if let Some(v) = line.strip_prefix("Stubmail-Sender-Fingerprint:") {
            sender = sender.or_else(|| Fpr::parse(v.trim()).ok());
        }
    }
    let id = id.filter(|i| stubmail::protocol::is_valid_id(i))?;
    Some((id, sender?))
}

/// Did http2mbox deliver message `id` as this very file? Its delivery
/// journal names the file each id was delivered as; a file anyone else put
/// in the Maildir (ordinary mail fetched by another program, a copy) that
/// carries Stubmail fields is not one of ours, and names no one.
pub fn delivered_as(home: &Home, id: &str, path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split(':').next()) else { return false };
    stubmail::maildir::Journal::open(&home.state_dir().join("delivered"))
        .ok()
        .and_then(|j| j.get(id).ok().flatten())
        .is_some_and(|recorded| recorded == name)
}

/// The Maildir's folders a report may find a message in: the inbox and
/// its Maildir++ folders (`.Junk`, `.Archive`, ...).
fn folders(maildir: &Path) -> Vec<PathBuf> {
    let mut out = vec![maildir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(maildir) {
        out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))));
    }
    out
}

/// Messages http2mbox delivered whose Stubmail id starts with `prefix`
/// (at least 8 hex digits).
pub fn find(home: &Home, maildir: &Path, prefix: &str) -> anyhow::Result<Vec<Found>> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{prefix:?}: name the message by its Stubmail-Id header (at least 8 hex digits)");
    }
    let mut out: Vec<Found> = Vec::new();
    for folder in folders(maildir) {
        for sub in ["new", "cur"] {
            let Ok(rd) = std::fs::read_dir(folder.join(sub)) else { continue };
            for e in rd.flatten() {
                if let Some((id, sender)) = stubmail_fields(&e.path())
                    && id.starts_with(&prefix)
                    && !out.iter().any(|f| f.id == id)
                    && delivered_as(home, &id, &e.path())
                {
                    out.push(Found { id, sender, path: e.path() });
                }
            }
        }
    }
    Ok(out)
}

/// What a report did.
#[derive(Debug)]
pub struct Reported {
    pub outbox: String,
    /// The outbox counted it (false: this message was reported before).
    pub recorded: bool,
    /// The outbox has no complaint endpoint: the report went by mail, in
    /// ARF form, to this address.
    pub by_mail: Option<String>,
    /// The sender was newly blocked here.
    pub blocked: bool,
}

/// The RFC 2142 address for abuse reports about an outbox: `abuse@` its host.
pub fn abuse_address(outbox: &str) -> Option<String> {
    let host = reqwest::Url::parse(outbox).ok()?.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    // A name, not an address literal (abuse@ a bare IP address is no mailbox).
    (!host.is_empty() && !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err()).then(|| format!("abuse@{host}"))
}

/// An abuse report in ARF form (RFC 5965): a human-readable part, the
/// machine-readable feedback report, and the message's identification —
/// the fields http2mbox wrote on delivery, not the message (`full`, the
/// whole message as delivered, only when the user adds it).
#[allow(clippy::too_many_arguments)]
pub fn arf(from: &str, to: &str, found: &Found, outbox: &str, reason: Option<&str>, stub: Option<&str>, full: Option<&[u8]>, now: i64) -> Vec<u8> {
    let boundary = format!("stubmail-arf-{}", &found.id[..24]);
    let reason = reason.map(|r| r.chars().filter(|c| !c.is_control()).take(500).collect::<String>()).unwrap_or_default();
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Abuse report: Stubmail message {id}\r\nDate: {date}\r\n\
         Message-ID: <arf.{id}@stubmail.invalid>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         A recipient reports a message stored in your outbox {outbox} as abuse.\r\n\
         Stubmail id {id}, sender key {sender}.{why}\r\n\
         The outbox has no complaint endpoint (docs/PROTOCOL.md 4.8), so this comes by mail.\r\n\r\n\
         --{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: stubmail/{version}\r\nVersion: 1\r\nArrival-Date: {date}\r\n\
         Reported-URI: {outbox}v1/messages/{id}\r\n\r\n--{boundary}\r\n",
        id = found.id,
        sender = found.sender,
        date = stubmail::time::rfc5322(now),
        why = if reason.is_empty() { String::new() } else { format!(" Reason given: {reason}") },
        version = env!("CARGO_PKG_VERSION"),
    )
    .into_bytes();
    match full {
        Some(msg) => {
            m.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
            m.extend_from_slice(msg);
            if !msg.ends_with(b"\r\n") {
                m.extend_from_slice(b"\r\n");
            }
        }
        None => {
            m.extend_from_slice(
                format!("Content-Type: text/rfc822-headers\r\n\r\nStubmail-Sender-Fingerprint: {}\r\nStubmail-Id: {}\r\n", found.sender, found.id).as_bytes(),
            );
            // The sender's signed stub (docs/PROTOCOL.md §8.3), if one came.
            if let Some(s) = stub {
                m.extend_from_slice(format!("Stubmail-Stub: {s}\r\n").as_bytes());
            }
        }
    }
    m.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    m
}

/// Send an ARF report through the user's `[relay]`.
async fn send_arf(config: &stubmail::Config, to: &str, report: Vec<u8>) -> anyhow::Result<()> {
    use lettre::AsyncTransport;
    let relay = config.relay.as_ref().ok_or_else(|| {
        anyhow::anyhow!("its outbox takes no complaints and no [relay] is configured to mail {to} a report (config.toml [relay])")
    })?;
    let transport = stubmail::relay::transport(relay).map_err(anyhow::Error::msg)?;
    let envelope = lettre::address::Envelope::new(Some(config.identity.email.parse()?), vec![to.parse()?])?;
    transport.send_raw(&envelope, &report).await.map_err(|e| anyhow::anyhow!("mailing the report to {to} through {}: {e}", relay.host))?;
    Ok(())
}

/// Report one message to its sender's outbox and block the sender.
/// `include_message`: a report that goes by mail carries the whole
/// message (the outbox endpoint never takes content).
pub async fn report(
    home: &Home,
    me: Arc<Identity>,
    http: reqwest::Client,
    found: &Found,
    reason: Option<String>,
    include_message: bool,
) -> anyhow::Result<Reported> {
    if found.sender == me.fpr() {
        anyhow::bail!("message {} is from you (another device of yours, or mail to yourself): nothing to report", found.id);
    }
    let config = home.load_config()?;
    // The outbox the sender's certificate binds (or the user's override),
    // as the poller polls it.
    let outbox = match config.poll.outboxes.get(found.sender.as_str()) {
        Some(u) => u.clone(),
        None => {
            let cert = home.keyring().get(&found.sender)?.ok_or_else(|| {
                anyhow::anyhow!("{} is not in your keyring any more: no outbox to report to (`stubmail block {}` still blocks them)", found.sender, found.sender)
            })?;
            pgp::outbox_of(&cert).ok_or_else(|| anyhow::anyhow!("{}'s certificate binds no outbox", found.sender))?
        }
    };
    let client = OutboxClient::new(http, &outbox, me)?;
    let stub = kept_stub(home, found);
    let answer = client.complain(&found.id, &ComplaintRequest { sender: Some(found.sender.clone()), reason: reason.clone(), stub: stub.clone() }).await;
    // An outbox without the endpoint (an older one, another program): the
    // report goes by mail to its abuse address, in ARF form.
    let no_endpoint = |e: &stubmail::client::ClientError| {
        matches!(e, stubmail::client::ClientError::Server { status, body }
            if status.as_u16() == 405 || (status.as_u16() == 404 && body.message.contains("no such endpoint")))
    };
    let mut by_mail = None;
    let answer = match answer {
        Err(e) if no_endpoint(&e) => {
            let to = abuse_address(&outbox).ok_or_else(|| anyhow::anyhow!("{outbox} takes no complaints and has no domain to mail abuse@"))?;
            // Bounded like the mailbox's own limit (poll.max_decrypted_size).
            let full = if include_message { Some(stubmail::fsutil::read_bounded(&found.path, config.poll.max_decrypted_size)?) } else { None };
            let report = arf(&config.identity.email, &to, found, &outbox, reason.as_deref(), stub.as_deref(), full.as_deref(), stubmail::time::unix_now());
            let sent = send_arf(&config, &to, report).await;
            by_mail = Some(to);
            sent.map(|()| stubmail::protocol::ComplaintResponse { recorded: true }).map_err(|e| stubmail::client::ClientError::Local(format!("{e:#}")))
        }
        other => other,
    };
    // Blocked whatever the outbox said: the user has decided.
    let target = Target::Sender(found.sender.clone());
    let note = format!("reported as spam: {}", &found.id[..16]);
    // Marked before the outbox is asked: the Junk watch reports a message
    // once, and a report that fails is tried again by `stubmail report`,
    // never by itself on the next start (which would block again a
    // sender the user has unblocked since).
    mark_reported(home, &found.id)?;
    let blocked = blocklist::update(&home.data_dir, |b| {
        if b.blocks.iter().any(|e| e.target == target) {
            return false;
        }
        b.allows.retain(|e| e.target != target);
        b.blocks.push(Entry { target: target.clone(), added: stubmail::time::unix_now(), note: Some(note) });
        true
    })?;
    let recorded = answer
        .map_err(|e| anyhow::anyhow!("{outbox} did not take the report: {e} (the sender is blocked here all the same; `stubmail report {}` tries again)", found.id))?
        .recorded;
    Ok(Reported { outbox, recorded, by_mail, blocked })
}

/// Contacts' authentic stubs, by message: `state/stubs/<id>.<FPR>`.
pub fn stubs_dir(home: &Home) -> PathBuf {
    home.state_dir().join("stubs")
}

/// The sender's stub announcing message `id`, if one came (base64).
fn kept_stub(home: &Home, f: &Found) -> Option<String> {
    use base64::Engine as _;
    let b = stubmail::fsutil::read_bounded(&stubs_dir(home).join(format!("{}.{}", f.id, f.sender)), 2048).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(b))
}

/// Forget kept stubs older than a month (an outbox keeps a message no longer).
pub fn prune_stubs(home: &Home) {
    let Ok(rd) = std::fs::read_dir(stubs_dir(home)) else { return };
    let month = std::time::Duration::from_secs(31 * 86400);
    for e in rd.flatten() {
        if e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > month) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn reported_dir(home: &Home) -> PathBuf {
    home.state_dir().join("reported")
}

fn mark_reported(home: &Home, id: &str) -> io::Result<()> {
    stubmail::fsutil::ensure_private_dir(&reported_dir(home))?;
    stubmail::fsutil::write_atomic(&reported_dir(home).join(id), b"", 0o600)
}

/// Was this message reported already?
pub fn was_reported(home: &Home, id: &str) -> bool {
    stubmail::protocol::is_valid_id(id) && reported_dir(home).join(id).exists()
}

/// The daemon's watch on `<Maildir>/.Junk`: every Stubmail message a mail
/// client moves there is reported once.
pub struct JunkWatch {
    junk: PathBuf,
    /// Files already looked at (their names without the `:2,` flags), so
    /// a large Junk folder is read once, not every cycle.
    seen: HashSet<String>,
}

impl JunkWatch {
    pub fn new(maildir: &Path) -> JunkWatch {
        JunkWatch { junk: maildir.join(".Junk"), seen: HashSet::new() }
    }

    /// Stubmail messages in the Junk folder not reported yet.
    pub fn scan(&mut self, home: &Home) -> Vec<Found> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = std::fs::read_dir(self.junk.join(sub)) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().split(':').next().unwrap_or_default().to_string();
                if self.seen.contains(&name) {
                    continue;
                }
                if self.seen.len() > 100_000 {
                    self.seen.clear();
                }
                match stubmail_fields(&e.path()) {
                    Some((id, sender)) if !was_reported(home, &id) && delivered_as(home, &id, &e.path()) => {
                        out.push(Found { id, sender, path: e.path() })
                    }
                    _ => {
                        self.seen.insert(name);
                    }
                }
            }
        }
        out
    }

    /// A report went through (or can never go): do not look again.
    pub fn done(&mut self, f: &Found) {
        if let Some(n) = f.path.file_name() {
            self.seen.insert(n.to_string_lossy().split(':').next().unwrap_or_default().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_fields_on_top_name_a_message() {
        let d = tempfile::tempdir().unwrap();
        let f = "A".repeat(40);
        let id = "ab".repeat(32);
        let p = d.path().join("m");
        std::fs::write(&p, format!("Return-Path: <a@b>\r\nStubmail-Sender-Fingerprint: {f}\r\nStubmail-Id: {id}\r\n\r\nStubmail-Id: {}\r\n", "cd".repeat(32))).unwrap();
        assert_eq!(stubmail_fields(&p), Some((id.clone(), Fpr::parse(&f).unwrap())));
        for bad in [
            format!("Stubmail-Id: {id}\r\n\r\n"),
            format!("Subject: x\r\n\r\nStubmail-Id: {id}\r\nStubmail-Sender-Fingerprint: {f}\r\n"),
            format!("Stubmail-Id: ../../etc\r\nStubmail-Sender-Fingerprint: {f}\r\n\r\n"),
        ] {
            std::fs::write(&p, bad).unwrap();
            assert_eq!(stubmail_fields(&p), None);
        }
    }
}
