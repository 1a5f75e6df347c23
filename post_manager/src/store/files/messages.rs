//! Messages and their delivery state: `messages/`, `meta/`, `rcpt/`, and
//! the indexes `inbox/`, `listed/`, `devices/` and `sent/`.
//!
//! Each recipient's state is a record of the message's table
//! (`rcpt/<id>.tab`, see `rcpt.rs`), so an ack rewrites 32 bytes in place
//! whatever the number of recipients;
//! a poll lists the recipient's own indexes (pending messages, and for a
//! device the messages its other devices retrieved and it has not), so an
//! idle poll does not grow with what the recipient already has.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stubmail::fsutil::{self, fsync_dir};
use stubmail::protocol::{self, DeliveryState, Fpr, MessageStatus, PollItem, RecipientStatus};

use super::{Files, StoreError};
use crate::store::{Accounts, InboxStamp, MessageReader, Messages};

/// A message, `meta/<id>.json` (its recipients' states are in `rcpt/<id>.tab`).
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
    /// Every recipient's state, in data directories of the first layout
    /// only (upgraded when opened: `layout.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<RecipientMeta>,
}

/// One recipient's delivery state of a message: a record of
/// `rcpt/<id>.tab` (`rcpt.rs`); JSON in data directories of the first two
/// layouts (upgraded when opened: `layout.rs`).
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

impl RecipientMeta {
    fn status(&self) -> RecipientStatus {
        RecipientStatus { fpr: self.fpr.clone(), state: self.state, at: stubmail::time::rfc3339(self.at) }
    }
}

impl Meta {
    /// The message's status with these recipients.
    pub fn status_with(&self, recipients: &[RecipientMeta]) -> MessageStatus {
        MessageStatus {
            id: self.id.clone(),
            sender: self.sender.clone(),
            size: self.size,
            stored: stubmail::time::rfc3339(self.stored),
            recipients: recipients.iter().map(RecipientMeta::status).collect(),
        }
    }
}

/// An mtime this close to now may hide a later change in the same clock
/// tick ("racy git"): a stamp from it is not exact.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest state file read (a first-layout meta file holds up to a
/// message's every recipient).
const MAX_STATE_FILE: u64 = 16 << 20;

/// More files than this made durable together: one `syncfs` instead of an
/// fsync each (a message for thousands of recipients is not thousands of
/// fsyncs).
const FSYNC_EACH_UP_TO: usize = 8;

impl Messages for Files {
    /// The mtime of the recipient's index directory (a message arrived, was
    /// acked, unsent or expired; a device's ack touches it).
    fn inbox_stamp(&self, recipient: &Fpr) -> Option<InboxStamp> {
        let m = fs::metadata(self.p(&format!("inbox/{recipient}"))).and_then(|m| m.modified()).ok()?;
        let since = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let exact = std::time::SystemTime::now().duration_since(m).is_ok_and(|d| d > RACY);
        Some(InboxStamp { value: since(m), exact })
    }

