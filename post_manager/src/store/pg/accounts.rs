//! Accounts, their limits and usage, the per-day recipient log, and the
//! outbox's own names.

use std::io;

use stubmail::openpgp::Cert;
use stubmail::pgp;
use stubmail::protocol::{self, Fpr};

use super::{io_err, Pg};
use crate::store::{Accounts, Limits, StoreError};

pub(super) fn utc_day(now: i64) -> String {
    stubmail::time::rfc3339(now)[..10].to_string()
}

fn first_cert(bytes: &[u8]) -> Option<Cert> {
    pgp::parse_certs(bytes).ok()?.into_iter().next()
}

impl Accounts for Pg {
    fn add_account_with(&self, cert: &Cert, new_url: bool) -> anyhow::Result<Fpr> {
        pgp::check_contact(cert)?;
        let f = pgp::fpr_of(cert);
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        // One account at a time decides the outbox's names.
        tx.batch_execute("LOCK TABLE outbox_urls IN EXCLUSIVE MODE")?;
        let urls: Vec<String> = tx.query("SELECT url FROM outbox_urls ORDER BY url", &[])?.iter().map(|r| r.get(0)).collect();
        for u in crate::store::names_to_add(cert, &urls, new_url)? {
            tx.execute("INSERT INTO outbox_urls VALUES ($1) ON CONFLICT DO NOTHING", &[&u])?;
        }
        let registered = pgp::outbox_of(cert).and_then(|u| protocol::outbox_id(&u));
        tx.execute(
            "INSERT INTO accounts (fpr, cert, registered_url) VALUES ($1, $2, $3)
             ON CONFLICT (fpr) DO UPDATE SET cert = EXCLUDED.cert",
            &[&f.as_str(), &pgp::binary(cert)?, &registered],
        )?;
        tx.commit()?;
        Ok(f)
    }

    fn update_account_cert(&self, cert: &Cert) -> anyhow::Result<()> {
        pgp::check_contact(cert)?;
        let f = pgp::fpr_of(cert);
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let Some(row) = tx.query_opt("SELECT cert FROM accounts WHERE fpr = $1 FOR UPDATE", &[&f.as_str()])? else {
            anyhow::bail!("{f} is not an account of this outbox")
        };
        if tx.query_opt("SELECT 1 FROM outbox_urls LIMIT 1", &[])?.is_none() {
            anyhow::bail!("this outbox does not know its own URL yet: run `post_manager account add --new-url` first");
        }
        let old = first_cert(row.get(0)).ok_or_else(|| anyhow::anyhow!("the stored certificate of {f} does not parse"))?;
        // Merged, then reduced as a whole: pushes add up, and the stored
        // key stays within the bounds of any remembered one.
        let merged = pgp::reduced(&old.merge_public(cert.clone())?)?;
        tx.execute("UPDATE accounts SET cert = $2 WHERE fpr = $1", &[&f.as_str(), &pgp::binary(&merged)?])?;
        tx.commit()?;
        Ok(())
    }

    fn outbox_urls(&self) -> io::Result<Vec<String>> {
        let mut c = self.conn()?;
        Ok(c.query("SELECT url FROM outbox_urls ORDER BY url", &[]).map_err(io_err)?.iter().map(|r| r.get(0)).collect())
    }

    fn set_limits(&self, f: &Fpr, l: &Limits) -> io::Result<()> {
        let mut c = self.conn()?;
        c.execute(
            "INSERT INTO limits VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (fpr) DO UPDATE
             SET max_bytes = $2, max_messages = $3, max_recipients_per_day = $4, max_recipients_per_message = $5,
                 max_uploads_per_minute = $6, max_upload_bytes_per_minute = $7, max_complaints_per_day = $8",
            &[
                &f.as_str(),
                &(l.max_bytes as i64),
                &(l.max_messages as i64),
                &(l.max_recipients_per_day as i64),
                &(l.max_recipients_per_message as i64),
                &(l.max_uploads_per_minute.min(i64::MAX as u64) as i64),
                &(l.max_upload_bytes_per_minute.min(i64::MAX as u64) as i64),
                &(l.max_complaints_per_day.min(i64::MAX as u64) as i64),
            ],
        )
        .map_err(io_err)?;
        Ok(())
    }

