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
    /// The outbox took the complaint and publishes an abuse desk: the
    /// desk's address, and whether the ARF copy went out (or why not).
    pub desk: Option<(String, Result<(), String>)>,
    /// The sender was newly blocked here.
    pub blocked: bool,
}

/// The RFC 2142 address for abuse reports about an outbox: `abuse@` its host.
pub fn abuse_address(outbox: &str) -> Option<String> {
    let host = outbox_domain(outbox)?;
    Some(format!("abuse@{host}"))
}

/// An outbox URL's host when it is a name (abuse@ a bare IP address is
/// no mailbox), lower case, without a trailing dot.
fn outbox_domain(outbox: &str) -> Option<String> {
    let host = reqwest::Url::parse(outbox).ok()?.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty() && !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err()).then_some(host)
}

/// May a report about `outbox` be mailed to the abuse desk it publishes?
/// Only at the outbox's own host or a domain above it within the same
/// registrable domain (`abuse@example.org` for `https://outbox.example.org/`,
/// never `abuse@co.uk` or `abuse@github.io`: the Public Suffix List says
/// where a registrable domain starts), and only a plain address (no `%` or
/// `!` a relay might route onwards): an outbox is a stranger, and one
/// naming any address would have every reporter mail that address.
pub fn desk_belongs_to(outbox: &str, desk: &str) -> bool {
    let Some(host) = outbox_domain(outbox) else { return false };
    let Some((local, domain)) = desk.split_once('@').filter(|_| stubmail::mail::is_plain_address(desk)) else { return false };
    if local.contains(['%', '!']) {
        return false;
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if host == domain {
        return true;
    }
    // The registrable domain (`example.org` of `outbox.example.org`); a
    // host with none (`localhost`, a public suffix itself) has no parent
    // a desk may sit at.
    let Some(registrable) = psl::domain_str(&host) else { return false };
    host.ends_with(&format!(".{domain}")) && (domain == registrable || domain.ends_with(&format!(".{registrable}")))
}

/// An address a peer sent, fit to print: as it is when it is a plain
/// address, escaped and cut short otherwise (no terminal controls).
pub fn printable(a: &str) -> String {
    if stubmail::mail::is_plain_address(a) {
        a.to_string()
    } else {
        let short: String = a.chars().take(100).collect();
        format!("{short:?}")
    }
}

/// The line a mailed report's signature covers (`Stubmail-Complaint:`):
/// what is reported, by whom, when. Verify with the reporter's key:
/// `gpg --verify SIG FILE` with this value (no line end) in FILE and the
/// `Stubmail-Complaint-Signature` field, base64-decoded, in SIG.
pub fn complaint_line(found: &Found, outbox: &str, reporter: &Fpr, now: i64) -> String {
    format!("id={}; sender={}; outbox={}; reporter={}; date={}", found.id, found.sender, outbox, reporter, now)
}

/// A base64 value folded into header continuation lines of 76 octets.
fn folded_base64(raw: &[u8]) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(raw);
    b.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\r\n ")
}

/// One report, whatever carries it.
pub struct ArfReport<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub found: &'a Found,
    pub outbox: &'a str,
    pub reason: Option<&'a str>,
    /// The sender's signed stub (base64), if one came.
    pub stub: Option<&'a str>,
    /// The whole message as delivered, only when the user adds it.
    pub full: Option<&'a [u8]>,
    /// Did the outbox take the complaint already (a copy for its desk)?
    pub copy: bool,
    pub now: i64,
}

