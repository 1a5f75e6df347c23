//! What the outbox keeps, behind one interface with two backends:
//!
//! - [`files`]: a data directory of plain files (the default: a personal
//!   outbox, CGI behind Apache or nginx; no database to install);
//! - [`pg`]: PostgreSQL, for a provider's outbox run as several stateless
//!   `post_manager` instances behind a load balancer (docs/OPERATING.md).
//!
//! The handler and the UDP service talk only to [`Store`]. Every operation a
//! request makes is one call here, atomic in both backends: a reply is sent
//! after the call returns, so a `201` or `200` means the change is durable.
//! Each concern is one trait (accounts, certificates, messages, nonces,
//! retention, UDP soft state) so each backend keeps one file per concern.

use std::io::{self, Read};
use std::sync::Arc;

use stubmail::openpgp::Cert;
use stubmail::protocol::{AccountStatus, DeliveryState, Fpr, MessageStatus, PollItem};

use crate::udp::{Advert, CookieRecord, QueuedStub};

pub mod files;
pub mod migrate;
pub mod pg;

pub use files::Files;
pub use pg::Pg;

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
    #[error("a message has at most {0} recipients, counting those of earlier uploads of the same bytes")]
    TooManyRecipients(u64),
    #[error("storage: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt state {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Db(String),
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => e,
            e => io::Error::other(e.to_string()),
        }
    }
}

/// An account's limits (defaults if the operator set none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_messages: u64,
    pub max_recipients_per_day: u64,
    /// Recipients of one stored message, all uploads of it together (one
    /// request names at most 1,000; a list robot's account may be allowed
    /// more, added by further uploads of the same bytes).
    #[serde(default = "default_per_message")]
    pub max_recipients_per_message: u64,
    /// Uploads per minute (fixed one-minute windows): a burst beyond it
    /// waits (`429`; smtp2stub retries), it is not lost.
    #[serde(default = "default_uploads_per_minute")]
    pub max_uploads_per_minute: u64,
    /// Bytes of new messages per minute.
    #[serde(default = "default_upload_bytes_per_minute")]
    pub max_upload_bytes_per_minute: u64,
    /// Verified complaints (distinct recipients about distinct messages)
    /// in one UTC day that suspend the account from uploading.
    #[serde(default = "default_complaints_per_day")]
    pub max_complaints_per_day: u64,
}

fn default_per_message() -> u64 {
    stubmail::protocol::MAX_RECIPIENTS as u64
}

fn default_uploads_per_minute() -> u64 {
    300
}

fn default_upload_bytes_per_minute() -> u64 {
    1 << 30
}

fn default_complaints_per_day() -> u64 {
    10
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_messages: 10_000,
            max_recipients_per_day: 1_000,
            max_recipients_per_message: default_per_message(),
            max_uploads_per_minute: default_uploads_per_minute(),
            max_upload_bytes_per_minute: default_upload_bytes_per_minute(),
            max_complaints_per_day: default_complaints_per_day(),
        }
    }
}

/// An account's uploads in the current one-minute window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadRate {
    /// Unix time / 60 of the window.
    pub minute: i64,
    pub uploads: u64,
    pub bytes: u64,
}

impl UploadRate {
    /// The window after one more upload of `size` new bytes at `now`, or
    /// why it is refused.
    pub(crate) fn after(self, l: &Limits, size: u64, now: i64) -> Result<UploadRate, StoreError> {
        let minute = now.div_euclid(60);
        let cur = if self.minute == minute { self } else { UploadRate { minute, uploads: 0, bytes: 0 } };
        let next = UploadRate { minute, uploads: cur.uploads + 1, bytes: cur.bytes + size };
        if next.uploads > l.max_uploads_per_minute {
            return Err(StoreError::RateLimited(format!(
                "over {} uploads a minute for this account; try again in a minute",
                l.max_uploads_per_minute
            )));
        }
        if next.bytes > l.max_upload_bytes_per_minute && cur.uploads > 0 {
            // (One message alone may exceed it: the size limit bounds that.)
            return Err(StoreError::RateLimited(format!(
                "over {} bytes of uploads a minute for this account; try again in a minute",
                l.max_upload_bytes_per_minute
            )));
        }
        Ok(next)
    }
}