    fn limits(&self, f: &Fpr) -> Limits {
        let Ok(mut c) = self.conn() else { return Limits::default() };
        limits_in(&mut *c, f).unwrap_or_default()
    }

    fn account_status(&self, f: &Fpr, now: i64) -> Result<protocol::AccountStatus, StoreError> {
        let mut c = self.conn()?;
        let l = limits_in(&mut *c, f)?;
        let (bytes, messages) = usage_in(&mut *c, f)?;
        let today: Vec<Fpr> = c
            .query("SELECT rcpt FROM rcptlog WHERE sender = $1 AND day = $2 ORDER BY rcpt", &[&f.as_str(), &utc_day(now)])?
            .iter()
            .filter_map(|r| Fpr::parse(r.get(0)).ok())
            .collect();
        Ok(protocol::AccountStatus {
            fpr: Some(f.clone()),
            bytes,
            messages,
            recipients_today: today.len() as u64,
            today,
            max_bytes: l.max_bytes,
            max_messages: l.max_messages,
            max_recipients_per_day: l.max_recipients_per_day,
        })
    }

    fn remove_account(&self, f: &Fpr) -> io::Result<bool> {
        let mut c = self.conn()?;
        Ok(c.execute("DELETE FROM accounts WHERE fpr = $1", &[&f.as_str()]).map_err(io_err)? > 0)
    }

    fn accounts(&self) -> io::Result<Vec<Cert>> {
        let mut c = self.conn()?;
        let rows = c.query("SELECT cert FROM accounts ORDER BY fpr", &[]).map_err(io_err)?;
        Ok(rows.iter().filter_map(|r| first_cert(r.get(0))).collect())
    }

    fn account(&self, f: &Fpr) -> io::Result<Option<Cert>> {
        let mut c = self.conn()?;
        let row = c.query_opt("SELECT cert FROM accounts WHERE fpr = $1", &[&f.as_str()]).map_err(io_err)?;
        Ok(row.and_then(|r| first_cert(r.get(0))))
    }
}

pub(super) fn limits_in(c: &mut impl postgres::GenericClient, f: &Fpr) -> Result<Limits, StoreError> {
    Ok(match c.query_opt(
        "SELECT max_bytes, max_messages, max_recipients_per_day, max_recipients_per_message,
                max_uploads_per_minute, max_upload_bytes_per_minute, max_complaints_per_day FROM limits WHERE fpr = $1",
        &[&f.as_str()],
    )? {
        Some(r) => {
            let d = Limits::default();
            let or = |i: usize, d: u64| r.get::<_, Option<i64>>(i).map_or(d, |v| v as u64);
            Limits {
                max_bytes: r.get::<_, i64>(0) as u64,
                max_messages: r.get::<_, i64>(1) as u64,
                max_recipients_per_day: r.get::<_, i64>(2) as u64,
                max_recipients_per_message: r.get::<_, i64>(3) as u64,
                max_uploads_per_minute: or(4, d.max_uploads_per_minute),
                max_upload_bytes_per_minute: or(5, d.max_upload_bytes_per_minute),
                max_complaints_per_day: or(6, d.max_complaints_per_day),
            }
        }
        None => Limits::default(),
    })
}

pub(super) fn usage_in(c: &mut impl postgres::GenericClient, f: &Fpr) -> Result<(u64, u64), StoreError> {
    Ok(match c.query_opt("SELECT bytes, messages FROM usage WHERE fpr = $1", &[&f.as_str()])? {
        Some(r) => (r.get::<_, i64>(0).max(0) as u64, r.get::<_, i64>(1).max(0) as u64),
        None => (0, 0),
    })
}

pub(super) fn adjust_usage(c: &mut impl postgres::GenericClient, f: &Fpr, bytes: i64, messages: i64) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO usage VALUES ($1, $2, $3) ON CONFLICT (fpr) DO UPDATE
         SET bytes = usage.bytes + $2, messages = usage.messages + $3",
        &[&f.as_str(), &bytes, &messages],
    )?;
    Ok(())
}
