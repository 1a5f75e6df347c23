//! Retention: expiry of pending recipients, bytes and statuses, and the
//! sweep of what crashed uploads left.

use std::fs;
use std::io;
use std::path::Path;

use stubmail::fsutil::fsync_dir;
use stubmail::protocol::{self, DeliveryState};

use super::{Files, StoreError};
use crate::store::{Expired, Housekeeping, Retention};

impl Housekeeping for Files {
    /// Apply the retention policy at time `now`. Safe to run from several
    /// processes at once (each message is changed under its lock).
    fn expire(&self, now: i64, r: Retention) -> Result<Expired, StoreError> {
        let mut out = Expired::default();
        let mut touched = std::collections::BTreeSet::new();
        self.sweep(now)?;
        for e in fs::read_dir(self.p("meta"))? {
            let name = e?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).filter(|i| protocol::is_valid_id(i)) else {
                continue;
            };
            let _lock = self.lock(id)?;
            let Some(m) = self.read_meta(id)? else { continue };
            let mut all = self.recipients_of(id)?;
            if now - m.stored > r.pending_secs {
                let mut written = Vec::new();
                for rc in all.iter_mut().filter(|rc| rc.state.is_pending()) {
                    rc.state = DeliveryState::Expired;
                    rc.at = now;
                    out.recipients_expired += 1;
                    written.extend(self.update_rcpt_soft(id, rc)?);
                }
                self.make_durable(&written)?;
                for rc in all.iter().filter(|rc| rc.state == DeliveryState::Expired) {
                    self.unmark(&format!("inbox/{}", rc.fpr), id)?;
                }
            }
            if all.iter().any(|rc| rc.state.is_pending()) {
                continue;
            }
            let settled = all.iter().map(|rc| rc.at).max().unwrap_or(m.stored);
            if now - settled > r.keep_secs {
                // Offered to nobody any more, on no device.
                for rc in &all {
                    self.unmark(&format!("inbox/{}", rc.fpr), id)?;
                    self.unmark(&format!("listed/{}", rc.fpr), id)?;
                    for d in self.devices_of(&rc.fpr)? {
                        self.unmark(&format!("devices/{}/{d}", rc.fpr), id)?;
                    }
                }
                match fs::remove_file(self.p(&format!("messages/{id}"))) {
                    Ok(()) => {
                        fsync_dir(&self.p("messages"))?;
                        out.messages_deleted += 1;
                        touched.insert(m.sender.clone());
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if now - settled > r.keep_secs + r.status_secs {
                self.unmark(&format!("sent/{}", m.sender), id)?;
                fs::remove_file(self.p(&format!("meta/{id}.json")))?;
                fsync_dir(&self.p("meta"))?;
                self.remove_rcpts(id);
                let _ = fs::remove_file(self.p(&format!("locks/{id}")));
                out.statuses_dropped += 1;
            }
        }
        // Not adjusted message by message: that would take an account's
        // lock under a message's, the reverse of uploads. Recounted instead.
        for f in touched {
            self.forget_usage(&f)?;
        }
        Ok(out)
    }
}

impl Files {
    /// Remove what crashed uploads left behind: temporary files, and stored
    /// bytes that never got their state (the crash fell between the two;
    /// the uploader was never told 201 and retries). Only things a day old,
    /// so nothing in progress is touched.
    pub(super) fn sweep(&self, now: i64) -> io::Result<()> {
        let old = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64) < now - 86400)
        };
        for e in fs::read_dir(self.p("tmp"))?.flatten() {
            if old(&e.path()) {
                let _ = fs::remove_file(e.path());
            }
        }
        for e in fs::read_dir(self.p("messages"))?.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().filter(|i| protocol::is_valid_id(i)) else { continue };
            if !self.p(&format!("meta/{id}.json")).exists() && old(&e.path()) {
                let _lock = self.lock(id)?;
                if !self.p(&format!("meta/{id}.json")).exists() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}
