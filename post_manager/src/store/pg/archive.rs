//! Public lists' archives (table `archive`).

use stubmail::protocol::Fpr;

use super::{Pg, StoreError};
use crate::archive::Entry;
use crate::store::Archive;

impl Archive for Pg {
    fn archive_put(&self, list: &Fpr, e: &Entry, post: &[u8], sig: &[u8]) -> Result<bool, StoreError> {
        let entry = serde_json::to_string(e).expect("serialisable");
        let n = self.conn()?.execute(
            "INSERT INTO archive (list, id, entry, post, sig) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&list.as_str(), &e.id, &entry, &post, &sig],
        )?;
        Ok(n == 1)
    }

    fn archive_page(&self, list: &Fpr, skip: usize, n: usize) -> Result<(Vec<Entry>, usize), StoreError> {
        let mut conn = self.conn()?;
        let total: i64 = conn.query_one("SELECT count(*) FROM archive WHERE list = $1", &[&list.as_str()])?.get(0);
        let rows = conn.query(
            "SELECT entry FROM archive WHERE list = $1 ORDER BY seq DESC OFFSET $2 LIMIT $3",
            &[&list.as_str(), &(skip as i64), &(n as i64)],
        )?;
        let entries = rows.iter().filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok()).collect();
        Ok((entries, total as usize))
    }

    fn archive_get(&self, list: &Fpr, id: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        Ok(self
            .conn()?
            .query_opt("SELECT post, sig FROM archive WHERE list = $1 AND id = $2", &[&list.as_str(), &id])?
            .map(|r| (r.get(0), r.get(1))))
    }
}