/// Why an account may not upload (issue #19): set by the complaints it
/// drew, or by the operator; lifted by the operator only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suspension {
    /// Unix time it began.
    pub since: i64,
    pub reason: String,
}

/// A recipient's verified complaint about a message it received.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Complaint {
    pub sender: Fpr,
    pub id: String,
    pub by: Fpr,
    pub at: i64,
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

/// A stored message's bytes, read from `start` on.
pub type MessageReader = Box<dyn Read + Send>;

/// When a recipient's list last changed, as a backend can tell it cheaply:
/// the UDP service answers from a cache while the stamp stays the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxStamp {
    pub value: u128,
    /// Whether a later change is sure to change the stamp (a file mtime in
    /// the current clock tick is not).
    pub exact: bool,
}

/// Who may upload, their limits and usage, and the outbox's own names.
pub trait Accounts {
    /// Register a local user who may upload (`new_url`: take the outbox URL
    /// its certificate binds as another name of this outbox).
    fn add_account_with(&self, cert: &Cert, new_url: bool) -> anyhow::Result<Fpr>;
    /// Register a local user; the URL its certificate binds must be one this
    /// outbox is known by (the first account's makes the first name).
    fn add_account(&self, cert: &Cert) -> anyhow::Result<Fpr> {
        self.add_account_with(cert, false)
    }
    /// [`Accounts::add_account`], taking the URL the certificate binds as
    /// another name of this outbox (`post_manager account add --new-url`).
    fn add_account_new_url(&self, cert: &Cert) -> anyhow::Result<Fpr> {
        self.add_account_with(cert, true)
    }
    /// Replace an account's certificate by the owner's newer one (same key)
    /// that may bind another outbox, without taking its URL as a name.
    fn update_account_cert(&self, cert: &Cert) -> anyhow::Result<()>;
    /// The base URLs this outbox is known by (signed requests name one).
    fn outbox_urls(&self) -> io::Result<Vec<String>>;
    fn set_limits(&self, f: &Fpr, l: &Limits) -> io::Result<()>;
    fn limits(&self, f: &Fpr) -> Limits;
    /// Limits and usage of an account at `now`.
    fn account_status(&self, f: &Fpr, now: i64) -> Result<AccountStatus, StoreError>;
    fn remove_account(&self, f: &Fpr) -> io::Result<bool>;
    fn accounts(&self) -> io::Result<Vec<Cert>>;
    /// The certificate of an account, if `f` is one (an error: the store
    /// cannot say).
    fn account(&self, f: &Fpr) -> io::Result<Option<Cert>>;
}

/// Recipients' certificates, remembered from their signed polls.
pub trait Certs {
    /// A certificate that may sign recipient requests for `f`.
    fn known_cert(&self, f: &Fpr) -> io::Result<Option<Cert>>;
    /// Keep a verified recipient's certificate, reduced; a revocation once
    /// seen sticks.
    fn remember_cert(&self, cert: &Cert) -> anyhow::Result<()>;
    /// If `presented` revokes a certificate kept here, store the
    /// revocation. Returns whether it did.
    fn take_revocation(&self, presented: &Cert) -> anyhow::Result<bool>;
}

