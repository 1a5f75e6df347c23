//! Messages, their bytes (`chunks`) and per-recipient state (`recipients`,
//! one row each), and the per-device lists (`devices`, `device_inbox`).
//!
//! What each operation costs, whatever the number of recipients and of
//! messages a recipient already has: an ack changes one recipient row (and
//! the recipient's other devices' rows); a poll reads the recipient's
//! pending rows and its device's own rows; an upload writes one row per
//! recipient, in one transaction (one commit, not one fsync per recipient).

use std::io::{self, Read, Seek, Write};

use postgres::GenericClient;
use sha2::{Digest, Sha256};
use stubmail::protocol::{self, DeliveryState, Fpr, MessageStatus, PollItem, RecipientStatus};

use super::accounts::{adjust_usage, limits_in, usage_in, utc_day};
use super::{io_err, state_code, state_of, Pg, CHUNK};
use crate::store::{InboxStamp, MessageReader, Messages, StoreError};

const RETRIEVED: i16 = 2;
const UNSENT: i16 = 3;

/// Read until `buf` is full or the body ends.
fn fill(body: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match body.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Note that these recipients' lists changed.
pub(super) fn bump(c: &mut impl GenericClient, fprs: &[String]) -> Result<(), StoreError> {
    if !fprs.is_empty() {
        c.execute(
            "INSERT INTO inboxes SELECT unnest($1::text[]), 1 ON CONFLICT (fpr) DO UPDATE SET version = inboxes.version + 1",
            &[&fprs],
        )?;
    }
    Ok(())
}

/// A message's status with every recipient (the sender's view).
fn status_in(c: &mut impl GenericClient, id: &str) -> Result<Option<MessageStatus>, StoreError> {
    let Some(m) = c.query_opt("SELECT sender, size, stored FROM messages WHERE id = $1", &[&id])? else { return Ok(None) };
    let rows = c.query("SELECT fpr, state, at FROM recipients WHERE id = $1 ORDER BY fpr", &[&id])?;
    let recipients = rows
        .iter()
        .map(|r| {
            Ok(RecipientStatus {
                fpr: fpr(r.get(0))?,
                state: state_of(r.get(1))?,
                at: stubmail::time::rfc3339(r.get(2)),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(MessageStatus {
        id: id.to_string(),
        sender: fpr(m.get(0))?,
        size: m.get::<_, i64>(1) as u64,
        stored: stubmail::time::rfc3339(m.get(2)),
        recipients,
    }))
}

fn fpr(s: &str) -> Result<Fpr, StoreError> {
    Fpr::parse(s).map_err(|_| StoreError::Corrupt(format!("fingerprint {s:?}")))
}

/// Register a device of a recipient the first time it is seen, offering it
/// every retrieved message the recipient's devices still see (once).
fn ensure_device(c: &mut impl GenericClient, recipient: &str, device: &str) -> Result<(), StoreError> {
    if c.query_opt("SELECT 1 FROM devices WHERE fpr = $1 AND device = $2", &[&recipient, &device])?.is_some() {
        return Ok(());
    }
    let new = c.execute("INSERT INTO devices VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&recipient, &device])?;
    if new == 1 {
        c.execute(
            "INSERT INTO device_inbox SELECT r.fpr, $2, r.id FROM recipients r JOIN messages m ON m.id = r.id
             WHERE r.fpr = $1 AND r.state = 2 AND r.listed AND m.has_bytes ON CONFLICT DO NOTHING",
            &[&recipient, &device],
        )?;
    }
    Ok(())
}

impl Messages for Pg {
    fn put(&self, sender: &Fpr, id: &str, recipients: &[Fpr], body: &mut dyn Read, limit: u64, now: i64)
    -> Result<(MessageStatus, bool), StoreError> {
        debug_assert!(protocol::is_valid_id(id));
        // The body goes to a local temporary file first, hashed on the way:
        // a slow or stalled client holds no database connection (a pool
        // of a few connections per instance must not be one client's).
        let mut staged = tempfile::tempfile()?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = fill(body, &mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                return Err(StoreError::TooLarge(limit));
            }
            hasher.update(&buf[..n]);
            staged.write_all(&buf[..n])?;
        }
        let got = hex::encode(hasher.finalize());
        if got != id {
            return Err(StoreError::DigestMismatch { got, want: id.to_string() });
        }
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        // Claim the id: a concurrent upload of the same bytes waits here
        // for this transaction to end.
        let created = tx.execute(
            "INSERT INTO messages (id, sender, size, stored, has_bytes) VALUES ($1, $2, 0, $3, false) ON CONFLICT (id) DO NOTHING",
            &[&id, &sender.as_str(), &now],
        )? == 1;
        if created {
            staged.seek(io::SeekFrom::Start(0))?;
            for seq in 0i32.. {
                let n = fill(&mut staged, &mut buf)?;
                if n == 0 {
                    break;
                }
                tx.execute("INSERT INTO chunks VALUES ($1, $2, $3)", &[&id, &seq, &&buf[..n]])?;
            }
        }
        let m = tx.query_one("SELECT sender, size FROM messages WHERE id = $1 FOR UPDATE", &[&id])?;
        if m.get::<_, &str>(0) != sender.as_str() {
            return Err(StoreError::Conflict);
        }
        // Limits are checked under the account's usage row lock, with the
        // real size, so concurrent uploads cannot together overshoot them.
        tx.execute("INSERT INTO usage VALUES ($1, 0, 0) ON CONFLICT DO NOTHING", &[&sender.as_str()])?;
        tx.execute("SELECT 1 FROM usage WHERE fpr = $1 FOR UPDATE", &[&sender.as_str()])?;
        let l = limits_in(&mut tx, sender)?;
        let (bytes, messages) = usage_in(&mut tx, sender)?;
        let all: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
        // The recipient cap holds for the message, across re-uploads.
        let new_here: Vec<String> = tx
            .query(
                "SELECT f FROM unnest($2::text[]) f WHERE NOT EXISTS (SELECT 1 FROM recipients WHERE id = $1 AND fpr = f)",
                &[&id, &all],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let had: i64 = tx.query_one("SELECT count(*) FROM recipients WHERE id = $1", &[&id])?.get(0);
        if had as u64 + new_here.len() as u64 > l.max_recipients_per_message {
            return Err(StoreError::TooManyRecipients(l.max_recipients_per_message));
        }
        let day = utc_day(now);
        let new_today: Vec<String> = tx
            .query(
                "SELECT f FROM unnest($3::text[]) f WHERE NOT EXISTS
                 (SELECT 1 FROM rcptlog WHERE sender = $1 AND day = $2 AND rcpt = f)",
                &[&sender.as_str(), &day, &all],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let today: i64 = tx.query_one("SELECT count(*) FROM rcptlog WHERE sender = $1 AND day = $2", &[&sender.as_str(), &day])?.get(0);
        l.check((bytes, messages), created.then_some(size), today as u64 + new_today.len() as u64)?;
        // The minute's uploads, in this transaction under the usage row lock.
        let rate = tx
            .query_opt("SELECT minute, uploads, bytes FROM upload_rate WHERE fpr = $1", &[&sender.as_str()])?
            .map(|r| crate::store::UploadRate { minute: r.get(0), uploads: r.get::<_, i64>(1) as u64, bytes: r.get::<_, i64>(2) as u64 })
            .unwrap_or_default();
        let next = rate.after(&l, if created { size } else { 0 }, now)?;
        tx.execute(
            "INSERT INTO upload_rate VALUES ($1, $2, $3, $4) ON CONFLICT (fpr) DO UPDATE SET minute = $2, uploads = $3, bytes = $4",
            &[&sender.as_str(), &next.minute, &(next.uploads as i64), &(next.bytes as i64)],
        )?;
        tx.execute("INSERT INTO rcptlog SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING", &[&sender.as_str(), &day, &new_today])?;
        tx.execute(
            "INSERT INTO recipients (id, fpr, state, at) SELECT $1, unnest($2::text[]), 0, $3 ON CONFLICT DO NOTHING",
            &[&id, &new_here, &now],
        )?;
        if created {
            tx.execute("UPDATE messages SET size = $2, has_bytes = true WHERE id = $1", &[&id, &(size as i64)])?;
            adjust_usage(&mut tx, sender, size as i64, 1)?;
        }
        bump(&mut tx, &new_here)?;
        let status = status_in(&mut tx, id)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok((status, created))
    }

    fn poll(&self, recipient: &Fpr, senders: Option<&[Fpr]>, device: Option<&str>) -> Result<Vec<PollItem>, StoreError> {
        let mut c = self.conn()?;
        let r = recipient.as_str();
        if let Some(d) = device {
            ensure_device(&mut *c, r, d)?;
        }
        let rows = c.query(
            "SELECT m.id, m.sender, m.size, m.stored FROM recipients r JOIN messages m ON m.id = r.id
               WHERE r.fpr = $1 AND r.state < 2 AND m.has_bytes
             UNION
             SELECT m.id, m.sender, m.size, m.stored FROM device_inbox d JOIN messages m ON m.id = d.id
               WHERE d.fpr = $1 AND d.device = $2 AND m.has_bytes
             ORDER BY 4, 1",
            &[&r, &device.unwrap_or("")],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let s = fpr(row.get(1))?;
            if senders.is_some_and(|x| !x.contains(&s)) {
                continue;
            }
            out.push(PollItem {
                id: row.get(0),
                sender: s,
                recipient: recipient.clone(),
                size: row.get::<_, i64>(2) as u64,
                stored: stubmail::time::rfc3339(row.get(3)),
            });
        }
        Ok(out)
    }

    fn size_for(&self, recipient: &Fpr, id: &str) -> Result<u64, StoreError> {
        let mut c = self.conn()?;
        size_in(&mut *c, recipient, id)
    }

    fn open_for(&self, recipient: &Fpr, id: &str, start: u64) -> Result<(MessageReader, u64), StoreError> {
        let size = size_in(&mut *self.conn()?, recipient, id)?;
        Ok((Box::new(ChunkReader { pg: self.clone(), id: id.to_string(), pos: start, size, buf: Vec::new(), buf_seq: -1 }), size))
    }

    fn ack(&self, recipient: &Fpr, id: &str, device: Option<&str>, now: i64) -> Result<MessageStatus, StoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let st = ack_in(&mut tx, recipient, id, device, now)?;
        bump(&mut tx, &[recipient.to_string()])?;
        tx.commit()?;
        Ok(st)
    }

    fn ack_many(&self, recipient: &Fpr, ids: &[String], device: Option<&str>, now: i64) -> Result<Vec<Option<MessageStatus>>, StoreError> {
        // One transaction, so one commit (one WAL flush) for the batch.
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match ack_in(&mut tx, recipient, id, device, now) {
                Ok(st) => out.push(Some(st)),
                Err(StoreError::NotFound) => out.push(None),
                Err(e) => return Err(e),
            }
        }
        bump(&mut tx, &[recipient.to_string()])?;
        tx.commit()?;
        Ok(out)
    }

    fn status(&self, sender: &Fpr, id: &str) -> Result<MessageStatus, StoreError> {
        let mut c = self.conn()?;
        match status_in(&mut *c, id)? {
            Some(s) if &s.sender == sender => Ok(s),
            _ => Err(StoreError::NotFound),
        }
    }

    fn list(&self, sender: &Fpr) -> Result<Vec<MessageStatus>, StoreError> {
        let mut c = self.conn()?;
        let ids: Vec<String> =
            c.query("SELECT id FROM messages WHERE sender = $1 ORDER BY stored, id", &[&sender.as_str()])?.iter().map(|r| r.get(0)).collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = status_in(&mut *c, &id)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn unsend(&self, sender: &Fpr, id: &str, now: i64) -> Result<MessageStatus, StoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let m = tx.query_opt("SELECT sender, size, has_bytes FROM messages WHERE id = $1 FOR UPDATE", &[&id])?.ok_or(StoreError::NotFound)?;
        if m.get::<_, &str>(0) != sender.as_str() {
            return Err(StoreError::NotFound);
        }
        let touched: Vec<String> = tx
            .query("UPDATE recipients SET state = $3, at = $2 WHERE id = $1 AND state < 2 RETURNING fpr", &[&id, &now, &UNSENT])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let retrieved = tx.query_opt("SELECT 1 FROM recipients WHERE id = $1 AND state = $2 LIMIT 1", &[&id, &RETRIEVED])?.is_some();
        if !retrieved && m.get::<_, bool>(2) {
            tx.execute("DELETE FROM chunks WHERE id = $1", &[&id])?;
            tx.execute("UPDATE messages SET has_bytes = false WHERE id = $1", &[&id])?;
            adjust_usage(&mut tx, sender, -m.get::<_, i64>(1), -1)?;
        }
        bump(&mut tx, &touched)?;
        let s = status_in(&mut tx, id)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok(s)
    }

    fn recipient_state(&self, id: &str, recipient: &Fpr) -> Result<Option<DeliveryState>, StoreError> {
        let mut c = self.conn()?;
        c.query_opt("SELECT state FROM recipients WHERE id = $1 AND fpr = $2", &[&id, &recipient.as_str()])?
            .map(|r| state_of(r.get(0)))
            .transpose()
    }

    fn mark_notified(&self, id: &str, recipient: &Fpr, now: i64) -> Result<(), StoreError> {
        let mut c = self.conn()?;
        c.execute(
            "UPDATE recipients SET state = $4, at = $3 WHERE id = $1 AND fpr = $2 AND state = 0",
            &[&id, &recipient.as_str(), &now, &state_code(DeliveryState::Notified)],
        )?;
        Ok(())
    }

    fn ever_had_mail(&self, recipient: &Fpr) -> io::Result<bool> {
        let mut c = self.conn()?;
        Ok(c.query_opt("SELECT 1 FROM inboxes WHERE fpr = $1", &[&recipient.as_str()]).map_err(io_err)?.is_some())
    }

    /// The recipient's version counter: exact, every change bumps it.
    fn inbox_stamp(&self, recipient: &Fpr) -> Option<InboxStamp> {
        let mut c = self.conn().ok()?;
        let r = c.query_opt("SELECT version FROM inboxes WHERE fpr = $1", &[&recipient.as_str()]).ok()??;
        Some(InboxStamp { value: r.get::<_, i64>(0) as u128, exact: true })
    }
}

fn size_in(c: &mut impl GenericClient, recipient: &Fpr, id: &str) -> Result<u64, StoreError> {
    let row = c
        .query_opt(
            "SELECT m.size FROM recipients r JOIN messages m ON m.id = r.id
             WHERE r.id = $1 AND r.fpr = $2 AND r.state <= 2 AND m.has_bytes",
            &[&id, &recipient.as_str()],
        )?
        .ok_or(StoreError::NotFound)?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// A stored message read one chunk at a time, each on a connection taken
/// from the pool for that chunk only: a slow or stalled reader holds none.
struct ChunkReader {
    pg: Pg,
    id: String,
    pos: u64,
    size: u64,
    buf: Vec<u8>,
    buf_seq: i64,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let seq = (self.pos / CHUNK as u64) as i64;
        if seq != self.buf_seq {
            let row = self
                .pg
                .conn()?
                .query_opt("SELECT data FROM chunks WHERE id = $1 AND seq = $2", &[&self.id, &(seq as i32)])
                .map_err(io_err)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the message's bytes were deleted while being read"))?;
            self.buf = row.get(0);
            self.buf_seq = seq;
        }
        let off = (self.pos - seq as u64 * CHUNK as u64) as usize;
        let avail = self.buf.get(off..).unwrap_or(&[]);
        if avail.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a chunk of the message is missing"));
        }
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// One ack inside the caller's transaction (the caller bumps the
/// recipient's inbox version and commits).
fn ack_in(tx: &mut postgres::Transaction<'_>, recipient: &Fpr, id: &str, device: Option<&str>, now: i64) -> Result<MessageStatus, StoreError> {
    let r = recipient.as_str();
    let row = tx
        .query_opt(
            "SELECT r.state, m.sender, m.size, m.stored FROM recipients r JOIN messages m ON m.id = r.id
             WHERE r.id = $1 AND r.fpr = $2 FOR UPDATE OF r",
            &[&id, &r],
        )?
        .ok_or(StoreError::NotFound)?;
    let state = state_of(row.get(0))?;
    if matches!(state, DeliveryState::Unsent | DeliveryState::Expired) {
        // Withdrawn or expired for this recipient: gone, as far as it
        // can tell. An ack here would make it `retrieved` again and
        // open the bytes to it (SECURITY.md).
        return Err(StoreError::NotFound);
    }
    let at: i64 = if state.is_pending() {
        tx.execute(
            "UPDATE recipients SET state = 2, at = $3, listed = $4 WHERE id = $1 AND fpr = $2",
            &[&id, &r, &now, &device.is_some()],
        )?;
        now
    } else {
        tx.query_one("SELECT at FROM recipients WHERE id = $1 AND fpr = $2", &[&id, &r])?.get(0)
    };
    match device {
        Some(d) => {
            ensure_device(tx, r, d)?;
            if state.is_pending() {
                // Offered to the recipient's other devices until each acks.
                tx.execute(
                    "INSERT INTO device_inbox SELECT fpr, device, $2 FROM devices WHERE fpr = $1 AND device <> $3 ON CONFLICT DO NOTHING",
                    &[&r, &id, &d],
                )?;
            }
            tx.execute("DELETE FROM device_inbox WHERE fpr = $1 AND device = $2 AND id = $3", &[&r, &d, &id])?;
        }
        None => {
            tx.execute("UPDATE recipients SET listed = false WHERE id = $1 AND fpr = $2", &[&id, &r])?;
            tx.execute("DELETE FROM device_inbox WHERE fpr = $1 AND id = $2", &[&r, &id])?;
        }
    }
    // The recipient's view only: the sender's other recipients stay private.
    Ok(MessageStatus {
        id: id.to_string(),
        sender: fpr(row.get(1))?,
        size: row.get::<_, i64>(2) as u64,
        stored: stubmail::time::rfc3339(row.get(3)),
        recipients: vec![RecipientStatus { fpr: recipient.clone(), state: DeliveryState::Retrieved, at: stubmail::time::rfc3339(at) }],
    })
}
