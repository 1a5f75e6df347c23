//! `post_manager migrate`: copy an outbox from a data directory into a
//! PostgreSQL database. Idempotent and resumable: each message is one
//! transaction, skipped if already there with its bytes; run it again
//! after an interruption. Then every message is counted and every stored
//! message's bytes are read back from the database and hashed.
//!
//! Soft state is not copied: UDP cookies (pollers fall back to a signed
//! poll and get new ones) and stubs not yet sent (the next poll finds the
//! mail anyway).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};

use postgres::GenericClient;
use sha2::{Digest, Sha256};
use stubmail::fsutil;
use stubmail::protocol::{self, DeliveryState};

use super::pg::{state_code, CHUNK};
use super::{Accounts, Files, Limits, Pg};

/// What a migration found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub accounts: usize,
    pub certs: usize,
    /// Messages (statuses) in the data directory, and how many of them
    /// still had their bytes.
    pub messages: usize,
    pub with_bytes: usize,
    /// Copied by this run (the rest were there already).
    pub copied: usize,
    /// Stored messages whose bytes were read back and hashed.
    pub verified: usize,
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Copy `from` into `to`; `progress` gets a line now and then.
pub fn migrate(from: &Files, to: &Pg, progress: &mut dyn Write) -> anyhow::Result<Migrated> {
    let mut out = Migrated::default();
    let mut c = to.conn()?;
    // The outbox's names, accounts, their limits, recipients' certificates.
    for url in from.outbox_urls()? {
        c.execute("INSERT INTO outbox_urls VALUES ($1) ON CONFLICT DO NOTHING", &[&url])?;
    }
    for cert in from.accounts()? {
        let f = stubmail::pgp::fpr_of(&cert);
        let registered = fsutil::read_bounded(&from.p(&format!("accounts/{f}.registered-url")), 4096)
            .ok()
            .map(|s| String::from_utf8_lossy(&s).trim().to_string())
            .or_else(|| stubmail::pgp::outbox_of(&cert).and_then(|u| protocol::outbox_id(&u)));
        c.execute(
            "INSERT INTO accounts VALUES ($1, $2, $3) ON CONFLICT (fpr) DO UPDATE SET cert = EXCLUDED.cert",
            &[&f.as_str(), &stubmail::pgp::binary(&cert)?, &registered],
        )?;
        if from.p(&format!("accounts/{f}.limits.json")).exists() {
            let l: Limits = from.limits(&f);
            to.set_limits(&f, &l)?;
        }
        // A suspended account stays suspended, and its complaints count on.
        use crate::store::Abuse;
        if let Some(sus) = from.suspension(&f)? {
            to.set_suspension(&f, Some(&sus), sus.since)?;
        }
        for c in from.recent_complaints(&f, usize::MAX)? {
            to.record_complaint(&c)?;
        }
        out.accounts += 1;
    }
    for name in names(&from.p("certs")) {
        let Some(f) = name.strip_suffix(".pgp").filter(|f| protocol::Fpr::parse(f).is_ok()) else { continue };
        if let Some(bytes) = from.read_cert(&format!("certs/{name}")).and_then(|c| stubmail::pgp::binary(&c).ok()) {
            c.execute("INSERT INTO certs VALUES ($1, $2) ON CONFLICT (fpr) DO UPDATE SET cert = EXCLUDED.cert", &[&f, &bytes])?;
            out.certs += 1;
        }
    }
    // The recipients' daily logs.
    for sender in names(&from.p("rcptlog")) {
        for day in names(&from.p(&format!("rcptlog/{sender}"))) {
            // A day's log: at most an account's daily limit of fingerprints.
            let text = fsutil::read_bounded(&from.p(&format!("rcptlog/{sender}/{day}")), 16 << 20)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let rcpts: Vec<String> = text.lines().filter(|l| protocol::Fpr::parse(l).is_ok()).map(str::to_string).collect();
            c.execute("INSERT INTO rcptlog SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING", &[&sender, &day, &rcpts])?;
        }
    }
    // Recent nonces (a request replayed right after the switch is refused).
    for fpr in names(&from.p("nonces")) {
        for window in names(&from.p(&format!("nonces/{fpr}"))) {
            let Ok(w) = window.parse::<i64>() else { continue };
            let ts = w * (protocol::NONCE_MEMORY / 2).max(1);
            let nonces = names(&from.p(&format!("nonces/{fpr}/{window}")));
            c.execute("INSERT INTO nonces SELECT $1, unnest($2::text[]), $3 ON CONFLICT DO NOTHING", &[&fpr, &nonces, &ts])?;
        }
    }
    // Each recipient's devices, as the data directory lists them.
    let ids: Vec<String> =
        names(&from.p("meta")).into_iter().filter_map(|n| n.strip_suffix(".json").filter(|i| protocol::is_valid_id(i)).map(str::to_string)).collect();
    let mut devices: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in names(&from.p("devices")).into_iter().filter_map(|f| protocol::Fpr::parse(&f).ok()) {
        devices.entry(f.to_string()).or_default().extend(from.devices_of(&f)?);
    }
    for (fpr, devs) in &devices {
        for d in devs {
            c.execute("INSERT INTO devices VALUES ($1, $2) ON CONFLICT DO NOTHING", &[fpr, d])?;
        }
    }
    for dir in names(&from.p("inbox")) {
        if protocol::Fpr::parse(&dir).is_ok() {
            c.execute("INSERT INTO inboxes VALUES ($1, 1) ON CONFLICT (fpr) DO UPDATE SET version = inboxes.version + 1", &[&dir])?;
        }
    }
    // The messages, one transaction each. One that cannot be read is
    // named at the end (the others are copied).
    let mut unreadable = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        match copy_message(from, &mut c, id, &mut out) {
            Ok(()) => {}
            Err(e) => unreadable.push(format!("{id}: {e:#}")),
        }
        if k % 1000 == 999 {
            writeln!(progress, "{} of {} messages", k + 1, ids.len())?;
        }
    }
    // Usage, counted from what is stored.
    c.batch_execute(
        "INSERT INTO usage SELECT sender, sum(size), count(*) FROM messages WHERE has_bytes GROUP BY sender
         ON CONFLICT (fpr) DO UPDATE SET bytes = EXCLUDED.bytes, messages = EXCLUDED.messages",
    )?;
    if !unreadable.is_empty() {
        anyhow::bail!(
            "{} message(s) could not be read from the data directory (the rest were copied); \
             fix or remove them and run again:\n  {}",
            unreadable.len(),
            unreadable.join("\n  ")
        );
    }
    verify(&mut *c, &ids, &mut out)?;
    Ok(out)
}