/// Messages and their per-recipient delivery state.
pub trait Messages {
    /// Store an upload (streamed and hashed; nothing visible before it is
    /// durable). Returns the status and whether it was newly created.
    fn put(&self, sender: &Fpr, id: &str, recipients: &[Fpr], body: &mut dyn Read, limit: u64, now: i64)
    -> Result<(MessageStatus, bool), StoreError>;
    /// Messages for `recipient` (optionally only from `senders`): pending
    /// ones, and for a named device also those its other devices retrieved.
    fn poll(&self, recipient: &Fpr, senders: Option<&[Fpr]>, device: Option<&str>) -> Result<Vec<PollItem>, StoreError>;
    /// A message's bytes from `start` on, for one of its recipients, and its
    /// whole size. Unknown ids and ids the requester may not read are the
    /// same `NotFound`.
    fn open_for(&self, recipient: &Fpr, id: &str, start: u64) -> Result<(MessageReader, u64), StoreError>;
    /// The size of a message a recipient may read.
    fn size_for(&self, recipient: &Fpr, id: &str) -> Result<u64, StoreError>;
    /// A recipient (one of its devices) confirms durable delivery. Idempotent.
    fn ack(&self, recipient: &Fpr, id: &str, device: Option<&str>, now: i64) -> Result<MessageStatus, StoreError>;
    /// [`Messages::ack`] for several messages, made durable together (one
    /// flush, not one per message); `None` for an id that is not found for
    /// this recipient. Durable when it returns, as each single ack is.
    fn ack_many(&self, recipient: &Fpr, ids: &[String], device: Option<&str>, now: i64) -> Result<Vec<Option<MessageStatus>>, StoreError>;
    /// The sender's view of one message.
    fn status(&self, sender: &Fpr, id: &str) -> Result<MessageStatus, StoreError>;
    /// Every message of a sender.
    fn list(&self, sender: &Fpr) -> Result<Vec<MessageStatus>, StoreError>;
    /// Withdraw a message from every recipient who has not retrieved it.
    fn unsend(&self, sender: &Fpr, id: &str, now: i64) -> Result<MessageStatus, StoreError>;
    /// A recipient's delivery state of a message.
    fn recipient_state(&self, id: &str, recipient: &Fpr) -> Result<Option<DeliveryState>, StoreError>;
    /// A stub was sent: `stored` becomes `notified`.
    fn mark_notified(&self, id: &str, recipient: &Fpr, now: i64) -> Result<(), StoreError>;
    /// Has this outbox ever held mail for `recipient`?
    fn ever_had_mail(&self, recipient: &Fpr) -> io::Result<bool>;
    /// When a recipient's list last changed (None: it never had mail here).
    fn inbox_stamp(&self, recipient: &Fpr) -> Option<InboxStamp>;
}

/// Complaints about an account's mail and its suspension (issue #19).
pub trait Abuse {
    /// Record a complaint (its recipient was checked by the caller); false
    /// if that recipient had complained about that message before.
    fn record_complaint(&self, c: &Complaint) -> Result<bool, StoreError>;
    /// Complaints about `sender`: the distinct recipients who complained
    /// on the UTC day of `now` at or after `since` (one recipient, however
    /// many messages it reports, is one voice), and all complaints kept.
    fn complaint_counts(&self, sender: &Fpr, now: i64, since: i64) -> Result<(u64, u64), StoreError>;
    /// The latest complaints about `sender`, newest first (at most `n`).
    fn recent_complaints(&self, sender: &Fpr, n: usize) -> Result<Vec<Complaint>, StoreError>;
    fn suspension(&self, f: &Fpr) -> Result<Option<Suspension>, StoreError>;
    /// Suspend (Some) or resume (None) an account; a resume at `now` is
    /// remembered, so complaints before it do not suspend it again.
    fn set_suspension(&self, f: &Fpr, s: Option<&Suspension>, now: i64) -> Result<(), StoreError>;
    /// When the operator last resumed the account (0: never).
    fn resumed_at(&self, f: &Fpr) -> Result<i64, StoreError>;
}

/// Replay protection for signed requests.
pub trait Nonces {
    /// Record a nonce; false if it was seen before (a replay).
    fn remember_nonce(&self, fpr: &Fpr, nonce: &str, ts: i64) -> io::Result<bool>;
}

