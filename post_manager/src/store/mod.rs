//! The outbox's data directory. Plain files, so many processes (CGI
//! instances, `serve` instances) can share one directory: every change is a
//! write-to-temp + fsync + rename, and per-message changes hold an exclusive
//! lock on `locks/<id>`.
//!
//! Layout (documented for operators in docs/OPERATING.md):
//!
//! ```text
//! accounts/<FPR>.pgp        certificates of the local users allowed to upload
//! certs/<FPR>.pgp           recipients' certificates, merged from their polls
//! messages/<id>             stored message bytes (id = SHA-256 of them)
//! meta/<id>.json            per-message delivery state (Meta)
//! inbox/<RCPT-FPR>/<id>     index: messages pending for a recipient (empty files)
//! sent/<SENDER-FPR>/<id>    index: messages of a sender (empty files)
//! nonces/<FPR>/<nonce>      replay protection, pruned after NONCE_MEMORY
//! locks/<id>                lock files
//! tmp/                      uploads in progress
//! cookies/<id>.json         UDP poll cookies (soft state, see `udp`)
//! cookies/current/<FPR>.<device>  the current cookie of a recipient's device
//! notify/<id>.<FPR>.json    notification stubs still to be (re)sent
//! udp.json                  the UDP service's port, while it runs
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stubmail::fsutil::{self, fsync_dir};
use stubmail::pgp;
use stubmail::protocol::{self, DeliveryState, Fpr, MessageStatus, PollItem, RecipientStatus};
use stubmail::openpgp::Cert;

/// Per-message state, `meta/<id>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// SHA-256 of the stored bytes, hex.
    pub id: String,
    /// The account that uploaded it.
    pub sender: Fpr,
    /// Size of the stored bytes.
    pub size: u64,
    /// Unix time it was stored.
    pub stored: i64,
    /// Each recipient's delivery state.
    pub recipients: Vec<RecipientMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecipientMeta {
    pub fpr: Fpr,
    pub state: DeliveryState,
    /// Unix time of the last state change.
    pub at: i64,
    /// The recipient's devices that acked it (several devices, one identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

impl Meta {
    pub fn status(&self) -> MessageStatus {
        MessageStatus {
            id: self.id.clone(),
            sender: self.sender.clone(),
            size: self.size,
            stored: stubmail::time::rfc3339(self.stored),
            recipients: self
                .recipients
                .iter()
                .map(|r| RecipientStatus { fpr: r.fpr.clone(), state: r.state, at: stubmail::time::rfc3339(r.at) })
                .collect(),
        }
    }
    fn recipient(&self, f: &Fpr) -> Option<&RecipientMeta> {
        self.recipients.iter().find(|r| &r.fpr == f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such message")]
    NotFound,
    #[error("the body's SHA-256 {got} does not match {want}")]
    DigestMismatch { got: String, want: String },
    #[error("the message is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("this id is already stored by another sender")]
    Conflict,
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("storage: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt state file {0}")]
    Corrupt(String),
}

/// One outbox data directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

const DIRS: &[&str] =
    &["accounts", "certs", "messages", "meta", "inbox", "sent", "nonces", "locks", "tmp", "rcptlog", "cookies", "cookies/current", "notify"];

/// An account's limits (`accounts/<FPR>.limits.json`; defaults if absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_messages: u64,
    pub max_recipients_per_day: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 1 << 30, max_messages: 10_000, max_recipients_per_day: 1_000 }
    }
}

fn utc_day(now: i64) -> String {
    stubmail::time::rfc3339(now)[..10].to_string()
}

