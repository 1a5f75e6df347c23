//! Retention: one instance at a time (an advisory lock), in a few set-wise
//! statements rather than a pass over every message's state.

use postgres::GenericClient;

use super::accounts::adjust_usage;
use super::messages::bump;
use super::Pg;
use crate::store::{Expired, Housekeeping, Retention, StoreError};

/// Advisory lock key of the retention pass ("SRet").
const RETENTION_LOCK: i64 = 0x5352_6574;

impl Housekeeping for Pg {
    fn expire(&self, now: i64, r: Retention) -> Result<Expired, StoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        // Another instance is at it: nothing to do here.
        if !tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])?.get::<_, bool>(0) {
            return Ok(Expired::default());
        }
        let mut out = Expired::default();
        let expired: Vec<String> = tx
            .query(
                "UPDATE recipients r SET state = 4, at = $1 FROM messages m
                 WHERE m.id = r.id AND r.state < 2 AND m.stored < $2 RETURNING r.fpr",
                &[&now, &(now - r.pending_secs)],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect();
        out.recipients_expired = expired.len();
        bump(&mut tx, &expired)?;
        // Settled (nobody waiting) for longer than keep_secs: the bytes go.
        let settled = "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.id = m.id AND r.state < 2)
             AND coalesce((SELECT max(at) FROM recipients r WHERE r.id = m.id), m.stored) < $1";
        let gone = tx.query(&format!("SELECT m.id, m.sender, m.size FROM messages m WHERE m.has_bytes AND {settled} FOR UPDATE OF m"), &[&(now - r.keep_secs)])?;
        for row in &gone {
            let (id, sender, size): (&str, &str, i64) = (row.get(0), row.get(1), row.get(2));
            tx.execute("DELETE FROM chunks WHERE id = $1", &[&id])?;
            tx.execute("UPDATE messages SET has_bytes = false WHERE id = $1", &[&id])?;
            let listed: Vec<String> = tx.query("DELETE FROM device_inbox WHERE id = $1 RETURNING fpr", &[&id])?.iter().map(|r| r.get(0)).collect();
            bump(&mut tx, &listed)?;
            let f = stubmail::protocol::Fpr::parse(sender).map_err(|_| StoreError::Corrupt(format!("sender of {id}")))?;
            adjust_usage(&mut tx, &f, -size, -1)?;
            out.messages_deleted += 1;
        }
        // And the status once status_secs more have passed.
        out.statuses_dropped = tx.execute(
            &format!("DELETE FROM messages m WHERE NOT m.has_bytes AND {settled}"),
            &[&(now - r.keep_secs - r.status_secs)],
        )? as usize;
        sweep(&mut tx, now)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Soft state past its use: stubs of messages no longer stored, stale
/// cookies and UDP adverts (uploads leave nothing half-done: each is one
/// transaction).
fn sweep(c: &mut impl GenericClient, now: i64) -> Result<(), StoreError> {
    c.execute("DELETE FROM stubs s WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = s.id AND m.has_bytes)", &[])?;
    let old_ns = (now - crate::udp::COOKIE_MAX_AGE.as_secs() as i64).saturating_mul(1_000_000_000);
    c.execute("DELETE FROM cookies WHERE issued_ns < $1", &[&old_ns])?;
    Ok(())
}
