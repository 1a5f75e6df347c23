//! The UDP service's state, shared by every instance: cookies with their
//! counters (a datagram replayed to another instance is not answered), and
//! stubs, each sent by the one instance holding its lease (another takes
//! it over once the lease runs out, e.g. after that instance died).

use std::io;

use super::{io_err, Pg};
use crate::store::UdpState;
use crate::udp::{Advert, CookieRecord, QueuedStub};

/// How long a claim on a stub lasts without renewal.
const LEASE_SECS: i64 = 30;
/// A UDP service not heard from for this long is not announced (it died:
/// pollers would wait on a port nobody answers).
const ADVERT_TTL_SECS: i64 = 30;

impl UdpState for Pg {
    /// The most recently started live service's advert: every instance
    /// announces the same port (the load balancer's), or its own.
    fn udp_advert(&self) -> Option<Advert> {
        let mut c = self.conn().ok()?;
        let live = stubmail::time::unix_now() - ADVERT_TTL_SECS;
        let row = c.query_opt("SELECT body FROM udp_services WHERE seen > $1 ORDER BY started DESC LIMIT 1", &[&live]).ok()??;
        serde_json::from_str(row.get(0)).ok()
    }

    fn set_udp_advert(&self, a: Option<&Advert>) -> io::Result<()> {
        let mut c = self.conn()?;
        match a {
            Some(a) => c.execute(
                "INSERT INTO udp_services VALUES ($1, $2, $3, $4) ON CONFLICT (owner) DO UPDATE SET body = $2, started = $3, seen = $4",
                &[&self.me, &serde_json::to_string(a).expect("serialisable"), &(a.started_ns as i64), &stubmail::time::unix_now()],
            ),
            None => c.execute("DELETE FROM udp_services WHERE owner = $1", &[&self.me]),
        }
        .map_err(io_err)?;
        Ok(())
    }

    fn issue_cookie(&self, id: &str, rec: &CookieRecord) -> io::Result<()> {
        let mut c = self.conn()?;
        // One current cookie per recipient's device: the new one replaces it.
        c.execute(
            "INSERT INTO cookies (id, recipient, device, body, issued_ns) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (recipient, device) DO UPDATE SET id = $1, body = $4, issued_ns = $5, last = 0",
            &[
                &id,
                &rec.recipient.as_str(),
                &rec.device.as_deref().unwrap_or("_"),
                &serde_json::to_string(rec).expect("serialisable"),
                &(rec.issued_ns as i64),
            ],
        )
        .map_err(io_err)?;
        Ok(())
    }

    /// Not scanned: an unknown id is looked up by [`UdpState::lookup_cookie`].
    fn scan_cookies(&self, _since_ns: u64, _mark: &mut u128) -> Option<(bool, Vec<(String, CookieRecord)>)> {
        None
    }

    fn lookup_cookie(&self, id: &str) -> Option<CookieRecord> {
        let mut c = self.conn().ok()?;
        let row = c.query_opt("SELECT body FROM cookies WHERE id = $1", &[&id]).ok()??;
        serde_json::from_str(row.get(0)).ok()
    }

    /// False for a counter already answered (by any instance) and for a
    /// cookie revoked since.
    fn advance_cookie(&self, id: &str, counter: u64) -> bool {
        let Ok(mut c) = self.conn() else { return false };
        let counter = i64::try_from(counter).unwrap_or(i64::MAX);
        c.execute("UPDATE cookies SET last = $2 WHERE id = $1 AND last < $2", &[&id, &counter]).is_ok_and(|n| n == 1)
    }

    fn queue_stub(&self, q: &QueuedStub, k: usize) -> io::Result<()> {
        let name = format!("{}.{}.{k}", q.id, q.recipient);
        let mut c = self.conn()?;
        c.execute(
            "INSERT INTO stubs (name, id, body) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET body = $3",
            &[&name, &q.id, &serde_json::to_string(q).expect("serialisable")],
        )
        .map_err(io_err)?;
        Ok(())
    }

    fn claim_stubs(&self, _mark: &mut u128, held: &mut dyn FnMut(&str) -> bool) -> Vec<(String, QueuedStub)> {
        let Ok(mut c) = self.conn() else { return vec![] };
        let now = stubmail::time::unix_now();
        let rows = c.query(
            "UPDATE stubs SET owner = $1, lease = $2 WHERE name IN
               (SELECT name FROM stubs WHERE owner IS NULL OR lease < $3 LIMIT 1000 FOR UPDATE SKIP LOCKED)
             RETURNING name, body",
            &[&self.me, &(now + LEASE_SECS), &now],
        );
        let Ok(rows) = rows else { return vec![] };
        rows.iter()
            .filter(|r| !held(r.get(0)))
            .filter_map(|r| Some((r.get::<_, String>(0), serde_json::from_str(r.get(1)).ok()?)))
            .collect()
    }

    fn renew_stubs(&self) {
        if let Ok(mut c) = self.conn() {
            let _ = c.execute("UPDATE stubs SET lease = $2 WHERE owner = $1", &[&self.me, &(stubmail::time::unix_now() + LEASE_SECS)]);
        }
    }

    fn drop_stub(&self, name: &str) {
        if let Ok(mut c) = self.conn() {
            let _ = c.execute("DELETE FROM stubs WHERE name = $1", &[&name]);
        }
    }
}