/// Copy one message with its states, in one transaction (skipped if it is
/// there already with its bytes, or without them as here).
fn copy_message(from: &Files, c: &mut postgres::Client, id: &str, out: &mut Migrated) -> anyhow::Result<()> {
    {
        let id = &id.to_string();
        let Some(m) = from.read_meta(id)? else { return Ok(()) };
        out.messages += 1;
        let bytes_path = from.p(&format!("messages/{id}"));
        // A regular file only: no symbolic link, FIFO or device.
        let bytes = match fsutil::open_regular(&bytes_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("{}: {e}", bytes_path.display()),
        };
        let has_bytes = bytes.is_some();
        out.with_bytes += has_bytes as usize;
        let mut tx = c.transaction()?;
        let there: Option<bool> = tx.query_opt("SELECT has_bytes FROM messages WHERE id = $1", &[&id])?.map(|r| r.get(0));
        if there == Some(has_bytes) {
            return Ok(());
        }
        tx.execute("DELETE FROM messages WHERE id = $1", &[id])?;
        tx.execute(
            "INSERT INTO messages VALUES ($1, $2, $3, $4, $5)",
            &[id, &m.sender.as_str(), &(m.size as i64), &m.stored, &has_bytes],
        )?;
        if let Some(mut f) = bytes {
            anyhow::ensure!(f.metadata()?.len() == m.size, "its bytes are not the size its state says");
            let mut buf = vec![0u8; CHUNK];
            for seq in 0i32.. {
                let mut n = 0;
                while n < CHUNK {
                    let k = f.read(&mut buf[n..])?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                if n == 0 {
                    break;
                }
                tx.execute("INSERT INTO chunks VALUES ($1, $2, $3)", &[id, &seq, &&buf[..n]])?;
            }
        }
        // Still offered to the recipient's other devices: `listed/`.
        for r in &from.recipients_of(id)? {
            let fpr = r.fpr.to_string();
            let listed = r.state == DeliveryState::Retrieved && from.p(&format!("listed/{fpr}/{id}")).exists();
            tx.execute("INSERT INTO recipients VALUES ($1, $2, $3, $4, $5)", &[id, &fpr, &state_code(r.state), &r.at, &listed])?;
            if listed && has_bytes {
                // Every device the database knows (those seen since a first,
                // interrupted run too), but those that acked it.
                tx.execute(
                    "INSERT INTO device_inbox SELECT fpr, device, $2 FROM devices WHERE fpr = $1 AND NOT (device = ANY($3))
                     ON CONFLICT DO NOTHING",
                    &[&fpr, id, &r.devices],
                )?;
            }
        }
        tx.commit()?;
        out.copied += 1;
    }
    Ok(())
}

/// Count the messages and hash every stored one's bytes as read back.
fn verify(c: &mut impl GenericClient, ids: &[String], out: &mut Migrated) -> anyhow::Result<()> {
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let there: BTreeSet<String> = c.query("SELECT id FROM messages", &[])?.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&&str> = want.iter().filter(|i| !there.contains(**i)).collect();
    anyhow::ensure!(missing.is_empty(), "{} message(s) missing from the database after the copy, e.g. {}", missing.len(), missing[0]);
    for id in c.query("SELECT id FROM messages WHERE has_bytes ORDER BY id", &[])?.iter().map(|r| r.get::<_, String>(0)) {
        if !want.contains(id.as_str()) {
            continue;
        }
        // One chunk at a time: a message is never held whole.
        let mut h = Sha256::new();
        let mut size = 0i64;
        for seq in 0i32.. {
            let Some(row) = c.query_opt("SELECT data FROM chunks WHERE id = $1 AND seq = $2", &[&id, &seq])? else { break };
            let d: &[u8] = row.get(0);
            size += d.len() as i64;
            h.update(d);
        }
        let stored: i64 = c.query_one("SELECT size FROM messages WHERE id = $1", &[&id])?.get(0);
        anyhow::ensure!(hex::encode(h.finalize()) == id && size == stored, "message {id}: the bytes in the database do not match its id");
        out.verified += 1;
    }
    Ok(())
}
