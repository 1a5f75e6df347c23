//! Complaints and suspensions (tables `complaints`, `suspensions`).

use stubmail::protocol::Fpr;

use super::accounts::utc_day;
use super::{Pg, StoreError};
use crate::store::{Abuse, Complaint, Suspension};

impl Abuse for Pg {
    fn record_complaint(&self, c: &Complaint) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let n = conn.execute(
            "INSERT INTO complaints VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&c.sender.as_str(), &c.id, &c.by.as_str(), &utc_day(c.at), &c.at],
        )?;
        Ok(n == 1)
    }

    fn complaint_counts(&self, sender: &Fpr, now: i64, since: i64) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn()?;
        let r = conn.query_one(
            "SELECT count(DISTINCT by_fpr) FILTER (WHERE day = $2 AND at >= $3), count(*) FROM complaints WHERE sender = $1",
            &[&sender.as_str(), &utc_day(now), &since],
        )?;
        Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
    }

    fn recent_complaints(&self, sender: &Fpr, n: usize) -> Result<Vec<Complaint>, StoreError> {
        let mut conn = self.conn()?;
        let rows = conn.query(
            "SELECT id, by_fpr, at FROM complaints WHERE sender = $1 ORDER BY at DESC LIMIT $2",
            &[&sender.as_str(), &(n as i64)],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| Some(Complaint { sender: sender.clone(), id: r.get(0), by: Fpr::parse(r.get(1)).ok()?, at: r.get(2) }))
            .collect())
    }

    fn suspension(&self, f: &Fpr) -> Result<Option<Suspension>, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn
            .query_opt("SELECT since, reason FROM suspensions WHERE fpr = $1", &[&f.as_str()])?
            .map(|r| Suspension { since: r.get(0), reason: r.get(1) }))
    }

    fn set_suspension(&self, f: &Fpr, s: Option<&Suspension>, now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        match s {
            Some(s) => {
                conn.execute(
                    "INSERT INTO suspensions VALUES ($1, $2, $3) ON CONFLICT (fpr) DO UPDATE SET since = $2, reason = $3",
                    &[&f.as_str(), &s.since, &s.reason],
                )?;
            }
            None => {
                let mut tx = conn.transaction()?;
                tx.execute("DELETE FROM suspensions WHERE fpr = $1", &[&f.as_str()])?;
                tx.execute("INSERT INTO resumptions VALUES ($1, $2) ON CONFLICT (fpr) DO UPDATE SET at = $2", &[&f.as_str(), &now])?;
                tx.commit()?;
            }
        }
        Ok(())
    }

    fn resumed_at(&self, f: &Fpr) -> Result<i64, StoreError> {
        let mut conn = self.conn()?;
        Ok(conn.query_opt("SELECT at FROM resumptions WHERE fpr = $1", &[&f.as_str()])?.map_or(0, |r| r.get(0)))
    }
}