/// Retention and the sweep of what crashes left.
pub trait Housekeeping {
    /// Apply the retention policy at `now`. Safe to run from several
    /// processes at once.
    fn expire(&self, now: i64, r: Retention) -> Result<Expired, StoreError>;
}

/// The UDP service's soft state (docs/PROTOCOL.md §8): the running
/// service's advert, poll cookies, and stubs to send.
pub trait UdpState {
    /// The running UDP service, if any.
    fn udp_advert(&self) -> Option<Advert>;
    /// Announce (or, with None, withdraw) this process's UDP service; the
    /// service announces itself again every few seconds while it runs.
    fn set_udp_advert(&self, a: Option<&Advert>) -> io::Result<()>;
    /// Keep a freshly issued cookie; the previous one of the same recipient
    /// and device is revoked.
    fn issue_cookie(&self, id: &str, c: &CookieRecord) -> io::Result<()>;
    /// Cookies issued at or after `since_ns`. `Some((true, v))` is the whole
    /// set (cookies not in it are revoked); `Some((false, v))` only those
    /// new since the previous scan `mark`; None: nothing changed.
    fn scan_cookies(&self, since_ns: u64, mark: &mut u128) -> Option<(bool, Vec<(String, CookieRecord)>)>;
    /// Answer a counter: true if it is higher than any answered before for
    /// this cookie, by any process. Backends whose cookies are served by
    /// one process (the data directory) keep counters in that process's
    /// memory and return true.
    fn advance_cookie(&self, id: &str, counter: u64) -> bool;
    /// One cookie by id, for a backend that is not scanned (the UDP
    /// service bounds how often it asks).
    fn lookup_cookie(&self, _id: &str) -> Option<CookieRecord> {
        None
    }
    /// Queue a stub for the notifier, to the recipient's `k`-th endpoint.
    fn queue_stub(&self, q: &QueuedStub, k: usize) -> io::Result<()>;
    /// Stubs this notifier should send that it does not hold yet (by name):
    /// a backend shared by several instances hands each stub to one of them
    /// and hands it to another once that one stops renewing its claim.
    /// `mark` is the backend's note of what it saw at the last call.
    fn claim_stubs(&self, mark: &mut u128, held: &mut dyn FnMut(&str) -> bool) -> Vec<(String, QueuedStub)>;
    /// Keep holding the stubs this notifier holds (called every few seconds).
    fn renew_stubs(&self) {}
    /// A stub is done (delivered, expired, or unsendable).
    fn drop_stub(&self, name: &str);
}

