//! The UDP service's soft state in the data directory: `udp.json`,
//! `cookies/` and `notify/`. Written without fsync: a lost file only costs
//! a signed HTTP poll (or a stub not sent, which the next poll makes up
//! for). One UDP service serves a data directory, so cookie counters live
//! in its memory.

use std::fs;
use std::time::{Duration, SystemTime};

use stubmail::fsutil::write_replace;

use super::Files;
use crate::store::UdpState;
use crate::udp::{Advert, CookieRecord, QueuedStub};

/// A directory whose mtime is this close to now may change again in the
/// same clock tick: it is listed again.
const RACY: Duration = Duration::from_secs(2);

fn mtime_mark(p: &std::path::Path) -> Option<(u128, bool)> {
    let m = fs::metadata(p).and_then(|m| m.modified()).ok()?;
    let v = m.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Some((v, SystemTime::now().duration_since(m).is_ok_and(|d| d > RACY)))
}

impl UdpState for Files {
    fn udp_advert(&self) -> Option<Advert> {
        serde_json::from_slice(&fs::read(self.p("udp.json")).ok()?).ok()
    }

    fn set_udp_advert(&self, a: Option<&Advert>) -> std::io::Result<()> {
        match a {
            Some(a) => write_replace(&self.p("udp.json"), &serde_json::to_vec(a).expect("serialisable")),
            // Only our own advert: another instance may have started since.
            None => {
                if self.udp_advert().is_some_and(|a| a.pid == std::process::id()) {
                    let _ = fs::remove_file(self.p("udp.json"));
                }
                Ok(())
            }
        }
    }

    /// `cookies/<id>.json`, and `cookies/current/<FPR>.<device>` naming the
    /// device's current one.
    fn issue_cookie(&self, id: &str, c: &CookieRecord) -> std::io::Result<()> {
        write_replace(&self.p(&format!("cookies/{id}.json")), &serde_json::to_vec(c).expect("serialisable"))?;
        // The device id is [A-Za-z0-9_-] (checked by the handler), safe in a name.
        let current = self.p(&format!("cookies/current/{}.{}", c.recipient, c.device.as_deref().unwrap_or("_")));
        if let Ok(old) = fs::read_to_string(&current)
            && old.len() == 32
            && old.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let _ = fs::remove_file(self.p(&format!("cookies/{old}.json")));
        }
        write_replace(&current, id.as_bytes())
    }

    /// The whole directory, when its mtime moved (or may have). Cookies
    /// past their age are deleted on the way.
    fn scan_cookies(&self, since_ns: u64, mark: &mut u128) -> Option<(bool, Vec<(String, CookieRecord)>)> {
        let dir = self.p("cookies");
        let (m, exact) = mtime_mark(&dir)?;
        if exact && m == *mark {
            return None;
        }
        *mark = m;
        let rd = fs::read_dir(&dir).ok()?;
        let wall = crate::udp::wall_ns();
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(hexid) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if hexid.len() != 32 || !hexid.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let Ok(f) = fs::read(e.path()).map_err(drop).and_then(|b| serde_json::from_slice::<CookieRecord>(&b).map_err(drop)) else {
                continue;
            };
            if wall.saturating_sub(f.issued_ns) > crate::udp::COOKIE_MAX_AGE.as_nanos() as u64 {
                let _ = fs::remove_file(e.path());
                continue;
            }
            if f.issued_ns < since_ns {
                continue;
            }
            out.push((hexid.to_string(), f));
        }
        Some((true, out))
    }

    fn advance_cookie(&self, _id: &str, _counter: u64) -> bool {
        true
    }

    /// `notify/<id>.<FPR>.json` (and `<id>.<FPR>.<k>.json` for a
    /// recipient's further devices' endpoints).
    fn queue_stub(&self, q: &QueuedStub, k: usize) -> std::io::Result<()> {
        let name = if k == 0 { format!("notify/{}.{}.json", q.id, q.recipient) } else { format!("notify/{}.{}.{k}.json", q.id, q.recipient) };
        write_replace(&self.p(&name), &serde_json::to_vec(q).expect("serialisable"))
    }

    /// The directory is listed only when its mtime moved (or may have).
    fn claim_stubs(&self, mark: &mut u128, held: &mut dyn FnMut(&str) -> bool) -> Vec<(String, QueuedStub)> {
        let dir = self.p("notify");
        let Some((m, exact)) = mtime_mark(&dir) else { return vec![] };
        if exact && m == *mark {
            return vec![];
        }
        *mark = m;
        let Ok(rd) = fs::read_dir(&dir) else { return vec![] };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().filter(|n| n.ends_with(".json") && !n.starts_with('.')).map(str::to_string) else {
                continue;
            };
            if held(&name) {
                continue;
            }
            match fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<QueuedStub>(&b).ok()) {
                Some(q) => out.push((name, q)),
                None => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        out
    }

    fn drop_stub(&self, name: &str) {
        if !name.contains('/') {
            let _ = fs::remove_file(self.p(&format!("notify/{name}")));
        }
    }
}
