//! The data directory's layout version, and the upgrades: from the first
//! layout (every recipient's state inside `meta/<id>.json`, device-acked
//! messages kept in `inbox/`) to the second (a JSON file per recipient,
//! `rcpt/<id>/<XX>/<FPR>.json`, and `listed/`, `devices/`), and from the
//! second to the third (a table of records per message, `rcpt/<id>.tab`).
//! Run when a store is opened, under a lock, once; a crash in the middle
//! leaves it to be run again (each step is idempotent, the version is
//! written last).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;

use stubmail::fsutil;
use stubmail::protocol::DeliveryState;

use super::messages::RecipientMeta;
use super::{Files, StoreError};

/// The current layout.
const VERSION: &str = "3";

impl Files {
    pub(super) fn upgrade(&self) -> Result<(), StoreError> {
        let marker = self.p("layout");
        if fs::read_to_string(&marker).is_ok_and(|v| v.trim() == VERSION) {
            return Ok(());
        }
        let ids = list_ids_json(&self.p("meta"))?;
        if ids.is_empty() && !self.has_json_states()? {
            // Nothing to upgrade. (A directory this process may not write
            // is reported by `check_ready`, with the fix.)
            let _ = fsutil::write_atomic(&marker, VERSION.as_bytes(), 0o600);
            return Ok(());
        }
        let _lock = self.lock("layout")?;
        if fs::read_to_string(&marker).is_ok_and(|v| v.trim() == VERSION) {
            return Ok(());
        }
        // Every device of each recipient, from every message's acks.
        let mut devices: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for id in &ids {
            if let Some(m) = self.read_meta(id)? {
                for r in &m.recipients {
                    devices.entry(r.fpr.to_string()).or_default().extend(r.devices.iter().cloned());
                }
            }
        }
        for id in &ids {
            let _lock = self.lock(id)?;
            let Some(mut m) = self.read_meta(id)? else { continue };
            if m.recipients.is_empty() {
                continue;
            }
            let mut written = self.add_rcpts(id, &m.recipients)?;
            for r in &m.recipients {
                let f = r.fpr.to_string();
                // Acked by a device and still in the index: offered to the
                // recipient's other devices.
                if r.state == DeliveryState::Retrieved && self.p(&format!("inbox/{f}/{id}")).exists() {
                    written.push(self.mark_soft(&format!("listed/{f}"), id)?);
                    for d in devices.get(&f).into_iter().flatten().filter(|d| !r.devices.contains(d)) {
                        written.push(self.mark_soft(&format!("devices/{f}/{d}"), id)?);
                    }
                }
            }
            self.make_durable(&written)?;
            let retrieved: Vec<String> = m.recipients.iter().filter(|r| !r.state.is_pending()).map(|r| r.fpr.to_string()).collect();
            m.recipients.clear();
            self.write_meta(&m)?;
            for f in retrieved {
                self.unmark(&format!("inbox/{f}"), id)?;
            }
        }
        // Each device's own list exists, even if empty.
        for (f, ds) in &devices {
            for d in ds {
                fs::create_dir_all(self.p(&format!("devices/{f}/{d}")))?;
            }
        }
        self.upgrade_json_states()?;
        fsutil::write_atomic(&marker, VERSION.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Whether any message keeps its recipients' states as JSON files
    /// (`rcpt/<id>/`, the second layout).
    fn has_json_states(&self) -> io::Result<bool> {
        Ok(fs::read_dir(self.p("rcpt"))?.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir()) && is_id(&e.file_name())))
    }

    /// Second layout to third: each message's JSON files become its table.
    /// The files stay the truth until the table is durable; then they go.
    fn upgrade_json_states(&self) -> Result<(), StoreError> {
        for e in fs::read_dir(self.p("rcpt"))?.flatten() {
            if !e.file_type()?.is_dir() || !is_id(&e.file_name()) {
                continue;
            }
            let id = e.file_name().to_string_lossy().into_owned();
            let _lock = self.lock(&id)?;
            let mut states: Vec<RecipientMeta> = Vec::new();
            for shard in fs::read_dir(e.path())?.flatten().filter(|s| s.file_type().is_ok_and(|t| t.is_dir())) {
                for f in fs::read_dir(shard.path())?.flatten() {
                    if !f.file_name().to_str().is_some_and(|n| n.ends_with(".json")) {
                        continue;
                    }
                    let b = fsutil::read_bounded(&f.path(), 1 << 20)?;
                    states.push(serde_json::from_slice(&b).map_err(|_| StoreError::Corrupt(f.path().display().to_string()))?);
                }
            }
            // Made afresh from the files (a table from an earlier, crashed
            // run may be partial).
            self.remove_rcpts(&id);
            let dirty = self.add_rcpts(&id, &states)?;
            self.make_durable(&dirty)?;
            fs::remove_dir_all(e.path())?;
        }
        fsutil::fsync_dir(&self.p("rcpt"))?;
        Ok(())
    }
}

fn is_id(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(stubmail::protocol::is_valid_id)
}

fn list_ids_json(dir: &std::path::Path) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_string))
        .filter(|i| stubmail::protocol::is_valid_id(i))
        .collect();
    v.sort();
    Ok(v)
}