/// Public lists' archives (`crate::archive`): each post once, by id.
pub trait Archive {
    /// Keep a post a list archived, with the list's signature over it;
    /// false if it was kept before (nothing changes).
    fn archive_put(&self, list: &Fpr, e: &crate::archive::Entry, post: &[u8], sig: &[u8]) -> Result<bool, StoreError>;
    /// Up to `n` entries, newest first, skipping the `skip` newest; and
    /// how many the list has archived.
    fn archive_page(&self, list: &Fpr, skip: usize, n: usize) -> Result<(Vec<crate::archive::Entry>, usize), StoreError>;
    /// One archived post and its signature.
    fn archive_get(&self, list: &Fpr, id: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError>;
}

/// Everything a backend does.
pub trait Backend: Accounts + Certs + Messages + Nonces + Housekeeping + UdpState + Abuse + Archive + Send + Sync + std::fmt::Debug {
    /// A line for logs: which store this is.
    fn describe(&self) -> String;
    /// Check that this process can use the store (write the data
    /// directory; reach the database), with an error naming the fix.
    fn check_ready(&self) -> io::Result<()>;
}

/// The outbox URLs an account's certificate binds that are not yet among
/// `urls` (this outbox's names), or why it may not be added: the first
/// account's URL makes the first name; any other needs the operator's word
/// (`new_url`), since an account binding another outbox's URL would make
/// requests signed for that outbox valid here.
pub(crate) fn names_to_add(cert: &Cert, urls: &[String], new_url: bool) -> anyhow::Result<Vec<String>> {
    let f = stubmail::pgp::fpr_of(cert);
    // Every URL any of its User IDs binds (the primary one first).
    let mut bound: Vec<String> = stubmail::pgp::outbox_of(cert).into_iter().chain(stubmail::pgp::outboxes_of(cert)).collect();
    bound.dedup();
    let mut new: Vec<String> = Vec::new();
    for raw in bound {
        let Some(url) = stubmail::protocol::outbox_id(&raw) else { continue };
        if urls.contains(&url) || new.contains(&url) {
            continue;
        }
        if !(urls.is_empty() && new.is_empty()) && !new_url {
            let known = if urls.is_empty() { new.join(", ") } else { urls.join(", ") };
            anyhow::bail!(
                "certificate {f} binds the outbox URL {url}, but this outbox is known as {known}. \
                 If {url} is another name of this outbox, run again with --new-url; \
                 an account binding another outbox's URL would make requests signed for that outbox valid here"
            );
        }
        new.push(url);
    }
    Ok(new)
}

impl Limits {
    /// Check an upload against these limits, given the account's usage, the
    /// message's size if it is new (None: already stored, it counts no
    /// more), and the distinct recipients the day would have with it.
    pub(crate) fn check(&self, (bytes, messages): (u64, u64), new_size: Option<u64>, recipients_today: u64) -> Result<(), StoreError> {
        if let Some(size) = new_size {
            if bytes + size > self.max_bytes {
                return Err(StoreError::QuotaExceeded(format!(
                    "the account would hold {} bytes, over its quota of {}; unsend old messages or wait until they are fetched",
                    bytes + size,
                    self.max_bytes
                )));
            }
            if messages + 1 > self.max_messages {
                return Err(StoreError::QuotaExceeded(format!("the account holds {messages} messages, its quota")));
            }
        }
        if recipients_today > self.max_recipients_per_day {
            return Err(StoreError::RateLimited(format!(
                "this would make {recipients_today} distinct recipients today, over the limit of {}; try again tomorrow (UTC)",
                self.max_recipients_per_day
            )));
        }
        Ok(())
    }
}

/// Whether `presented` carries a revocation of itself: checked before
/// anything is read (this runs for every certificate of every poll).
pub(crate) fn revokes_itself(presented: &Cert) -> bool {
    presented.primary_key().self_revocations().next().is_some() && stubmail::pgp::is_revoked(presented)
}

/// The outbox's store: a cheap handle on one backend.
#[derive(Clone, Debug)]
pub struct Store(Arc<dyn Backend>);

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Store {
    /// Open (creating the layout if needed) a data directory.
    pub fn open(root: &std::path::Path) -> io::Result<Store> {
        Ok(Store(Arc::new(Files::open(root)?)))
    }

    /// Open the database named by `--store`: a PostgreSQL URL
    /// (`postgres://…`, `postgresql://…`) or libpq `key=value` string.
    /// Anything else is refused (never taken as a directory's name).
    pub fn open_spec(spec: &str) -> anyhow::Result<Store> {
        if !pg::is_connection_string(spec) {
            anyhow::bail!(
                "--store takes a PostgreSQL connection string (postgres://USER:PASSWORD@HOST:PORT/DB); \
                 for a data directory use --data DIR"
            );
        }
        Ok(Store(Arc::new(Pg::connect(spec)?)))
    }

    pub fn from_backend(b: Arc<dyn Backend>) -> Store {
        Store(b)
    }
}

impl stubmail::auth::NonceStore for Store {
    fn remember(&self, fpr: &Fpr, nonce: &str, ts: i64) -> io::Result<bool> {
        self.remember_nonce(fpr, nonce, ts)
    }
}

/// The behaviour every backend must have (run by each backend's tests).
#[doc(hidden)]
pub mod contract;
