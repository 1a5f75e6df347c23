//! Complaints (`complaints/<SENDER>/<day>`, one `<id> <by> <at>` line each)
//! and suspensions (`accounts/<FPR>.suspended`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use stubmail::fsutil;
use stubmail::protocol::Fpr;

use super::accounts::utc_day;
use super::{Files, StoreError};
use crate::store::{Abuse, Complaint, Suspension};

impl Files {
    fn complaint_lines(&self, sender: &Fpr) -> io::Result<Vec<(String, Complaint)>> {
        let dir = self.p(&format!("complaints/{sender}"));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e?;
            let day = e.file_name().to_string_lossy().to_string();
            for line in fs::read_to_string(e.path())?.lines() {
                let mut w = line.split(' ');
                let (Some(id), Some(by), Some(at)) = (w.next(), w.next(), w.next()) else { continue };
                let (Ok(by), Ok(at)) = (Fpr::parse(by), at.parse()) else { continue };
                out.push((day.clone(), Complaint { sender: sender.clone(), id: id.to_string(), by, at }));
            }
        }
        Ok(out)
    }
}

impl Abuse for Files {
    fn record_complaint(&self, c: &Complaint) -> Result<bool, StoreError> {
        // One writer per account at a time: the check and the append are one step.
        let _lock = self.lock(&format!("complaints-{}", c.sender))?;
        if self.complaint_lines(&c.sender)?.iter().any(|(_, k)| k.id == c.id && k.by == c.by) {
            return Ok(false);
        }
        let dir = self.p(&format!("complaints/{}", c.sender));
        if !dir.exists() {
            // Made by the first complaint: its names made durable too.
            fs::create_dir_all(&dir)?;
            fsutil::fsync_dir(&self.p("complaints"))?;
            fsutil::fsync_dir(&self.root)?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(dir.join(utc_day(c.at)))?;
        f.write_all(format!("{} {} {}\n", c.id, c.by, c.at).as_bytes())?;
        f.sync_all()?;
        fsutil::fsync_dir(&dir)?;
        Ok(true)
    }

    fn complaint_counts(&self, sender: &Fpr, now: i64, since: i64) -> Result<(u64, u64), StoreError> {
        let all = self.complaint_lines(sender)?;
        let today = utc_day(now);
        let voices: std::collections::HashSet<&Fpr> = all.iter().filter(|(d, c)| *d == today && c.at >= since).map(|(_, c)| &c.by).collect();
        Ok((voices.len() as u64, all.len() as u64))
    }

    fn recent_complaints(&self, sender: &Fpr, n: usize) -> Result<Vec<Complaint>, StoreError> {
        let mut all: Vec<Complaint> = self.complaint_lines(sender)?.into_iter().map(|(_, c)| c).collect();
        all.sort_by(|a, b| b.at.cmp(&a.at));
        all.truncate(n);
        Ok(all)
    }

    fn suspension(&self, f: &Fpr) -> Result<Option<Suspension>, StoreError> {
        match fs::read(self.p(&format!("accounts/{f}.suspended"))) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt(format!("accounts/{f}.suspended: {e}")))?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn set_suspension(&self, f: &Fpr, s: Option<&Suspension>, now: i64) -> Result<(), StoreError> {
        let p = self.p(&format!("accounts/{f}.suspended"));
        match s {
            Some(s) => fsutil::write_atomic(&p, &serde_json::to_vec_pretty(s).expect("serialisable"), 0o600)?,
            None => {
                fsutil::write_atomic(&self.p(&format!("accounts/{f}.resumed")), now.to_string().as_bytes(), 0o600)?;
                match fs::remove_file(&p) {
                    Ok(()) => fsutil::fsync_dir(&self.p("accounts"))?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn resumed_at(&self, f: &Fpr) -> Result<i64, StoreError> {
        match fs::read_to_string(self.p(&format!("accounts/{f}.resumed"))) {
            Ok(t) => Ok(t.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}