    /// Its index directory is made with its first message and kept.
    fn ever_had_mail(&self, recipient: &Fpr) -> io::Result<bool> {
        match fs::metadata(self.p(&format!("inbox/{recipient}"))) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn recipient_state(&self, id: &str, recipient: &Fpr) -> Result<Option<DeliveryState>, StoreError> {
        Ok(self.read_rcpt(id, recipient)?.map(|r| r.state))
    }

    /// A stub was sent: `stored` becomes `notified`, so the sender sees it.
    fn mark_notified(&self, id: &str, recipient: &Fpr, now: i64) -> Result<(), StoreError> {
        let _lock = self.lock(id)?;
        if let Some(mut r) = self.read_rcpt(id, recipient)?.filter(|r| r.state == DeliveryState::Stored) {
            r.state = DeliveryState::Notified;
            r.at = now;
            self.update_rcpt(id, &r)?;
        }
        Ok(())
    }

    /// Store an upload. The body is streamed to disk while hashed; nothing is
    /// visible until the bytes, then the state, then the indexes are durable.
    /// Returns the status (with the upload's recipients) and whether it was
    /// newly created.
    fn put(
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
        // From here on nothing is made durable file by file: the bytes
        // were fsync'd above, and everything else — the bytes' name, the
        // meta file, the recipients' states, the indexes, the day's
        // recipient log — by one `syncfs` before the answer (one device
        // flush instead of about fourteen, under the account's lock). A
        // crash before it leaves any subset of those; readers skip an
        // index entry without meta, state or bytes, and the client, which
        // got no answer, uploads again, which repairs what is missing.
        let stored = self.p(&format!("messages/{id}"));
        let (meta, created) = match self.read_meta(id)? {
            Some(m) => {
                if &m.sender != sender {
                    let _ = fs::remove_file(&tmp);
                    return Err(StoreError::Conflict);
                }
                if stored.exists() {
                    let _ = fs::remove_file(&tmp);
                } else {
                    // The meta file outlived the bytes' rename in a crash.
                    fs::rename(&tmp, &stored)?;
                }
                (m, false)
            }
            None => {
                fs::rename(&tmp, &stored)?;
                let m = Meta { id: id.to_string(), sender: sender.clone(), size, stored: now, recipients: vec![] };
                fsutil::write_replace(&self.p(&format!("meta/{id}.json")), &serde_json::to_vec(&m).expect("serialisable"))?;
                self.adjust_usage(sender, size as i64, 1)?;
                (m, true)
            }
        };
        // The recipient cap holds for the message, across re-uploads.
        let mut states = Vec::with_capacity(recipients.len());
        let mut new = Vec::new();
        for r in recipients {
            match self.read_rcpt(id, r)? {
                Some(s) => states.push(s),
                None => new.push(RecipientMeta { fpr: r.clone(), state: DeliveryState::Stored, at: now, devices: vec![] }),
            }
        }
        if !new.is_empty() {
            let cap = self.limits(sender).max_recipients_per_message;
            let had = if created { 0 } else { self.rcpt_count(id)? };
            if (had + new.len()) as u64 > cap {
                return Err(StoreError::TooManyRecipients(cap));
            }
        }
        // The new recipients' states, then the indexes of every pending
        // one (again on a retried upload, which repairs a crash before the
        // flush).
        self.add_rcpts(id, &new)?;
        states.extend(new);
        self.mark_soft(&format!("sent/{sender}"), id)?;
        for r in states.iter().filter(|r| r.state.is_pending()) {
            self.mark_soft(&format!("inbox/{}", r.fpr), id)?;
        }
        self.log_recipients(sender, now, &new_today)?;
        self.syncfs()?;
        Ok((meta.status_with(&states), created))
    }

    fn poll(&self, recipient: &Fpr, senders: Option<&[Fpr]>, device: Option<&str>) -> Result<Vec<PollItem>, StoreError> {
        let mut ids = list_ids(&self.p(&format!("inbox/{recipient}")))?;
        if let Some(d) = device {
            self.ensure_device(recipient, d)?;
            ids.extend(list_ids(&self.p(&format!("devices/{recipient}/{d}")))?);
            ids.sort();
            ids.dedup();
        }
        let mut out = Vec::new();
        for id in ids {
            let Some(m) = self.read_meta(&id)? else { continue };
            if senders.is_some_and(|s| !s.contains(&m.sender)) {
                continue;
            }
            // A damaged table costs its own message, not the recipient's
            // every other one.
            let r = match self.read_rcpt(&id, recipient) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(StoreError::Corrupt(what)) => {
                    report_damage(&what, &format!("message {id} is left out of polls until it is repaired (restore it from a backup)"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let wanted = r.state.is_pending()
                || (r.state == DeliveryState::Retrieved && device.is_some_and(|d| !r.devices.iter().any(|x| x == d)));
            if wanted && self.p(&format!("messages/{id}")).exists() {
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

    fn open_for(&self, recipient: &Fpr, id: &str, start: u64) -> Result<(MessageReader, u64), StoreError> {
        use std::io::Seek;
        let size = self.size_for(recipient, id)?;
        let mut f = File::open(self.p(&format!("messages/{id}"))).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound,
            _ => e.into(),
        })?;
        if start > 0 {
            f.seek(io::SeekFrom::Start(start))?;
        }
        Ok((Box::new(f), size))
    }

    fn size_for(&self, recipient: &Fpr, id: &str) -> Result<u64, StoreError> {
        let m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        match self.read_rcpt(id, recipient)? {
            Some(r) if r.state.is_pending() || r.state == DeliveryState::Retrieved => Ok(m.size),
            _ => Err(StoreError::NotFound),
        }
    }

    /// A recipient (one of its devices) confirms durable delivery.
    /// Idempotent. Without a device the message leaves the recipient's
    /// lists; with one, it stays offered to the recipient's other devices
    /// until each acks it.
    fn ack(&self, recipient: &Fpr, id: &str, device: Option<&str>, now: i64) -> Result<MessageStatus, StoreError> {
        let mut batch = AckBatch::default();
        let st = self.ack_soft(recipient, id, device, now, &mut batch)?;
        self.finish_acks(batch)?;
        Ok(st)
    }

    fn ack_many(&self, recipient: &Fpr, ids: &[String], device: Option<&str>, now: i64) -> Result<Vec<Option<MessageStatus>>, StoreError> {
        let mut batch = AckBatch::default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.ack_soft(recipient, id, device, now, &mut batch) {
                Ok(st) => out.push(Some(st)),
                Err(StoreError::NotFound) => out.push(None),
                // Nothing answered yet: the client acks again (idempotent).
                Err(e) => return Err(e),
            }
        }
        self.finish_acks(batch)?;
        Ok(out)
    }

    /// The sender's view of one message.
    fn status(&self, sender: &Fpr, id: &str) -> Result<MessageStatus, StoreError> {
        let m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        if &m.sender != sender {
            return Err(StoreError::NotFound);
        }
        match self.recipients_of(id) {
            Ok(rs) => Ok(m.status_with(&rs)),
            // Not "try again later": the damage stays until repaired.
            Err(StoreError::Corrupt(what)) => {
                report_damage(&what, &format!("message {id}'s recipients are not known until it is repaired (restore it from a backup)"));
                Ok(m.status_with(&[]))
            }
            Err(e) => Err(e),
        }
    }

    /// Every message of a sender.
    fn list(&self, sender: &Fpr) -> Result<Vec<MessageStatus>, StoreError> {
        let mut out = Vec::new();
        for id in list_ids(&self.p(&format!("sent/{sender}")))? {
            if let Some(m) = self.read_meta(&id)? {
                match self.recipients_of(&id) {
                    Ok(rs) => out.push(m.status_with(&rs)),
                    // Listed without recipients: the sender still sees it.
                    Err(StoreError::Corrupt(what)) => {
                        report_damage(&what, &format!("message {id}'s recipients are not known until it is repaired (restore it from a backup)"));
                        out.push(m.status_with(&[]));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|a, b| a.stored.cmp(&b.stored).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Withdraw a message from every recipient who has not retrieved it. If
    /// nobody retrieved it, its bytes are deleted.
    fn unsend(&self, sender: &Fpr, id: &str, now: i64) -> Result<MessageStatus, StoreError> {
        // Account, then message: the order uploads take them in.
        if !self.p(&format!("meta/{id}.json")).exists() {
            return Err(StoreError::NotFound);
        }
        let _account = self.lock(&format!("account-{sender}"))?;
        let _lock = self.lock(id)?;
        let m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        if &m.sender != sender {
            return Err(StoreError::NotFound);
        }
        let mut all = self.recipients_of(id)?;
        let mut written = Vec::new();
        for r in all.iter_mut().filter(|r| r.state.is_pending()) {
            r.state = DeliveryState::Unsent;
            r.at = now;
            written.extend(self.update_rcpt_soft(id, r)?);
        }
        self.make_durable(&written)?;
        for r in &all {
            self.unmark(&format!("inbox/{}", r.fpr), id)?;
        }
        if !all.iter().any(|r| r.state == DeliveryState::Retrieved) {
            match fs::remove_file(self.p(&format!("messages/{id}"))) {
                Ok(()) => {
                    fsync_dir(&self.p("messages"))?;
                    self.adjust_usage(sender, -(m.size as i64), -1)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(m.status_with(&all))
    }
}

/// Log a damaged file, once per file for as long as this process runs
/// (every poll would log it again otherwise).
fn report_damage(what: &str, consequence: &str) {
    static REPORTED: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
    let mut seen = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(Default::default);
    // Bounded: past this many, nothing more is logged.
    if seen.len() < 10_000 && seen.insert(what.to_string()) {
        tracing::error!("{what} is damaged: {consequence}");
    }
}

/// The message ids in an index directory (none if it does not exist).
pub(super) fn list_ids(dir: &std::path::Path) -> io::Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        if let Some(id) = e?.file_name().to_str().filter(|s| protocol::is_valid_id(s)) {
            out.push(id.to_string());
        }
    }
    Ok(out)
}

impl Files {
    /// Mark an index changed whose files did not change (a device's ack).
    pub(super) fn touch_inbox(&self, recipient: &Fpr) {
        let dir = self.p(&format!("inbox/{recipient}"));
        if let Ok(f) = File::open(&dir) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    pub(crate) fn read_meta(&self, id: &str) -> Result<Option<Meta>, StoreError> {
        match fsutil::read_bounded(&self.p(&format!("meta/{id}.json")), MAX_STATE_FILE) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|_| StoreError::Corrupt(format!("meta/{id}.json"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn write_meta(&self, m: &Meta) -> io::Result<()> {
        let bytes = serde_json::to_vec(m).expect("serialisable");
        fsutil::write_atomic(&self.p(&format!("meta/{}.json", m.id)), &bytes, 0o600)
    }

    /// An ack's changes, not yet durable: the recipient's new state and the
    /// index entries it adds are written, the entries it removes are noted
    /// (see [`Files::finish_acks`]).
    fn ack_soft(&self, recipient: &Fpr, id: &str, device: Option<&str>, now: i64, batch: &mut AckBatch) -> Result<MessageStatus, StoreError> {
        // No lock file for an id that names no message: a recipient could
        // otherwise leave one for every id it makes up.
        if !self.p(&format!("meta/{id}.json")).exists() {
            return Err(StoreError::NotFound);
        }
        let _lock = self.lock(id)?;
        let m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        let mut r = self.read_rcpt(id, recipient)?.ok_or(StoreError::NotFound)?;
        if matches!(r.state, DeliveryState::Unsent | DeliveryState::Expired) {
            // Withdrawn or expired for this recipient: gone, as far as it
            // can tell. An ack here would make it `retrieved` again and
            // open the bytes to it (SECURITY.md).
            return Err(StoreError::NotFound);
        }
        let was_pending = r.state.is_pending();
        let mut changed = false;
        if was_pending {
            r.state = DeliveryState::Retrieved;
            r.at = now;
            changed = true;
        }
        if let Some(d) = device.filter(|d| !r.devices.iter().any(|x| x == d)) {
            r.devices.push(d.to_string());
            changed = true;
        }
        if changed {
            batch.written.extend(self.update_rcpt_soft(id, &r)?);
        }
        match device {
            Some(d) => {
                self.ensure_device(recipient, d)?;
                if was_pending {
                    // Offered to the recipient's other devices.
                    batch.written.push(self.mark_soft(&format!("listed/{recipient}"), id)?);
                    for other in self.devices_of(recipient)?.into_iter().filter(|o| o != d && !r.devices.contains(o)) {
                        batch.written.push(self.mark_soft(&format!("devices/{recipient}/{other}"), id)?);
                    }
                }
                batch.unmark.push((format!("devices/{recipient}/{d}"), id.to_string()));
            }
            None => {
                batch.unmark.push((format!("listed/{recipient}"), id.to_string()));
                for other in self.devices_of(recipient)? {
                    batch.unmark.push((format!("devices/{recipient}/{other}"), id.to_string()));
                }
            }
        }
        batch.unmark.push((format!("inbox/{recipient}"), id.to_string()));
        batch.touched.push(recipient.clone());
        // The recipient's view only: the sender's other recipients stay private.
        Ok(m.status_with(std::slice::from_ref(&r)))
    }

    /// Make a batch of acks durable: first the new states and index entries
    /// (one flush for the batch), and only then the removals from the
    /// indexes — so a crash can never leave a pending message unlisted
    /// (its inbox entry gone, its `retrieved` state lost), which would hide
    /// it from the recipient's re-ack for good.
    fn finish_acks(&self, batch: AckBatch) -> io::Result<()> {
        self.make_durable(&batch.written)?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (dir, id) in &batch.unmark {
            let d = self.p(dir);
            match fs::remove_file(d.join(id)) {
                Ok(()) => {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if dirs.len() > FSYNC_EACH_UP_TO {
            self.syncfs()?;
        } else {
            for d in &dirs {
                fsync_dir(d)?;
            }
        }
        let mut touched = batch.touched;
        touched.sort();
        touched.dedup();
        for r in &touched {
            self.touch_inbox(r);
        }
        Ok(())
    }

    /// The devices of a recipient seen so far.
    pub(crate) fn devices_of(&self, recipient: &Fpr) -> io::Result<Vec<String>> {
        match fs::read_dir(self.p(&format!("devices/{recipient}"))) {
            Ok(rd) => Ok(rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|d| protocol::is_valid_device(d)).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// Register a device of a recipient the first time it is seen, offering
    /// it every message the recipient's other devices retrieved (once).
    fn ensure_device(&self, recipient: &Fpr, device: &str) -> io::Result<()> {
        let dir = self.p(&format!("devices/{recipient}/{device}"));
        if dir.is_dir() {
            return Ok(());
        }
        // Filled beside, then renamed into place: a device's list is whole.
        let tmp = self.p(&format!("devices/{recipient}/.{device}.{}", fsutil::unique_name("new")));
        fs::create_dir_all(&tmp)?;
        for id in list_ids(&self.p(&format!("listed/{recipient}")))? {
            File::create(tmp.join(&id))?;
        }
        match fs::rename(&tmp, &dir) {
            Ok(()) => {}
            // Another process registered it meanwhile.
            Err(_) if dir.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(e),
        }
        // Soft: a lost list is made again, from `listed/`, at the next poll.
        Ok(())
    }

    /// Create an empty index file, not yet durably (idempotent).
    pub(super) fn mark_soft(&self, dir: &str, id: &str) -> io::Result<Dirty> {
        let d = self.p(dir);
        let p = d.join(id);
        if !p.exists() {
            fs::create_dir_all(&d)?;
            File::create(&p)?;
        }
        Ok(Dirty::Entry(p))
    }

    /// Make these changes durable: an fsync each when few, else one
    /// `syncfs` of the whole file system.
    pub(super) fn make_durable(&self, changes: &[Dirty]) -> io::Result<()> {
        if changes.len() > FSYNC_EACH_UP_TO {
            return self.syncfs();
        }
        // Each file; for a new one, the directories up to two levels above
        // it too (they may be new: a recipient's first index, a message's
        // devices).
        let mut dirs: Vec<&std::path::Path> = Vec::new();
        let mut synced: Vec<&std::path::Path> = Vec::new();
        for c in changes {
            let (Dirty::Entry(f) | Dirty::Data(f)) = c;
            if synced.contains(&f.as_path()) {
                continue;
            }
            synced.push(f);
            match c {
                Dirty::Data(_) => File::open(f)?.sync_data()?,
                Dirty::Entry(_) => {
                    File::open(f)?.sync_all()?;
                    for d in f.ancestors().skip(1).take(2) {
                        if !dirs.contains(&d) {
                            dirs.push(d);
                        }
                    }
                }
            }
        }
        for d in dirs {
            fsync_dir(d)?;
        }
        Ok(())
    }

    /// Flush the whole file system the data directory is on (cheaper
    /// than an fsync per file past a few).
    fn syncfs(&self) -> io::Result<()> {
        let root = File::open(self.root())?;
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs on a descriptor this function owns.
        if unsafe { libc::syncfs(root.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn unmark(&self, dir: &str, id: &str) -> io::Result<()> {
        match fs::remove_file(self.p(dir).join(id)) {
            Ok(()) => fsync_dir(&self.p(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A change not yet durable.
pub(super) enum Dirty {
    /// A file made or replaced: its directory entry must reach the disk too.
    Entry(PathBuf),
    /// A file changed in place: its data only.
    Data(PathBuf),
}

/// The not-yet-durable part of one or more acks (see [`Files::ack_soft`]).
#[derive(Default)]
struct AckBatch {
    /// States and index entries written, to be made durable first.
    written: Vec<Dirty>,
    /// Index entries (directory, id) to remove once those are durable.
    unmark: Vec<(String, String)>,
    /// Recipients whose inbox directory's time is bumped (pollers watch it).
    touched: Vec<Fpr>,
}