impl Store {
    /// Open (creating the layout if needed) a data directory.
    pub fn open(root: &Path) -> io::Result<Store> {
        for d in DIRS {
            fs::create_dir_all(root.join(d))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Check that this process can write every part of the data directory.
    /// Under a web server the CGI runs as the server's user (www-data):
    /// the directory must belong to that user, or nothing can be stored.
    pub fn check_writable(&self) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        for d in DIRS {
            let p = self.p(d);
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: a valid NUL-terminated path; access() only reads it.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is not writable by uid {uid}; give the data directory to the user the outbox runs as \
                         (e.g. `chown -R www-data: {}`) — see docs/OPERATING.md",
                        p.display(),
                        self.root.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// When a recipient's index last changed (a message arrived, was
    /// acked, unsent or expired): lets the UDP service answer from a cache.
    pub fn inbox_mtime(&self, recipient: &Fpr) -> Option<std::time::SystemTime> {
        fs::metadata(self.p(&format!("inbox/{recipient}"))).and_then(|m| m.modified()).ok()
    }

    /// Mark an index changed whose files did not change (a device's ack).
    fn touch_inbox(&self, recipient: &Fpr) {
        let dir = self.p(&format!("inbox/{recipient}"));
        if let Ok(f) = File::open(&dir) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// A recipient's delivery state of a message (None: no such message or
    /// not a recipient).
    pub fn recipient_state(&self, id: &str, recipient: &Fpr) -> Result<Option<DeliveryState>, StoreError> {
        Ok(self.read_meta(id)?.and_then(|m| m.recipient(recipient).map(|r| r.state)))
    }

    /// A stub was sent: `stored` becomes `notified`, so the sender sees it.
    pub fn mark_notified(&self, id: &str, recipient: &Fpr, now: i64) -> Result<(), StoreError> {
        let _lock = self.lock(id)?;
        let Some(mut m) = self.read_meta(id)? else { return Ok(()) };
        if let Some(r) = m.recipients.iter_mut().find(|r| &r.fpr == recipient && r.state == DeliveryState::Stored) {
            r.state = DeliveryState::Notified;
            r.at = now;
            self.write_meta(&m)?;
        }
        Ok(())
    }

    // ---- accounts and certificates -------------------------------------

    /// Register a local user who may upload. The certificate must be usable.
    pub fn add_account(&self, cert: &Cert) -> anyhow::Result<Fpr> {
        pgp::check_contact(cert)?;
        let f = pgp::fpr_of(cert);
        fsutil::write_atomic(&self.p(&format!("accounts/{f}.pgp")), &pgp::binary(cert)?, 0o644)?;
        Ok(f)
    }

    /// Set an account's limits.
    pub fn set_limits(&self, f: &Fpr, l: &Limits) -> io::Result<()> {
        fsutil::write_atomic(&self.p(&format!("accounts/{f}.limits.json")), &serde_json::to_vec_pretty(l).expect("serialisable"), 0o644)
    }

    pub fn limits(&self, f: &Fpr) -> Limits {
        fs::read(self.p(&format!("accounts/{f}.limits.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Limits and usage of an account at `now`: stored bytes and messages
    /// (counted from the store, so never out of step with it) and distinct
    /// recipients of the UTC day.
    pub fn account_status(&self, f: &Fpr, now: i64) -> Result<protocol::AccountStatus, StoreError> {
        let l = self.limits(f);
        let (bytes, messages) = self.usage(f)?;
        Ok(protocol::AccountStatus {
            fpr: Some(f.clone()),
            bytes,
            messages,
            recipients_today: self.recipients_today(f, now)?.len() as u64,
            max_bytes: l.max_bytes,
            max_messages: l.max_messages,
            max_recipients_per_day: l.max_recipients_per_day,
        })
    }

    /// Bytes and messages an account stores now. Read from a cache,
    /// `accounts/<FPR>.usage`, kept under the account's lock by uploads and
    /// unsends; retention drops it for the accounts it touched, and a
    /// missing or unreadable cache is recounted from the store (one stat
    /// per message). Without the cache every upload and every SMTP
    /// transaction paid that recount: quadratic in the account's size.
    fn usage(&self, f: &Fpr) -> io::Result<(u64, u64)> {
        let cache = self.p(&format!("accounts/{f}.usage"));
        if let Some(u) = fs::read_to_string(&cache).ok().and_then(|t| {
            let (b, m) = t.trim().split_once(' ')?;
            Some((b.parse().ok()?, m.parse().ok()?))
        }) {
            return Ok(u);
        }
        let u = self.count_usage(f)?;
        self.write_usage(f, u)?;
        Ok(u)
    }

    /// Soft state: not fsync'd; after a crash it is recounted or, at
    /// worst, off by the last change until retention's next pass.
    fn write_usage(&self, f: &Fpr, (bytes, messages): (u64, u64)) -> io::Result<()> {
        fsutil::write_replace(&self.p(&format!("accounts/{f}.usage")), format!("{bytes} {messages}\n").as_bytes())
    }

    /// Change the cached usage; the caller holds the account's lock.
    fn adjust_usage(&self, f: &Fpr, bytes: i64, messages: i64) -> io::Result<()> {
        let (b, m) = self.usage(f)?;
        self.write_usage(f, (b.saturating_add_signed(bytes), m.saturating_add_signed(messages)))
    }

    /// Drop the cache (it is recounted when next needed).
    fn forget_usage(&self, f: &Fpr) -> io::Result<()> {
        let _account = self.lock(&format!("account-{f}"))?;
        match fs::remove_file(self.p(&format!("accounts/{f}.usage"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Count an account's usage from the store itself.
    fn count_usage(&self, f: &Fpr) -> io::Result<(u64, u64)> {
        let (mut bytes, mut messages) = (0, 0);
        if let Ok(rd) = fs::read_dir(self.p(&format!("sent/{f}"))) {
            for e in rd {
                let name = e?.file_name();
                let Some(id) = name.to_str().filter(|s| protocol::is_valid_id(s)) else { continue };
                if let Ok(m) = fs::metadata(self.p(&format!("messages/{id}"))) {
                    bytes += m.len();
                    messages += 1;
                }
            }
        }
        Ok((bytes, messages))
    }

    fn recipients_today(&self, f: &Fpr, now: i64) -> io::Result<std::collections::BTreeSet<String>> {
        match fs::read_to_string(self.p(&format!("rcptlog/{f}/{}", utc_day(now)))) {
            Ok(t) => Ok(t.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e),
        }
    }

    fn log_recipients(&self, f: &Fpr, now: i64, new: &[Fpr]) -> io::Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let dir = self.p(&format!("rcptlog/{f}"));
        fs::create_dir_all(&dir)?;
        let mut file = OpenOptions::new().create(true).append(true).open(dir.join(utc_day(now)))?;
        let text: String = new.iter().map(|r| format!("{r}\n")).collect();
        file.write_all(text.as_bytes())?;
        file.sync_all()
    }

    pub fn remove_account(&self, f: &Fpr) -> io::Result<bool> {
        let _ = fs::remove_file(self.p(&format!("accounts/{f}.usage")));
        match fs::remove_file(self.p(&format!("accounts/{f}.pgp"))) {
            Ok(()) => {
                fsync_dir(&self.p("accounts"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn accounts(&self) -> io::Result<Vec<Cert>> {
        let mut v = Vec::new();
        for e in fs::read_dir(self.p("accounts"))? {
            let p = e?.path();
            // Only `<FPR>.pgp`: not limits files, not leftovers of a write
            // a crash cut short.
            if p.extension().and_then(|x| x.to_str()) != Some("pgp") || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            if let Some(c) = fs::read(&p).ok().and_then(|b| pgp::parse_certs(&b).ok()).and_then(|c| c.into_iter().next()) {
                v.push(c);
            }
        }
        Ok(v)
    }

    fn read_cert(&self, rel: &str) -> Option<Cert> {
        let b = fs::read(self.p(rel)).ok()?;
        pgp::parse_certs(&b).ok()?.into_iter().next()
    }

    /// The certificate of an account, if `f` is one.
    pub fn account(&self, f: &Fpr) -> Option<Cert> {
        self.read_cert(&format!("accounts/{f}.pgp"))
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

    // ---- locking --------------------------------------------------------

    fn lock(&self, name: &str) -> io::Result<File> {
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(self.p(&format!("locks/{name}")))?;
        f.lock()?;
        Ok(f)
    }

    // ---- messages -------------------------------------------------------

    fn read_meta(&self, id: &str) -> Result<Option<Meta>, StoreError> {
        match fs::read(self.p(&format!("meta/{id}.json"))) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|_| StoreError::Corrupt(format!("meta/{id}.json"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write_meta(&self, m: &Meta) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(m).expect("serialisable");
        fsutil::write_atomic(&self.p(&format!("meta/{}.json", m.id)), &bytes, 0o644)
    }

    /// Create an empty index file durably (idempotent).
    fn mark(&self, dir: &str, id: &str) -> io::Result<()> {
        let d = self.p(dir);
        let p = d.join(id);
        if p.exists() {
            return Ok(());
        }
        fs::create_dir_all(&d)?;
        File::create(&p)?.sync_all()?;
        fsync_dir(&d)
    }

    fn unmark(&self, dir: &str, id: &str) -> io::Result<()> {
        match fs::remove_file(self.p(dir).join(id)) {
            Ok(()) => fsync_dir(&self.p(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Store an upload. The body is streamed to disk while hashed; nothing is
    /// visible until the bytes, then the state, then the indexes are durable.
    /// Returns the status and whether it was newly created.
    pub fn put(
        &self,
        sender: &Fpr,
        id: &str,
        recipients: &[Fpr],
        body: &mut dyn Read,
        limit: u64,
        now: i64,
    ) -> Result<(MessageStatus, bool), StoreError> {
        debug_assert!(protocol::is_valid_id(id));
        let tmp = self.p("tmp").join(fsutil::unique_name("up."));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = body.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > limit {
                    return Err(StoreError::TooLarge(limit));
                }
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n])?;
            }
            let got = hex::encode(hasher.finalize());
            if got != id {
                return Err(StoreError::DigestMismatch { got, want: id.to_string() });
            }
            f.sync_all()?;
            Ok(size)
        })();
        let size = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Limits are checked under the account's lock, with the real size,
        // so concurrent uploads cannot together overshoot them.
        let _account = self.lock(&format!("account-{sender}"))?;
        let new_today = match self.check_limits(sender, id, size, recipients, now) {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let _lock = self.lock(id)?;
        let (meta, created) = match self.read_meta(id)? {
            Some(mut m) => {
                let _ = fs::remove_file(&tmp);
                if &m.sender != sender {
                    return Err(StoreError::Conflict);
                }
                for r in recipients {
                    if m.recipient(r).is_none() {
                        m.recipients.push(RecipientMeta { fpr: r.clone(), state: DeliveryState::Stored, at: now, devices: vec![] });
                    }
                }
                self.write_meta(&m)?;
                (m, false)
            }
            None => {
                fs::rename(&tmp, self.p(&format!("messages/{id}")))?;
                fsync_dir(&self.p("messages"))?;
                let m = Meta {
                    id: id.to_string(),
                    sender: sender.clone(),
                    size,
                    stored: now,
                    recipients: recipients
                        .iter()
                        .map(|r| RecipientMeta { fpr: r.clone(), state: DeliveryState::Stored, at: now, devices: vec![] })
                        .collect(),
                };
                self.write_meta(&m)?;
                self.adjust_usage(sender, size as i64, 1)?;
                (m, true)
            }
        };
        self.log_recipients(sender, now, &new_today)?;
        // Indexes last (and again on a retried upload, which repairs a crash
        // between the state write and here).
        self.mark(&format!("sent/{sender}"), id)?;
        for r in meta.recipients.iter().filter(|r| r.state.is_pending()) {
            self.mark(&format!("inbox/{}", r.fpr), id)?;
        }
        Ok((meta.status(), created))
    }

    /// Check an upload against the account's limits; returns the recipients
    /// that are new today (to be logged once the upload is stored).
    fn check_limits(&self, sender: &Fpr, id: &str, size: u64, recipients: &[Fpr], now: i64) -> Result<Vec<Fpr>, StoreError> {
        let l = self.limits(sender);
        let (bytes, messages) = self.usage(sender)?;
        let already = self.p(&format!("messages/{id}")).exists();
        if !already && bytes + size > l.max_bytes {
            return Err(StoreError::QuotaExceeded(format!(
                "the account would hold {} bytes, over its quota of {}; unsend old messages or wait until they are fetched",
                bytes + size,
                l.max_bytes
            )));
        }
        if !already && messages + 1 > l.max_messages {
            return Err(StoreError::QuotaExceeded(format!("the account holds {messages} messages, its quota")));
        }
        let today = self.recipients_today(sender, now)?;
        let new: Vec<Fpr> = recipients.iter().filter(|r| !today.contains(r.as_str())).cloned().collect();
        let total = (today.len() + new.len()) as u64;
        if total > l.max_recipients_per_day {
            return Err(StoreError::RateLimited(format!(
                "this would make {total} distinct recipients today, over the limit of {}; try again tomorrow (UTC)",
                l.max_recipients_per_day
            )));
        }
        Ok(new)
    }

    /// Messages for `recipient` (optionally only from `senders`): pending
    /// ones, and for a named device also those other devices retrieved.
    pub fn poll(&self, recipient: &Fpr, senders: Option<&[Fpr]>, device: Option<&str>) -> Result<Vec<PollItem>, StoreError> {
        let dir = self.p(&format!("inbox/{recipient}"));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for e in rd {
            let name = e?.file_name();
            let Some(id) = name.to_str().filter(|s| protocol::is_valid_id(s)) else { continue };
            let Some(m) = self.read_meta(id)? else { continue };
            if senders.is_some_and(|s| !s.contains(&m.sender)) {
                continue;
            }
            let wanted = m.recipient(recipient).is_some_and(|r| {
                r.state.is_pending()
                    || (r.state == DeliveryState::Retrieved && device.is_some_and(|d| !r.devices.iter().any(|x| x == d)))
            });
            if wanted {
                out.push(PollItem {
                    id: m.id.clone(),
                    sender: m.sender.clone(),
                    recipient: recipient.clone(),
                    size: m.size,
                    stored: stubmail::time::rfc3339(m.stored),
                });
            }
        }
        out.sort_by(|a, b| a.stored.cmp(&b.stored).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Open a message for a recipient. Unknown ids and ids the requester is
    /// not a recipient of are the same `NotFound`.
    pub fn open_for(&self, recipient: &Fpr, id: &str) -> Result<(File, u64), StoreError> {
        let m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        match m.recipient(recipient) {
            Some(r) if r.state.is_pending() || r.state == DeliveryState::Retrieved => {}
            _ => return Err(StoreError::NotFound),
        }
        let f = File::open(self.p(&format!("messages/{id}"))).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound,
            _ => e.into(),
        })?;
        Ok((f, m.size))
    }

    /// A recipient (one of its devices) confirms durable delivery.
    /// Idempotent. Without a device the message leaves the recipient's
    /// index; with one, it stays listed for the recipient's other devices.
    pub fn ack(&self, recipient: &Fpr, id: &str, device: Option<&str>, now: i64) -> Result<MessageStatus, StoreError> {
        let _lock = self.lock(id)?;
        let mut m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        let r = m.recipients.iter_mut().find(|r| &r.fpr == recipient).ok_or(StoreError::NotFound)?;
        let mut changed = false;
        if r.state != DeliveryState::Retrieved {
            // Also from `unsent`: a recipient that fetched before the unsend
            // has the message, and the sender's status must say so.
            r.state = DeliveryState::Retrieved;
            r.at = now;
            changed = true;
        }
        if let Some(d) = device.filter(|d| !r.devices.iter().any(|x| x == d)) {
            r.devices.push(d.to_string());
            changed = true;
        }
        if changed {
            self.write_meta(&m)?;
        }
        if device.is_none() {
            self.unmark(&format!("inbox/{recipient}"), id)?;
        } else if changed {
            self.touch_inbox(recipient);
        }
        // Deliberately not filtered: the ack is the recipient's view, the
        // sender's addresses stay private.
        let mut s = m.status();
        s.recipients.retain(|r| &r.fpr == recipient);
        Ok(s)
    }

    /// The sender's view of one message.
    pub fn status(&self, sender: &Fpr, id: &str) -> Result<MessageStatus, StoreError> {
        let m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        if &m.sender != sender {
            return Err(StoreError::NotFound);
        }
        Ok(m.status())
    }

    /// Every message of a sender.
    pub fn list(&self, sender: &Fpr) -> Result<Vec<MessageStatus>, StoreError> {
        let dir = self.p(&format!("sent/{sender}"));
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd {
                let name = e?.file_name();
                let Some(id) = name.to_str().filter(|s| protocol::is_valid_id(s)) else { continue };
                if let Some(m) = self.read_meta(id)? {
                    out.push(m.status());
                }
            }
        }
        out.sort_by(|a, b| a.stored.cmp(&b.stored).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Withdraw a message from every recipient who has not retrieved it. If
    /// nobody retrieved it, its bytes are deleted.
    pub fn unsend(&self, sender: &Fpr, id: &str, now: i64) -> Result<MessageStatus, StoreError> {
        // Account, then message: the order uploads take them in.
        let _account = self.lock(&format!("account-{sender}"))?;
        let _lock = self.lock(id)?;
        let mut m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        if &m.sender != sender {
            return Err(StoreError::NotFound);
        }
        for r in m.recipients.iter_mut().filter(|r| r.state.is_pending()) {
            r.state = DeliveryState::Unsent;
            r.at = now;
        }
        self.write_meta(&m)?;
        for r in &m.recipients {
            self.unmark(&format!("inbox/{}", r.fpr), id)?;
        }
        if !m.recipients.iter().any(|r| r.state == DeliveryState::Retrieved) {
            match fs::remove_file(self.p(&format!("messages/{id}"))) {
                Ok(()) => {
                    fsync_dir(&self.p("messages"))?;
                    self.adjust_usage(sender, -(m.size as i64), -1)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(m.status())
    }
}

/// How long the outbox keeps things (docs/OPERATING.md, "Retention").
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// A message waits this long for its recipients; then those who have
    /// not retrieved it see it `expired`.
    pub pending_secs: i64,
    /// Once no recipient is pending, the bytes stay this long (so every
    /// device of a recipient can fetch them), then they are deleted.
    pub keep_secs: i64,
    /// The delivery status stays this long after that, for the sender.
    pub status_secs: i64,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: i64 = 86400;
        Retention { pending_secs: 30 * DAY, keep_secs: 7 * DAY, status_secs: 90 * DAY }
    }
}

/// What one expiry pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub recipients_expired: usize,
    pub messages_deleted: usize,
    pub statuses_dropped: usize,
}

impl Store {
    /// Apply the retention policy at time `now`. Safe to run from several
    /// processes at once (each message is changed under its lock).
    pub fn expire(&self, now: i64, r: Retention) -> Result<Expired, StoreError> {
        let mut out = Expired::default();
        let mut touched = std::collections::BTreeSet::new();
        self.sweep(now)?;
        for e in fs::read_dir(self.p("meta"))? {
            let name = e?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).filter(|i| protocol::is_valid_id(i)) else {
                continue;
            };
            let _lock = self.lock(id)?;
            let Some(mut m) = self.read_meta(id)? else { continue };
            let mut changed = false;
            if now - m.stored > r.pending_secs {
                for rc in m.recipients.iter_mut().filter(|rc| rc.state.is_pending()) {
                    rc.state = DeliveryState::Expired;
                    rc.at = now;
                    out.recipients_expired += 1;
                    changed = true;
                }
            }
            if changed {
                self.write_meta(&m)?;
            }
            if m.recipients.iter().any(|rc| rc.state.is_pending()) {
                continue;
            }
            let settled = m.recipients.iter().map(|rc| rc.at).max().unwrap_or(m.stored);
            if now - settled > r.keep_secs {
                for rc in &m.recipients {
                    self.unmark(&format!("inbox/{}", rc.fpr), id)?;
                }
                match fs::remove_file(self.p(&format!("messages/{id}"))) {
                    Ok(()) => {
                        fsync_dir(&self.p("messages"))?;
                        out.messages_deleted += 1;
                        touched.insert(m.sender.clone());
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if now - settled > r.keep_secs + r.status_secs {
                self.unmark(&format!("sent/{}", m.sender), id)?;
                fs::remove_file(self.p(&format!("meta/{id}.json")))?;
                fsync_dir(&self.p("meta"))?;
                let _ = fs::remove_file(self.p(&format!("locks/{id}")));
                out.statuses_dropped += 1;
            }
        }
        // Not adjusted message by message: that would take an account's
        // lock under a message's, the reverse of uploads. Recounted instead.
        for f in touched {
            self.forget_usage(&f)?;
        }
        Ok(out)
    }
}

impl Store {
    /// Remove what crashed uploads left behind: temporary files, and stored
    /// bytes that never got their state (the crash fell between the two;
    /// the uploader was never told 201 and retries). Only things a day old,
    /// so nothing in progress is touched.
    fn sweep(&self, now: i64) -> io::Result<()> {
        let old = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64) < now - 86400)
        };
        for e in fs::read_dir(self.p("tmp"))?.flatten() {
            if old(&e.path()) {
                let _ = fs::remove_file(e.path());
            }
        }
        for e in fs::read_dir(self.p("messages"))?.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().filter(|i| protocol::is_valid_id(i)) else { continue };
            if !self.p(&format!("meta/{id}.json")).exists() && old(&e.path()) {
                let _lock = self.lock(id)?;
                if !self.p(&format!("meta/{id}.json")).exists() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

impl stubmail::auth::NonceStore for Store {
    /// `nonces/<FPR>/<window>/<nonce>`, where a window is NONCE_MEMORY/2
    /// seconds of the request's (signed, checked) timestamp: a replay
    /// carries the same timestamp, so it lands in the same window. Whole
    /// windows are dropped once no acceptable timestamp can fall in them —
    /// pruning costs a listing of a few directories, not a stat per nonce
    /// (which, under load, was the outbox's largest cost).
    fn remember(&self, fpr: &Fpr, nonce: &str, ts: i64) -> io::Result<bool> {
        let span = (protocol::NONCE_MEMORY / 2).max(1);
        let window = ts.div_euclid(span);
        let root = self.p(&format!("nonces/{fpr}"));
        let dir = root.join(window.to_string());
        fs::create_dir_all(&dir)?;
        match OpenOptions::new().write(true).create_new(true).open(dir.join(nonce)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        if rand::random::<u8>() < 8 {
            // A window is over when its last second is more than the skew
            // window in the past: any request from it is refused as stale.
            let now = stubmail::time::unix_now();
            for e in fs::read_dir(&root)?.flatten() {
                let old = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()).is_some_and(|w| (w + 1) * span < now - protocol::MAX_CLOCK_SKEW);
                // Leftovers of the old flat layout (plain nonce files) go too.
                let flat = e.file_type().is_ok_and(|t| t.is_file());
                if old {
                    let _ = fs::remove_dir_all(e.path());
                } else if flat {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod nonce_tests {
    use super::*;
    use stubmail::auth::NonceStore;

    #[test]
    fn replays_are_caught_in_their_window_and_old_windows_go() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let f = Fpr::parse(&"A".repeat(40)).unwrap();
        let now = stubmail::time::unix_now();
        let n = "0123456789abcdef0123456789abcdef";
        assert!(s.remember(&f, n, now).unwrap());
        assert!(!s.remember(&f, n, now).unwrap(), "a replay");
        // An old window (no request from it is acceptable any more).
        let old = (now - 4 * protocol::NONCE_MEMORY).div_euclid(protocol::NONCE_MEMORY / 2);
        std::fs::create_dir_all(d.path().join(format!("nonces/{f}/{old}"))).unwrap();
        for i in 0..2000 {
            s.remember(&f, &format!("{i:032x}"), now).unwrap();
        }
        assert!(!d.path().join(format!("nonces/{f}/{old}")).exists(), "pruned");
        assert!(!s.remember(&f, n, now).unwrap(), "the current window is kept");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fpr(c: char) -> Fpr {
        Fpr::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn id_of(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn put_poll_fetch_ack_status() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let (a, b, c) = (fpr('A'), fpr('B'), fpr('C'));
        let body = b"ciphertext".to_vec();
        let id = id_of(&body);
        let (st, created) = s.put(&a, &id, &[b.clone(), c.clone()], &mut &body[..], 100, 1000).unwrap();
        assert!(created);
        assert_eq!(st.recipients.len(), 2);
        // Idempotent retry.
        let (_, created) = s.put(&a, &id, std::slice::from_ref(&b), &mut &body[..], 100, 1001).unwrap();
        assert!(!created);
        assert_eq!(s.poll(&b, None, None).unwrap().len(), 1);
        assert_eq!(s.poll(&b, Some(std::slice::from_ref(&c)), None).unwrap().len(), 0);
        assert_eq!(s.poll(&a, None, None).unwrap().len(), 0);
        let (mut f, n) = s.open_for(&b, &id).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!((got, n), (body.clone(), body.len() as u64));
        assert!(matches!(s.open_for(&a, &id), Err(StoreError::NotFound)));
        s.ack(&b, &id, None, 1002).unwrap();
        s.ack(&b, &id, None, 1003).unwrap();
        assert!(s.poll(&b, None, None).unwrap().is_empty());
        let st = s.status(&a, &id).unwrap();
        assert_eq!(st.recipients.iter().find(|r| r.fpr == b).unwrap().state, DeliveryState::Retrieved);
        assert!(matches!(s.status(&b, &id), Err(StoreError::NotFound)));
        assert_eq!(s.list(&a).unwrap().len(), 1);
        // Unsend: C has not retrieved it; B keeps it.
        let st = s.unsend(&a, &id, 1004).unwrap();
        assert_eq!(st.recipients.iter().find(|r| r.fpr == c).unwrap().state, DeliveryState::Unsent);
        assert!(s.poll(&c, None, None).unwrap().is_empty());
        assert!(s.open_for(&c, &id).is_err());
    }

    #[test]
    fn cached_usage_follows_uploads_unsends_and_retention() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let a = fpr('A');
        let check = |s: &Store| assert_eq!(s.usage(&a).unwrap(), s.count_usage(&a).unwrap());
        let bodies: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        for b in &bodies {
            s.put(&a, &id_of(b), &[fpr('B')], &mut &b[..], 1 << 20, 100).unwrap();
            check(&s);
        }
        // A retried upload does not count twice.
        s.put(&a, &id_of(&bodies[0]), &[fpr('B')], &mut &bodies[0][..], 1 << 20, 100).unwrap();
        assert_eq!(s.usage(&a).unwrap(), (60, 5));
        s.unsend(&a, &id_of(&bodies[1]), 101).unwrap();
        check(&s);
        s.ack(&fpr('B'), &id_of(&bodies[2]), None, 101).unwrap();
        let r = Retention { pending_secs: 1000, keep_secs: 10, status_secs: 1000 };
        assert_eq!(s.expire(200, r).unwrap().messages_deleted, 1);
        check(&s);
        assert_eq!(s.usage(&a).unwrap(), (60 - 11 - 12, 3));
        // A lost or garbled cache is recounted.
        std::fs::write(d.path().join(format!("accounts/{a}.usage")), "garbage").unwrap();
        check(&s);
    }

    #[test]
    fn quotas_and_daily_recipients() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.set_limits(&fpr('A'), &Limits { max_bytes: 25, max_messages: 2, max_recipients_per_day: 2 }).unwrap();
        let m = |b: &[u8]| (id_of(b), b.to_vec());
        let (id1, b1) = m(b"0123456789");
        s.put(&fpr('A'), &id1, &[fpr('B')], &mut &b1[..], 100, 86400).unwrap();
        // A third distinct recipient today: refused; the same two: fine.
        let (id2, b2) = m(b"abcdefghij");
        assert!(matches!(s.put(&fpr('A'), &id2, &[fpr('C'), fpr('D')], &mut &b2[..], 100, 86401), Err(StoreError::RateLimited(_))));
        s.put(&fpr('A'), &id2, &[fpr('B'), fpr('C')], &mut &b2[..], 100, 86402).unwrap();
        // Over the byte quota, and the message count.
        let (id3, b3) = m(b"klmnopqrst");
        assert!(matches!(s.put(&fpr('A'), &id3, &[fpr('B')], &mut &b3[..], 100, 86403), Err(StoreError::QuotaExceeded(_))));
        assert!(!d.path().join("messages").join(&id3).exists());
        let st = s.account_status(&fpr('A'), 86404).unwrap();
        assert_eq!((st.bytes, st.messages, st.recipients_today), (20, 2, 2));
        // A new day, and space freed by unsend: accepted again.
        s.unsend(&fpr('A'), &id1, 86405).unwrap();
        s.put(&fpr('A'), &id3, &[fpr('D')], &mut &b3[..], 100, 2 * 86400).unwrap();
        // Re-uploading what is already stored never counts twice.
        s.put(&fpr('A'), &id3, &[fpr('D')], &mut &b3[..], 100, 2 * 86400).unwrap();
    }

    #[test]
    fn retention_expires_deletes_and_forgets() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let r = Retention { pending_secs: 100, keep_secs: 10, status_secs: 50 };
        let body = b"m".to_vec();
        let id = id_of(&body);
        s.put(&fpr('A'), &id, &[fpr('B'), fpr('C')], &mut &body[..], 10, 1000).unwrap();
        s.ack(&fpr('B'), &id, None, 1050).unwrap();
        assert_eq!(s.expire(1090, r).unwrap(), Expired::default(), "C still has time");
        assert_eq!(s.expire(1101, r).unwrap().recipients_expired, 1);
        let st = s.status(&fpr('A'), &id).unwrap();
        assert_eq!(st.recipients.iter().find(|x| x.fpr == fpr('C')).unwrap().state, DeliveryState::Expired);
        assert!(s.poll(&fpr('C'), None, None).unwrap().is_empty());
        assert!(s.open_for(&fpr('B'), &id).is_ok(), "kept a while after settling");
        assert_eq!(s.expire(1112, r).unwrap().messages_deleted, 1);
        assert!(s.open_for(&fpr('B'), &id).is_err());
        assert!(s.status(&fpr('A'), &id).is_ok(), "the status outlives the bytes");
        assert_eq!(s.expire(1162, r).unwrap().statuses_dropped, 1);
        assert!(s.status(&fpr('A'), &id).is_err());
        assert!(s.list(&fpr('A')).unwrap().is_empty());
    }

    #[test]
    fn every_device_gets_every_message() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let body = b"z".to_vec();
        let id = id_of(&body);
        s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 10, 1).unwrap();
        assert_eq!(s.poll(&fpr('B'), None, Some("laptop")).unwrap().len(), 1);
        s.ack(&fpr('B'), &id, Some("laptop"), 2).unwrap();
        assert!(s.poll(&fpr('B'), None, Some("laptop")).unwrap().is_empty());
        assert_eq!(s.poll(&fpr('B'), None, Some("desktop")).unwrap().len(), 1, "the other device still sees it");
        assert!(s.open_for(&fpr('B'), &id).is_ok());
        s.ack(&fpr('B'), &id, Some("desktop"), 3).unwrap();
        assert!(s.poll(&fpr('B'), None, Some("desktop")).unwrap().is_empty());
        assert_eq!(s.status(&fpr('A'), &id).unwrap().recipients[0].state, DeliveryState::Retrieved);
    }

    #[test]
    fn bad_uploads_store_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let body = b"x".repeat(1000);
        let id = id_of(&body);
        assert!(matches!(s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 999, 1), Err(StoreError::TooLarge(_))));
        let wrong = id_of(b"other");
        assert!(matches!(s.put(&fpr('A'), &wrong, &[fpr('B')], &mut &body[..], 9999, 1), Err(StoreError::DigestMismatch { .. })));
        for dir in ["messages", "meta", "tmp", "inbox"] {
            assert_eq!(fs::read_dir(d.path().join(dir)).unwrap().count(), 0, "{dir}");
        }
        // Another sender cannot take over an id.
        s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 9999, 1).unwrap();
        assert!(matches!(s.put(&fpr('C'), &id, &[fpr('B')], &mut &body[..], 9999, 1), Err(StoreError::Conflict)));
    }

    #[test]
    fn unsend_before_retrieval_deletes_bytes() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let body = b"y".to_vec();
        let id = id_of(&body);
        s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 10, 1).unwrap();
        assert!(matches!(s.unsend(&fpr('B'), &id, 2), Err(StoreError::NotFound)));
        s.unsend(&fpr('A'), &id, 2).unwrap();
        assert!(!d.path().join("messages").join(&id).exists());
    }
}
