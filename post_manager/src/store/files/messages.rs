//! Messages and their delivery state: `messages/`, `meta/`, and the
//! `inbox/` and `sent/` indexes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stubmail::fsutil::{self, fsync_dir};
use stubmail::protocol::{self, DeliveryState, Fpr, MessageStatus, PollItem, RecipientStatus};

use super::{Files, StoreError};
use crate::store::{Accounts, InboxStamp, MessageReader, Messages};

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
    pub(super) fn recipient(&self, f: &Fpr) -> Option<&RecipientMeta> {
        self.recipients.iter().find(|r| &r.fpr == f)
    }
}


/// An mtime this close to now may hide a later change in the same clock
/// tick ("racy git"): a stamp from it is not exact.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

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
    fn ever_had_mail(&self, recipient: &Fpr) -> bool {
        self.p(&format!("inbox/{recipient}")).is_dir()
    }


    /// A recipient's delivery state of a message (None: no such message or
    /// not a recipient).
    fn recipient_state(&self, id: &str, recipient: &Fpr) -> Result<Option<DeliveryState>, StoreError> {
        Ok(self.read_meta(id)?.and_then(|m| m.recipient(recipient).map(|r| r.state)))
    }

    /// A stub was sent: `stored` becomes `notified`, so the sender sees it.
    fn mark_notified(&self, id: &str, recipient: &Fpr, now: i64) -> Result<(), StoreError> {
        let _lock = self.lock(id)?;
        let Some(mut m) = self.read_meta(id)? else { return Ok(()) };
        if let Some(r) = m.recipients.iter_mut().find(|r| &r.fpr == recipient && r.state == DeliveryState::Stored) {
            r.state = DeliveryState::Notified;
            r.at = now;
            self.write_meta(&m)?;
        }
        Ok(())
    }





    /// Store an upload. The body is streamed to disk while hashed; nothing is
    /// visible until the bytes, then the state, then the indexes are durable.
    /// Returns the status and whether it was newly created.
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
        let (meta, created) = match self.read_meta(id)? {
            Some(mut m) => {
                let _ = fs::remove_file(&tmp);
                if &m.sender != sender {
                    return Err(StoreError::Conflict);
                }
                // The recipient cap holds for the message, across re-uploads.
                let new = recipients.iter().filter(|r| m.recipient(r).is_none()).count();
                let cap = self.limits(sender).max_recipients_per_message;
                if (m.recipients.len() + new) as u64 > cap {
                    return Err(StoreError::TooManyRecipients(cap));
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
    /// Messages for `recipient` (optionally only from `senders`): pending
    /// ones, and for a named device also those other devices retrieved.
    fn poll(&self, recipient: &Fpr, senders: Option<&[Fpr]>, device: Option<&str>) -> Result<Vec<PollItem>, StoreError> {
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
        match m.recipient(recipient) {
            Some(r) if r.state.is_pending() || r.state == DeliveryState::Retrieved => Ok(m.size),
            _ => Err(StoreError::NotFound),
        }
    }

    /// A recipient (one of its devices) confirms durable delivery.
    /// Idempotent. Without a device the message leaves the recipient's
    /// index; with one, it stays listed for the recipient's other devices.
    fn ack(&self, recipient: &Fpr, id: &str, device: Option<&str>, now: i64) -> Result<MessageStatus, StoreError> {
        let _lock = self.lock(id)?;
        let mut m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        let r = m.recipients.iter_mut().find(|r| &r.fpr == recipient).ok_or(StoreError::NotFound)?;
        if matches!(r.state, DeliveryState::Unsent | DeliveryState::Expired) {
            // Withdrawn or expired for this recipient: gone, as far as it
            // can tell. An ack here would make it `retrieved` again and
            // open the bytes to it (SECURITY.md).
            return Err(StoreError::NotFound);
        }
        let mut changed = false;
        if r.state != DeliveryState::Retrieved {
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
    fn status(&self, sender: &Fpr, id: &str) -> Result<MessageStatus, StoreError> {
        let m = self.read_meta(id)?.ok_or(StoreError::NotFound)?;
        if &m.sender != sender {
            return Err(StoreError::NotFound);
        }
        Ok(m.status())
    }

    /// Every message of a sender.
    fn list(&self, sender: &Fpr) -> Result<Vec<MessageStatus>, StoreError> {
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
    fn unsend(&self, sender: &Fpr, id: &str, now: i64) -> Result<MessageStatus, StoreError> {
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

impl Files {
    /// Mark an index changed whose files did not change (a device's ack).
    pub(super) fn touch_inbox(&self, recipient: &Fpr) {
        let dir = self.p(&format!("inbox/{recipient}"));
        if let Ok(f) = File::open(&dir) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    pub(crate) fn read_meta(&self, id: &str) -> Result<Option<Meta>, StoreError> {
        match fs::read(self.p(&format!("meta/{id}.json"))) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|_| StoreError::Corrupt(format!("meta/{id}.json"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn write_meta(&self, m: &Meta) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(m).expect("serialisable");
        fsutil::write_atomic(&self.p(&format!("meta/{}.json", m.id)), &bytes, 0o600)
    }

    /// Create an empty index file durably (idempotent).
    pub(super) fn mark(&self, dir: &str, id: &str) -> io::Result<()> {
        let d = self.p(dir);
        let p = d.join(id);
        if p.exists() {
            return Ok(());
        }
        fs::create_dir_all(&d)?;
        File::create(&p)?.sync_all()?;
        fsync_dir(&d)
    }

    pub(super) fn unmark(&self, dir: &str, id: &str) -> io::Result<()> {
        match fs::remove_file(self.p(dir).join(id)) {
            Ok(()) => fsync_dir(&self.p(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}