/// An abuse report in ARF form (RFC 5965): a human-readable part, the
/// machine-readable feedback report — signed by the reporter — and the
/// message's identification: the fields http2mbox wrote on delivery, not
/// the message (`full` only when the user adds it).
pub fn arf(me: &Identity, r: &ArfReport<'_>) -> anyhow::Result<Vec<u8>> {
    let found = r.found;
    let boundary = format!("stubmail-arf-{}", &found.id[..24]);
    let reason = r.reason.map(|x| x.chars().filter(|c| !c.is_control()).take(500).collect::<String>()).unwrap_or_default();
    let line = complaint_line(found, r.outbox, &me.fpr(), r.now);
    let sig = me.sign_detached(line.as_bytes()).map_err(|e| anyhow::anyhow!("signing the report: {e}"))?;
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Abuse report: Stubmail message {id}\r\nDate: {date}\r\n\
         Message-ID: <arf.{id}@stubmail.invalid>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         A recipient reports a message stored in your outbox {outbox} as abuse.\r\n\
         Stubmail id {id}, sender key {sender}.{why}\r\n\
         {how}\r\n\
         The report is signed by the reporter's key {reporter} (its Stubmail-Complaint field).\r\n\r\n\
         --{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: stubmail/{version}\r\nVersion: 1\r\nArrival-Date: {date}\r\n\
         Reported-URI: {outbox}v1/messages/{id}\r\n\
         Stubmail-Complaint: {line}\r\nStubmail-Complaint-Signature: {sig}\r\n\r\n--{boundary}\r\n",
        from = r.from,
        to = r.to,
        outbox = r.outbox,
        id = found.id,
        sender = found.sender,
        reporter = me.fpr(),
        date = stubmail::time::rfc5322(r.now),
        why = if reason.is_empty() { String::new() } else { format!(" Reason given: {reason}") },
        how = if r.copy {
            "The outbox took the complaint (docs/PROTOCOL.md 4.8) and names this address as its abuse desk: this is the desk's copy."
        } else {
            "The outbox has no complaint endpoint (docs/PROTOCOL.md 4.8), so this comes by mail."
        },
        sig = folded_base64(&sig),
        version = env!("CARGO_PKG_VERSION"),
    )
    .into_bytes();
    match r.full {
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
            if let Some(s) = r.stub {
                m.extend_from_slice(format!("Stubmail-Stub: {s}\r\n").as_bytes());
            }
        }
    }
    m.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Ok(m)
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
    let client = OutboxClient::new(http, &outbox, me.clone())?;
    let stub = kept_stub(home, found);
    let answer = client.complain(&found.id, &ComplaintRequest { sender: Some(found.sender.clone()), reason: reason.clone(), stub: stub.clone() }).await;
    // An outbox without the endpoint (an older one, another program): the
    // report goes by mail to its abuse address, in ARF form.
    let no_endpoint = |e: &stubmail::client::ClientError| {
        matches!(e, stubmail::client::ClientError::Server { status, body }
            if status.as_u16() == 405 || (status.as_u16() == 404 && body.message.contains("no such endpoint")))
    };
    let mut by_mail = None;
    let mut desk = None;
    let full = || -> anyhow::Result<Option<Vec<u8>>> {
        // Bounded like the mailbox's own limit (poll.max_decrypted_size).
        Ok(if include_message { Some(stubmail::fsutil::read_bounded(&found.path, config.poll.max_decrypted_size)?) } else { None })
    };
    let now = stubmail::time::unix_now();
    let answer = match answer {
        Err(e) if no_endpoint(&e) => {
            let to = abuse_address(&outbox).ok_or_else(|| anyhow::anyhow!("{outbox} takes no complaints and has no domain to mail abuse@"))?;
            let full = full()?;
            let report = ArfReport { from: &config.identity.email, to: &to, found, outbox: &outbox, reason: reason.as_deref(), stub: stub.as_deref(), full: full.as_deref(), copy: false, now };
            let sent = send_arf(&config, &to, arf(&me, &report)?).await;
            by_mail = Some(to);
            sent.map(|()| stubmail::protocol::ComplaintResponse { recorded: true, abuse_contact: None })
                .map_err(|e| stubmail::client::ClientError::Local(format!("{e:#}")))
        }
        Ok(a) => {
            // The outbox's abuse desk gets a signed copy by mail, if the
            // outbox names one of its own domain and it is a new report.
            if let Some(to) = a.abuse_contact.as_deref().filter(|_| a.recorded) {
                let sent = if !desk_belongs_to(&outbox, to) {
                    Err(format!("it is not a plain address at {outbox}'s own domain: not mailed"))
                } else if config.relay.is_none() {
                    Err("no [relay] is configured to mail it (config.toml [relay])".to_string())
                } else {
                    // The desk is the outbox operator's, who otherwise holds
                    // only ciphertext: never the message, whatever
                    // --include-message says (it is for outboxes without
                    // the endpoint).
                    let report = ArfReport { from: &config.identity.email, to, found, outbox: &outbox, reason: reason.as_deref(), stub: stub.as_deref(), full: None, copy: true, now };
                    send_arf(&config, to, arf(&me, &report)?).await.map_err(|e| format!("{e:#}"))
                };
                desk = Some((printable(to), sent));
            }
            Ok(a)
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
    Ok(Reported { outbox, recorded, by_mail, desk, blocked })
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
    fn an_abuse_desk_is_mailed_only_at_the_outboxs_own_domain() {
        for (outbox, desk, ok) in [
            ("https://outbox.example.org/", "abuse@example.org", true),
            ("https://outbox.example.org/", "desk@outbox.example.org", true),
            ("https://outbox.example.org./stubmail/", "Abuse@EXAMPLE.org", true),
            ("http://localhost:8080/", "desk@localhost", true),
            ("https://spam.mygmail.co.uk/", "abuse@mygmail.co.uk", true),
            ("https://spam.mygmail.co.uk/", "victim@co.uk", false),
            ("https://someone.github.io/", "abuse@github.io", false),
            ("https://someone.github.io/", "abuse@someone.github.io", true),
            ("http://localhost:8080/", "victim%gmail.com@localhost", false),
            ("http://localhost:8080/", "gmail.com!victim@localhost", false),
            ("https://outbox.example.org/", "abuse@victim.example", false),
            ("https://outbox.example.org/", "abuse@org", false),
            ("https://badexample.org/", "abuse@example.org", false),
            ("http://127.0.0.1:8080/", "abuse@127.0.0.1", false),
            ("https://outbox.example.org/", "not an address", false),
            ("https://outbox.example.org/", "a@example.org@victim.example", false),
        ] {
            assert_eq!(desk_belongs_to(outbox, desk), ok, "{outbox} {desk}");
        }
    }

    #[test]
    fn an_address_from_a_peer_prints_without_terminal_controls() {
        assert_eq!(printable("abuse@example.org"), "abuse@example.org");
        let p = printable(&format!("\u{1b}[2J\u{7}{}", "x".repeat(500)));
        assert!(!p.chars().any(|c| c.is_control()) && p.len() < 130, "{p}");
    }

    #[test]
    fn a_mailed_report_is_signed_by_its_reporter_over_its_complaint_line() {
        let me = Identity::generate(None, "bob@example.net", "http://localhost:1/").unwrap();
        let found = Found { id: "ab".repeat(32), sender: Fpr::parse(&"A".repeat(40)).unwrap(), path: PathBuf::from("/nonexistent") };
        let r = ArfReport { from: "bob@example.net", to: "abuse@localhost", found: &found, outbox: "http://localhost:1/", reason: Some("pills\r\nBcc: x"), stub: None, full: None, copy: false, now: 1_700_000_000 };
        let m = String::from_utf8(arf(&me, &r).unwrap()).unwrap();
        let field = |name: &str| -> String {
            let start = m.find(&format!("\r\n{name}: ")).unwrap() + name.len() + 4;
            let rest = &m[start..];
            let mut end = rest.find("\r\n").unwrap();
            while rest[end + 2..].starts_with(' ') {
                end += 2 + rest[end + 2..].find("\r\n").unwrap();
            }
            rest[..end].to_string()
        };
        let line = field("Stubmail-Complaint");
        assert_eq!(line, complaint_line(&found, "http://localhost:1/", &me.fpr(), 1_700_000_000));
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::STANDARD.decode(field("Stubmail-Complaint-Signature").replace(['\r', '\n', ' '], "")).unwrap();
        pgp::verify_detached(&me.cert(), line.as_bytes(), &sig).unwrap();
        assert!(pgp::verify_detached(&me.cert(), line.replace("bob", "eve").replace("date=1", "date=2").as_bytes(), &sig).is_err());
        // A reason cannot add header fields.
        assert!(!m.contains("\r\nBcc:"), "{m}");
    }

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
