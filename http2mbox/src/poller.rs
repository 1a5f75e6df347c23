//! One poll cycle: ask every contact's outbox for mail (one request per
//! outbox server, naming all of its senders), then fetch, check, decrypt,
//! deliver and ack each message.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use stubmail::client::OutboxClient;
use stubmail::openpgp::Cert;
use stubmail::protocol::{Fpr, PollItem, PollRequest};
use stubmail::{pgp, Identity};
use tokio::io::AsyncWriteExt;

use stubmail::maildir::Journal;

use crate::deliver::{self, CryptoReject, Incoming, Target};

/// Outboxes polled at the same time: a stalled one holds its slot until
/// its deadline, so there are enough slots for many.
const CONCURRENCY: usize = 32;
/// Contacts of one outbox whose certificates a cycle refreshes on their
/// schedule (more wait for the next cycle).
const PERIODIC_REFRESHES: usize = 8;
/// Messages of one outbox fetched and delivered at the same time.
const MESSAGES_AT_ONCE: usize = 4;

/// Acks sent in one signed request (PROTOCOL.md §4.4): acks wait for at
/// most this many deliveries, or for the end of the poll answer.
const ACK_BATCH: usize = 64;

/// What became of one listed message.
enum Taken {
    /// Newly and durably delivered: to be acked.
    Delivered,
    /// Delivered before (a crash or a lost ack came between): to be acked again.
    Confirm,
    /// Set aside after failing its checks too often: left alone.
    Skipped,
}

/// Everything a poll cycle needs.
pub struct Poller {
    pub me: Arc<Identity>,
    pub keyring: stubmail::keyring::Keyring,
    pub http: reqwest::Client,
    pub target: Target,
    pub journal: Journal,
    /// Private work directory for mbox/MDA staging (`state/work`).
    pub work: PathBuf,
    /// Download staging directory (`state/fetch`).
    pub staging: PathBuf,
    /// Largest message fetched.
    pub max_size: u64,
    /// Each request to an outbox is over within this long (`poll.timeout_secs`;
    /// a fetch gets more by its size).
    pub deadline: std::time::Duration,
    /// Largest message once decrypted (`poll.max_decrypted_size`).
    pub max_plain: u64,
    /// Messages that failed their checks, set aside after a few tries.
    pub set_aside: SetAside,
    /// Name in trace headers.
    pub hostname: String,
    /// This installation's device id (several devices, one identity).
    pub device: String,
    /// Local outbox overrides by contact fingerprint.
    pub overrides: std::collections::BTreeMap<Fpr, String>,
    /// Failing outboxes: consecutive failures and when to try again. Only
    /// the daemon skips them; `--once` always tries.
    pub failing: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
    /// Skip outboxes in backoff (daemon mode).
    pub use_backoff: bool,
    /// Held for a whole cycle (`state/poll.lock`), so two polls — the daemon,
    /// a POP3 login, a cron `--once` — never take the same message at once.
    pub lock_path: PathBuf,
    /// Cheap UDP polls with the cookies signed polls handed out.
    pub udp: UdpState,
    /// A scheduled cycle polls an outbox without a UDP cookie over signed
    /// HTTP only this often (`poll.interval_secs`); cycles run more often
    /// than that for the UDP polls (`poll.udp_interval_secs`).
    pub http_every: std::time::Duration,
    /// By outbox URL: when it was last polled over signed HTTP.
    pub last_http: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Checked contacts by keyring file, kept while the file is unchanged.
    pub contact_cache: std::sync::Mutex<std::collections::HashMap<PathBuf, CachedContact>>,
    /// Which contacts claim each address, as of this cycle's keyring.
    pub claims: std::sync::Mutex<Arc<deliver::Claims>>,
    /// When each contact's certificate was last fetched from their outbox:
    /// `<dir>/<FPR>`'s mtime (kept across runs, so `--once` from cron
    /// refreshes on the same schedule as the daemon).
    pub refreshed: PathBuf,
    /// Every contact's certificate is fetched anew from their outbox this
    /// often (`poll.cert_refresh_secs`, a day), with mail or without: a
    /// contact who moved to another outbox is followed, a revocation
    /// learned.
    pub cert_refresh: std::time::Duration,
    /// The user's blocklist (`blocks.json`), read anew when it changes:
    /// a blocked contact's outbox is not polled for them.
    pub blocks: Arc<stubmail::blocklist::BlockCache>,
    /// Bumped after every delivery into the mailbox: IMAP sessions in IDLE
    /// announce the new mail at once.
    pub delivered: tokio::sync::watch::Sender<u64>,
    /// Forwarding (`[forward]`), if on.
    pub forward: Option<Arc<crate::forward::Forward>>,
}

/// One keyring file as last read: its identity (inode, size, mtime; the
/// keyring replaces files by rename, so a change always shows) and the
/// contact in it, if usable. Checking a certificate verifies its
/// self-signatures: for 10,000 contacts that was most of an idle cycle.
#[derive(Clone)]
pub struct CachedContact {
    stamp: (u64, u64, std::time::SystemTime),
    /// Checked again after an hour: a key can expire without its file
    /// changing.
    checked: std::time::Instant,
    contact: Option<Checked>,
}

/// A usable contact, as checked once per keyring file.
#[derive(Clone)]
struct Checked {
    cert: Cert,
    fpr: Fpr,
    /// The outbox its certificate binds.
    outbox: Option<String>,
    /// Its addresses (what the check found), for "one address, one contact".
    emails: Vec<String>,
}

/// The UDP poll side of the poller (docs/PROTOCOL.md §8).
#[derive(Debug, Default)]
pub struct UdpState {
    /// Use UDP polls at all (daemon mode; `--once` always polls over HTTP).
    pub enabled: bool,
    /// How long to wait for a UDP answer before a signed poll instead.
    pub timeout: std::time::Duration,
    /// By outbox URL: the cookie of its last signed poll.
    cookies: std::sync::Mutex<std::collections::HashMap<String, UdpCookie>>,
    /// Last counter used; counters are microseconds since the epoch, so they
    /// keep growing across restarts without being stored.
    counter: std::sync::atomic::AtomicU64,
}

impl UdpState {
    pub fn new(enabled: bool, timeout: std::time::Duration) -> UdpState {
        UdpState { enabled, timeout, ..Default::default() }
    }

    fn next_counter(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let prev = self.counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| Some(now.max(c + 1))).unwrap_or(0);
        now.max(prev + 1)
    }
}

#[derive(Clone, Debug)]
struct UdpCookie {
    port: u16,
    id: stubmail::protocol::udp::CookieId,
    key: stubmail::protocol::udp::CookieKey,
    /// The senders the signed poll asked about: the cookie answers for
    /// them only, so a changed address book needs a new cookie.
    senders: Vec<Fpr>,
}

/// This home's device id, made once and kept in `state/device-id`.
///
/// A copy of a home (`cp -a`, rsync to another machine) carries the id
/// along, and two devices with one id share one "retrieved" mark at the
/// outbox: whichever polls first takes each message, the other never sees
/// it. So the id is tied to where it was made — this machine's id and the
/// state directory's inode, in `state/device-origin` — and a home found
/// elsewhere gets an id of its own (a home *moved* with `mv` on one file
/// system keeps its inode, and its id).
pub fn device_id(state_dir: &std::path::Path) -> io::Result<String> {
    let p = state_dir.join("device-id");
    let origin_file = state_dir.join("device-origin");
    stubmail::fsutil::ensure_private_dir(state_dir)?;
    let here = device_origin(state_dir)?;
    if let Ok(s) = std::fs::read_to_string(&p) {
        let s = s.trim().to_string();
        if stubmail::protocol::is_valid_device(&s) {
            match std::fs::read_to_string(&origin_file) {
                Ok(o) if o.trim() == here => return Ok(s),
                // Made before origins were kept: this is where it lives.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    stubmail::fsutil::write_atomic(&origin_file, here.as_bytes(), 0o600)?;
                    return Ok(s);
                }
                _ => {
                    let id = new_device_id(&p, &origin_file, &here)?;
                    tracing::warn!(
                        old = s,
                        new = id,
                        "this home was copied from another place or machine: it is a device of its own now, \
                         so both copies receive every message (`stubmail device add` makes a new device directly)"
                    );
                    return Ok(id);
                }
            }
        }
    }
    new_device_id(&p, &origin_file, &here)
}

fn new_device_id(p: &std::path::Path, origin_file: &std::path::Path, here: &str) -> io::Result<String> {
    let id = format!("d{:016x}", rand::random::<u64>());
    stubmail::fsutil::write_atomic(origin_file, here.as_bytes(), 0o600)?;
    stubmail::fsutil::write_atomic(p, id.as_bytes(), 0o600)?;
    Ok(id)
}

/// Where a state directory is: this machine's id and the directory's
/// device and inode numbers.
fn device_origin(state_dir: &std::path::Path) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let machine = ["/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_default();
    let m = std::fs::metadata(state_dir)?;
    Ok(format!("{machine} {}:{}", m.dev(), m.ino()))
}

/// Messages that failed their checks (bad signature, not for us, too
/// large once decrypted, wrong digest …), in `state/rejected/<id>.json`.
/// After [`SetAside::TRIES`] failures a message is set aside: never
/// fetched or decrypted again (a hostile sender's bomb costs its work a
/// bounded number of times), never acked (the sender must not read
/// "retrieved"); `stubmail status` and `doctor` show them with their
/// senders. Bounded: at most [`SetAside::MAX`] records, oldest dropped.
#[derive(Clone, Debug)]
pub struct SetAside {
    dir: PathBuf,
}

/// One message's failures.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Rejected {
    pub id: String,
    /// The sender the outbox announced (whose signature was required).
    pub sender: Fpr,
    /// The outbox it was announced by.
    pub outbox: String,
    /// Why it failed, last time.
    pub reason: String,
    /// How many times it failed.
    pub attempts: u32,
    /// Unix time of the last failure.
    pub last: i64,
}

impl SetAside {
    /// Failures before a message is set aside.
    pub const TRIES: u32 = 3;
    /// Records kept at most.
    pub const MAX: usize = 10_000;

    pub fn new(dir: PathBuf) -> SetAside {
        SetAside { dir }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Where the records are (its mtime changes with each record written).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn get(&self, id: &str) -> Option<Rejected> {
        std::fs::read(self.path(id)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Is this message set aside (failed too often to try again)?
    pub fn is_set_aside(&self, id: &str) -> bool {
        self.get(id).is_some_and(|r| r.attempts >= Self::TRIES)
    }

    /// Count a failure.
    pub fn record(&self, id: &str, sender: &Fpr, outbox: &str, reason: &str) -> io::Result<Rejected> {
        stubmail::fsutil::ensure_private_dir(&self.dir)?;
        let attempts = self.get(id).map_or(0, |r| r.attempts) + 1;
        let r = Rejected {
            id: id.to_string(),
            sender: sender.clone(),
            outbox: outbox.chars().take(300).collect(),
            reason: reason.chars().take(500).collect(),
            attempts,
            last: stubmail::time::unix_now(),
        };
        stubmail::fsutil::write_replace(&self.path(id), &serde_json::to_vec(&r).expect("serialisable"))?;
        if attempts == 1 {
            self.prune()?;
        }
        Ok(r)
    }

    /// Every record, newest first.
    pub fn list(&self) -> io::Result<Vec<Rejected>> {
        let mut v: Vec<Rejected> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd.flatten().filter_map(|e| std::fs::read(e.path()).ok()).filter_map(|b| serde_json::from_slice(&b).ok()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e),
        };
        v.sort_by(|a, b| b.last.cmp(&a.last).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    fn prune(&self) -> io::Result<()> {
        let all = self.list()?;
        for r in all.iter().skip(Self::MAX) {
            let _ = std::fs::remove_file(self.path(&r.id));
        }
        Ok(())
    }
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub outboxes: usize,
    pub delivered: usize,
    pub rejected: usize,
    /// Messages announced but not taken this time (a fetch cut off, a
    /// delivery that failed): they stay in the outbox for the next poll.
    pub incomplete: usize,
    pub failed_outboxes: usize,
    /// Outboxes not asked this time because they are failing (daemon).
    pub skipped: usize,
    /// Signed HTTP polls made.
    pub http_polls: usize,
    /// UDP poll datagrams sent.
    pub udp_datagrams: usize,
    /// Outboxes a UDP answer showed idle (no HTTP request needed).
    pub udp_quiet: usize,
    /// Contacts not asked about because they are blocked.
    pub blocked: usize,
}

/// What polling one outbox did.
#[derive(Debug, Default)]
struct OutboxResult {
    delivered: usize,
    rejected: usize,
    incomplete: usize,
    http: bool,
    udp_datagrams: usize,
    quiet: bool,
}

/// A contact we fetch from: their certificate and where their outbox is.
struct Contact {
    cert: Cert,
    fpr: Fpr,
}

#[derive(Debug, thiserror::Error)]
enum Reject {
    #[error("announced for another recipient ({0})")]
    WrongRecipient(Fpr),
    #[error("sender {0} was not asked about at this outbox")]
    UnknownSender(Fpr),
    #[error("size {0} is over the limit of {1} bytes")]
    TooLarge(u64, u64),
    #[error("content SHA-256 {0} does not match the id")]
    Digest(String),
}

impl Poller {
    /// Check every outbox now (`--once`, a POP3 login): UDP where a cookie
    /// answers for it, signed HTTP everywhere else.
    pub async fn poll_once(&self) -> anyhow::Result<Report> {
        self.cycle(None, false).await
    }

    /// A cycle of the daemon's schedule: UDP polls where a cookie allows,
    /// signed HTTP polls only where `http_every` has passed.
    pub async fn poll_scheduled(&self) -> anyhow::Result<Report> {
        self.cycle(None, true).await
    }

    /// Poll now, over signed HTTP, the outboxes of these contacts (a stub
    /// said they have mail for us).
    pub async fn poll_senders(&self, senders: &[Fpr]) -> anyhow::Result<Report> {
        self.cycle(Some(senders), false).await
    }

    /// Poll one outbox, over signed HTTP, for mail from senders who are no
    /// contacts (a list robot's would-be members, their certificates
    /// checked by the caller): their mail is delivered and acked as a
    /// contact's, but nothing of them is kept — no UDP cookie, no refresh
    /// into the keyring.
    pub async fn poll_strangers(&self, url: &str, certs: Vec<Cert>) -> anyhow::Result<Report> {
        let contacts: Vec<Contact> = certs.into_iter().map(|cert| Contact { fpr: pgp::fpr_of(&cert), cert }).collect();
        let o = self.poll_outbox(url, &contacts, false, false, true).await?;
        Ok(Report { outboxes: 1, delivered: o.delivered, rejected: o.rejected, incomplete: o.incomplete, http_polls: 1, ..Report::default() })
    }

    async fn cycle(&self, only: Option<&[Fpr]>, scheduled: bool) -> anyhow::Result<Report> {
        let lock_path = self.lock_path.clone();
        let _lock = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await??;
        let j = self.journal.clone();
        let target = self.target.clone();
        let work = self.work.clone();
        let recovered = tokio::task::spawn_blocking(move || match &target {
            Target::Maildir(md) | Target::Intake(md) => j.recover(md).map_err(anyhow::Error::from),
            Target::Mbox(p) => deliver::recover_mbox(p, &j, &work),
            Target::Mda(_) => Ok(0),
        })
        .await??;
        if recovered > 0 {
            tracing::info!(recovered, "finished interrupted deliveries");
        }
        // Group contacts by the outbox bound into their own certificate.
        let mut by_outbox: BTreeMap<String, Vec<Contact>> = BTreeMap::new();
        let contacts = self.contacts()?;
        // From the cache's addresses: no certificate is checked again here.
        let mut claims = deliver::Claims::new();
        for c in &contacts {
            for e in &c.emails {
                claims.entry(e.clone()).or_default().push(c.fpr.clone());
            }
        }
        *self.claims.lock().expect("not poisoned") = Arc::new(claims);
        // Blocked contacts are not asked about: nothing of theirs is listed,
        // fetched or acked (the user's own identity is never blocked).
        let blocks = self.blocks.get().map_err(|e| anyhow::anyhow!("the blocklist: {e}"))?;
        let me = self.me.fpr();
        let mut blocked = 0;
        for Checked { cert, fpr, outbox: bound, emails } in contacts {
            let Some(url) = self.overrides.get(&fpr).cloned().or(bound) else { continue };
            if fpr != me
                && let Some(why) = blocks.check(&stubmail::blocklist::Who { sender: &fpr, outbox: Some(&url), emails: &emails })
            {
                tracing::debug!(contact = %fpr, "not polled: {why}");
                blocked += 1;
                continue;
            }
            by_outbox.entry(url).or_default().push(Contact { cert, fpr });
        }
        if let Some(only) = only {
            by_outbox.retain(|_, cs| cs.iter().any(|c| only.contains(&c.fpr)));
        }
        let mut report = Report { outboxes: by_outbox.len(), blocked, ..Report::default() };
        // A stub shows the outbox is up: no backoff for those.
        if self.use_backoff && only.is_none() {
            let now = std::time::Instant::now();
            let failing = self.failing.lock().expect("not poisoned");
            by_outbox.retain(|url, _| failing.get(url).is_none_or(|(_, next)| *next <= now));
            report.skipped = report.outboxes - by_outbox.len();
        }
        let bar = stubmail::progress::items(by_outbox.len() as u64, "polling outboxes");
        let bar_ref = &bar;
        let results: Vec<_> = futures_util::stream::iter(by_outbox)
            .map(|(url, contacts)| async move {
                let r = self.poll_outbox(&url, &contacts, only.is_none(), scheduled, false).await;
                if let Some(b) = bar_ref {
                    b.inc(1);
                }
                (url, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mut failing = self.failing.lock().expect("not poisoned");
        for (url, r) in results {
            match r {
                Ok(o) => {
                    report.delivered += o.delivered;
                    report.rejected += o.rejected;
                    report.incomplete += o.incomplete;
                    report.http_polls += o.http as usize;
                    report.udp_datagrams += o.udp_datagrams;
                    report.udp_quiet += o.quiet as usize;
                    failing.remove(&url);
                }
                Err(e) => {
                    report.failed_outboxes += 1;
                    let n = failing.get(&url).map_or(1, |(n, _)| n + 1);
                    // 30 s doubling to 6 hours between tries of a failing outbox.
                    let wait = std::time::Duration::from_secs((30u64 << n.min(10)).min(6 * 3600));
                    failing.insert(url.clone(), (n, std::time::Instant::now() + wait));
                    tracing::warn!(outbox = url, failures = n, "poll failed: {e:#}");
                }
            }
        }
        drop(failing);
        Ok(report)
    }

    /// The usable contacts of the keyring with the outbox each binds,
    /// reusing what was checked before for unchanged files.
    fn contacts(&self) -> anyhow::Result<Vec<Checked>> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.keyring.dir();
        // No keyring yet is no contacts — but still the user's own outbox.
        let entries: Vec<std::fs::DirEntry> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.collect::<io::Result<_>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e.into()),
        };
        let mut cache = self.contact_cache.lock().expect("not poisoned");
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in entries.into_iter().map(Ok::<_, io::Error>) {
            let path = e?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("pgp") {
                continue;
            }
            let Ok(m) = std::fs::metadata(&path) else { continue };
            let stamp = (m.ino(), m.len(), m.modified()?);
            seen.insert(path.clone());
            let entry = match cache.get(&path) {
                Some(c) if c.stamp == stamp && c.checked.elapsed() < std::time::Duration::from_secs(3600) => c.clone(),
                _ => {
                    let cert = std::fs::read(&path).ok().and_then(|b| pgp::parse_certs(&b).ok()).and_then(|c| c.into_iter().next());
                    let contact = cert.and_then(|c| {
                        let emails = pgp::check_contact(&c).ok()?;
                        Some(Checked { fpr: pgp::fpr_of(&c), outbox: pgp::outbox_of(&c), cert: c, emails })
                    });
                    let c = CachedContact { stamp, checked: std::time::Instant::now(), contact };
                    cache.insert(path, c.clone());
                    c
                }
            };
            out.extend(entry.contact);
        }
        cache.retain(|p, _| seen.contains(p));
        // The user is their own contact: mail to oneself waits in one's
        // own outbox, for every device of the identity to fetch.
        let mine = self.me.cert();
        let fpr = self.me.fpr();
        if !out.iter().any(|c| c.fpr == fpr) {
            if let Ok(emails) = pgp::check_contact(&mine) {
                out.push(Checked { outbox: pgp::outbox_of(&mine), fpr, cert: mine, emails });
            }
        }
        out.sort_by(|a, b| a.fpr.cmp(&b.fpr));
        Ok(out)
    }

    async fn poll_outbox(&self, url: &str, contacts: &[Contact], udp_allowed: bool, scheduled: bool, strangers: bool) -> anyhow::Result<OutboxResult> {
        let client = OutboxClient::new(self.http.clone(), url, self.me.clone())?.with_deadline(self.deadline);
        let mut senders: Vec<Fpr> = contacts.iter().map(|c| c.fpr.clone()).collect();
        senders.sort();
        let mut out = OutboxResult::default();
        if udp_allowed && self.udp.enabled {
            let cookie = self.udp.cookies.lock().expect("not poisoned").get(url).filter(|c| c.senders == senders).cloned();
            if let Some(c) = cookie {
                out.udp_datagrams += 1;
                let st = client.udp_poll(c.port, &[(c.id, c.key)], self.udp.next_counter(), self.udp.timeout).await;
                match st.as_deref() {
                    Some([stubmail::protocol::udp::PollStatus::Nothing]) => {
                        out.quiet = true;
                        return Ok(out);
                    }
                    Some(_) => {}
                    None => tracing::debug!(outbox = url, "no UDP answer: signed poll"),
                }
            } else if scheduled
                && self.last_http.lock().expect("not poisoned").get(url).is_some_and(|t| t.elapsed() < self.http_every)
            {
                // No cookie to ask with: a signed poll on the slow schedule.
                out.quiet = true;
                return Ok(out);
            }
        }
        let req = PollRequest { senders: Some(senders.clone()), certs: vec![pgp::armored(&self.me.cert())?], device: Some(self.device.clone()), udp: self.udp.enabled && !strangers };
        out.http = true;
        if !strangers {
            self.last_http.lock().expect("not poisoned").insert(url.to_string(), std::time::Instant::now());
        }
        let resp = client.poll(&req).await?;
        // The cookie of a poll for strangers would replace the one for the
        // contacts at the same outbox.
        if !strangers {
            let mut cookies = self.udp.cookies.lock().expect("not poisoned");
            let mine = resp.cookies.iter().find(|c| c.recipient == self.me.fpr()).and_then(|c| c.decode());
            match (resp.udp_port, mine) {
                (Some(port), Some((id, key))) => {
                    cookies.insert(url.to_string(), UdpCookie { port, id, key, senders });
                }
                _ => {
                    cookies.remove(url);
                }
            }
        }
        // Contacts with mail here: their current certificate, from their
        // own outbox (a new address of theirs, a new subkey), at most hourly;
        // every contact of this outbox once per `cert_refresh` (a few a
        // cycle), so a move to another outbox is followed.
        let mut fresh: std::collections::HashMap<Fpr, Cert> = Default::default();
        let mut with_mail: Vec<&Fpr> = resp.messages.iter().map(|m| &m.sender).collect();
        with_mail.sort();
        with_mail.dedup();
        for f in with_mail.into_iter().filter(|_| !strangers) {
            if let Some(c) = self.refresh_contact(url, f, contacts, std::time::Duration::from_secs(3600)).await {
                fresh.insert(f.clone(), c);
            }
        }
        // (Those due first: taking any eight would leave the rest of a
        // large outbox's contacts never refreshed.)
        let due: Vec<&Fpr> =
            contacts.iter().map(|c| &c.fpr).filter(|f| !strangers && !fresh.contains_key(*f) && self.refresh_due(f, self.cert_refresh)).take(PERIODIC_REFRESHES).collect();
        for f in due {
            self.refresh_contact(url, f, contacts, self.cert_refresh).await;
        }
        let fresh = &fresh;
        let (mut delivered, mut rejected, mut incomplete) = (0, 0, 0);
        // A few messages at once: each waits on the network and on fsync.
        // A message id appears once per poll answer, so no two tasks ever
        // take the same message.
        let client = &client;
        let mut results = futures_util::stream::iter(resp.messages)
            .map(|item| async move {
                let r = self.take(client, contacts, fresh, &item).await;
                (item, r)
            })
            .buffer_unordered(MESSAGES_AT_ONCE);
        // Delivered (or delivered before and listed again) and not yet
        // acked: (id, is a re-confirmation).
        let mut acks: Vec<(String, bool)> = Vec::new();
        while let Some((item, r)) = results.next().await {
            match r {
                Ok(Taken::Delivered) => {
                    delivered += 1;
                    acks.push((item.id.clone(), false));
                }
                Ok(Taken::Confirm) => acks.push((item.id.clone(), true)),
                Ok(Taken::Skipped) => {}
                Err(e) if e.downcast_ref::<Reject>().is_some() || e.downcast_ref::<CryptoReject>().is_some() => {
                    rejected += 1;
                    tracing::warn!(outbox = url, id = item.id, sender = %item.sender, "not delivered: {e:#}");
                    // Only ids that can name a file are recorded.
                    if stubmail::protocol::is_valid_id(&item.id) {
                        match self.set_aside.record(&item.id, &item.sender, url, &format!("{e:#}")) {
                            Ok(r) if r.attempts >= SetAside::TRIES => {
                                tracing::warn!(id = item.id, sender = %item.sender, "set aside after {} failures: `stubmail status` lists it", r.attempts)
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("cannot record a rejected message: {e}"),
                        }
                    }
                }
                Err(e) => {
                    incomplete += 1;
                    tracing::warn!(outbox = url, id = item.id, "will retry: {e:#}");
                }
            }
            if acks.len() >= ACK_BATCH {
                incomplete += self.send_acks(client, &mut acks).await;
            }
        }
        incomplete += self.send_acks(client, &mut acks).await;
        out.delivered = delivered;
        out.rejected = rejected;
        out.incomplete = incomplete;
        Ok(out)
    }

    /// Fetch, check, deliver and ack one message. Ok(true) if newly delivered.
    /// Fetch a contact's certificate from their outbox (public, bounded)
    /// and merge it into the keyring — the same key only, and "one
    /// address, one contact" still holds. At most once an hour a contact.
    /// Was contact `f`'s certificate last fetched `min_age` ago or longer
    /// (or never)?
    fn refresh_due(&self, f: &Fpr, min_age: std::time::Duration) -> bool {
        let last = std::fs::metadata(self.refreshed.join(f.as_str())).and_then(|m| m.modified()).ok();
        !last.is_some_and(|t| t.elapsed().is_ok_and(|age| age < min_age))
    }

    async fn refresh_contact(&self, url: &str, f: &Fpr, contacts: &[Contact], min_age: std::time::Duration) -> Option<Cert> {
        if !contacts.iter().any(|c| &c.fpr == f) || *f == self.me.fpr() {
            return None;
        }
        if !self.refresh_due(f, min_age) {
            return None;
        }
        // Stamped before the fetch: an outbox that fails is not asked
        // again until the next period.
        let stamp = self.refreshed.join(f.as_str());
        if stubmail::fsutil::ensure_private_dir(&self.refreshed).is_ok() {
            let _ = std::fs::write(&stamp, b"");
            let _ = std::fs::File::options().write(true).open(&stamp).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        }
        let bytes = match OutboxClient::account_cert(&self.http, url, f, self.deadline).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(contact = %f, "no current certificate from the outbox: {e}");
                return None;
            }
        };
        let cert = pgp::parse_certs(&bytes).ok()?.into_iter().find(|c| &pgp::fpr_of(c) == f)?;
        // Only the owner's own signatures, few User IDs and subkeys: an
        // outbox cannot grow the keyring.
        let cert = pgp::reduced(&cert).ok()?;
        // Only the addresses the user took when importing the contact: a
        // contact adds no address by itself (anyone's key can name anyone's
        // address; the user accepts new ones with `stubmail keys refresh`).
        let known = contacts.iter().find(|c| &c.fpr == f).map(|c| pgp::all_emails_of(&c.cert)).unwrap_or_default();
        let offered: Vec<String> = pgp::all_emails_of(&cert).into_iter().filter(|e| !known.contains(e)).collect();
        if !offered.is_empty() {
            tracing::info!(contact = %f, "the contact's current key adds {}: `stubmail keys refresh {f}` takes them", offered.join(", "));
        }
        let cert = pgp::only_userids_for(cert, &known)?;
        let kr = self.keyring.clone();
        match tokio::task::spawn_blocking(move || kr.refresh(cert)).await {
            Ok(Ok(merged)) => Some(merged),
            Ok(Err(e)) => {
                tracing::warn!(contact = %f, "the contact's current certificate is not taken: {e}");
                None
            }
            Err(_) => None,
        }
    }

    async fn take(&self, client: &OutboxClient, contacts: &[Contact], fresh: &std::collections::HashMap<Fpr, Cert>, item: &PollItem) -> anyhow::Result<Taken> {
        if !stubmail::protocol::is_valid_id(&item.id) {
            anyhow::bail!(Reject::Digest(item.id.chars().take(80).collect()));
        }
        if item.recipient != self.me.fpr() {
            anyhow::bail!(Reject::WrongRecipient(item.recipient.clone()));
        }
        // The signer must be the sender we asked this outbox about: an
        // outbox cannot make us accept mail from anyone else.
        let sender = contacts
            .iter()
            .find(|c| c.fpr == item.sender)
            .ok_or_else(|| Reject::UnknownSender(item.sender.clone()))?;
        if self.journal.get(&item.id)?.is_some() {
            // Delivered before a crash or a lost ack: just confirm again.
            return Ok(Taken::Confirm);
        }
        if self.set_aside.is_set_aside(&item.id) {
            // Failed its checks too often: not fetched or decrypted again.
            return Ok(Taken::Skipped);
        }
        if item.size > self.max_size {
            anyhow::bail!(Reject::TooLarge(item.size, self.max_size));
        }
        let staged = self.download(client, item).await?;
        let me = self.me.clone();
        let cert = fresh.get(&item.sender).cloned().unwrap_or_else(|| sender.cert.clone());
        let target = self.target.clone();
        let journal = self.journal.clone();
        let work = self.work.clone();
        let id = item.id.clone();
        let outbox_host = client.base().host_str().unwrap_or("outbox").to_string();
        let hostname = self.hostname.clone();
        let max_plain = self.max_plain;
        let claims = self.claims.lock().expect("not poisoned").clone();
        let staged2 = staged.clone();
        let forward = self.forward.clone();
        let keyring = self.keyring.clone();
        let result = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&work)?;
            let m = Incoming {
                me: &me,
                sender: &cert,
                staged: &staged2,
                id: &id,
                outbox_host: &outbox_host,
                hostname: &hostname,
                max_plain,
                claims: &claims,
                forward: forward.as_deref(),
                keyring: Some(&keyring),
            };
            deliver::deliver(&m, &target, &journal, &work)
        })
        .await?;
        let _ = tokio::fs::remove_file(&staged).await;
        result?;
        tracing::info!(id = item.id, sender = %item.sender, "delivered");
        self.delivered.send_modify(|n| *n += 1);
        // Durably in the mailbox: the caller acks it (with others).
        Ok(Taken::Delivered)
    }

    /// Ack what is durably delivered, several messages per signed request.
    /// Returns how many re-confirmations could not be sent (they count as
    /// incomplete: the next poll sends them again).
    async fn send_acks(&self, client: &OutboxClient, acks: &mut Vec<(String, bool)>) -> usize {
        if acks.is_empty() {
            return 0;
        }
        let batch = std::mem::take(acks);
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        match client.ack_many(&ids, Some(&self.device)).await {
            Ok(answer) => {
                for id in &answer.not_found {
                    // Unsent or expired meanwhile: nothing to confirm.
                    tracing::debug!(id, "ack: the outbox no longer holds it for us");
                }
                0
            }
            Err(e) => {
                tracing::warn!(acks = ids.len(), "delivered, ack failed (will ack on the next poll): {e}");
                batch.iter().filter(|(_, confirm)| *confirm).count()
            }
        }
    }

    /// Stream the ciphertext to a staging file, checking size and digest.
    /// A partial file left by a broken download is resumed with a Range
    /// request; it is removed only when its content is known to be bad.
    async fn download(&self, client: &OutboxClient, item: &PollItem) -> anyhow::Result<PathBuf> {
        tokio::fs::create_dir_all(&self.staging).await?;
        let path = self.staging.join(format!("{}.part", item.id));
        let limit = item.size.min(self.max_size);
        let mut hasher = Sha256::new();
        let mut have = match tokio::fs::metadata(&path).await {
            Ok(m) if m.len() > 0 && m.len() < limit => {
                let p = path.clone();
                let h = tokio::task::spawn_blocking(move || -> io::Result<Sha256> {
                    let mut h = Sha256::new();
                    io::copy(&mut std::fs::File::open(p)?, &mut h)?;
                    Ok(h)
                })
                .await??;
                hasher = h;
                m.len()
            }
            _ => 0,
        };
        let resp = client.fetch(&item.id, have, limit).await?;
        let mut f = if have > 0 && resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            tracing::info!(id = item.id, offset = have, "resuming a broken download");
            tokio::fs::OpenOptions::new().append(true).open(&path).await?
        } else {
            have = 0;
            hasher = Sha256::new();
            tokio::fs::File::create(&path).await?
        };
        let mut size = have;
        let bar = stubmail::progress::bytes(item.size, &format!("fetching {}…", &item.id[..12]));
        if let Some(b) = &bar {
            b.set_position(have);
        }
        let mut body = resp.bytes_stream().map_err(io::Error::other);
        while let Some(chunk) = body.next().await {
            // A transport error keeps the partial file for the next try.
            let chunk = chunk?;
            size += chunk.len() as u64;
            if let Some(b) = &bar {
                b.set_position(size);
            }
            if size > limit {
                let _ = tokio::fs::remove_file(&path).await;
                anyhow::bail!(Reject::TooLarge(size, limit));
            }
            hasher.update(&chunk);
            f.write_all(&chunk).await?;
        }
        f.flush().await?;
        let got = hex::encode(hasher.finalize());
        if got != item.id {
            let _ = tokio::fs::remove_file(&path).await;
            anyhow::bail!(Reject::Digest(got));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_failing_its_checks_is_set_aside_after_three_tries() {
        let d = tempfile::tempdir().unwrap();
        let set = SetAside::new(d.path().join("rejected"));
        let (id, sender) = ("a".repeat(64), Fpr::parse(&"B".repeat(40)).unwrap());
        for n in 1..SetAside::TRIES {
            assert_eq!(set.record(&id, &sender, "http://o/", "bad signature").unwrap().attempts, n);
            assert!(!set.is_set_aside(&id), "tried again after {n}");
        }
        set.record(&id, &sender, "http://o/", "decrypted message is larger than 1 bytes").unwrap();
        assert!(set.is_set_aside(&id));
        let l = set.list().unwrap();
        assert_eq!((l.len(), l[0].sender.clone(), l[0].attempts), (1, sender, SetAside::TRIES));
        assert!(l[0].reason.contains("larger than"));
    }

    /// A poller over a temporary directory, for these tests.
    fn poller(d: &std::path::Path, me: Arc<Identity>, keyring: stubmail::keyring::Keyring) -> Poller {
        Poller {
            me,
            keyring,
            http: stubmail::client::http_client().unwrap(),
            target: Target::Maildir(stubmail::maildir::Maildir::open(&d.join("Maildir")).unwrap()),
            journal: Journal::open(&d.join("journal")).unwrap(),
            work: d.join("work"),
            staging: d.join("fetch"),
            max_size: 1 << 20,
            deadline: std::time::Duration::from_secs(5),
            hostname: "h".into(),
            max_plain: 1 << 30,
            set_aside: SetAside::new(d.join("rejected")),
            device: "dev".into(),
            overrides: Default::default(),
            failing: Default::default(),
            use_backoff: true,
            lock_path: d.join("poll.lock"),
            udp: Default::default(),
            http_every: std::time::Duration::from_secs(300),
            last_http: Default::default(),
            contact_cache: Default::default(),
            claims: Default::default(),
            refreshed: d.join("refreshed"),
            cert_refresh: std::time::Duration::from_secs(86400),
            blocks: Arc::new(stubmail::blocklist::BlockCache::new(d)),
            delivered: tokio::sync::watch::Sender::new(0),
            forward: None,
        }
    }

    #[tokio::test]
    async fn a_failing_outbox_is_left_alone_for_a_while() {
        let d = tempfile::tempdir().unwrap();
        let me = Arc::new(Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap());
        // A contact whose outbox refuses connections (nothing listens there).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let carol = Identity::generate(None, "carol@example.com", &format!("http://127.0.0.1:{port}/")).unwrap();
        let keyring = stubmail::keyring::Keyring::new(d.path().join("keyring"));
        keyring.import(vec![carol.cert()]).unwrap();
        let p = poller(d.path(), me, keyring);
        // Carol's outbox and Bob's own (mail to himself), both down.
        let r = p.poll_once().await.unwrap();
        assert_eq!((r.outboxes, r.failed_outboxes, r.skipped), (2, 2, 0));
        let r = p.poll_once().await.unwrap();
        assert_eq!((r.outboxes, r.failed_outboxes, r.skipped), (2, 0, 2), "in backoff: not asked again yet");
        // An explicit local override replaces the certificate's outbox.
        let mut p = p;
        p.use_backoff = false;
        p.overrides.insert(carol.fpr(), "http://127.0.0.1:9/".into());
        let r = p.poll_once().await.unwrap();
        assert_eq!(r.failed_outboxes, 1);
        assert!(p.failing.lock().unwrap().contains_key("http://127.0.0.1:9/"));
    }

    #[tokio::test]
    async fn the_contact_cache_follows_the_keyring() {
        let d = tempfile::tempdir().unwrap();
        let me = Arc::new(Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap());
        let keyring = stubmail::keyring::Keyring::new(d.path().join("keyring"));
        let carol = Identity::generate(None, "carol@example.com", "http://c/").unwrap();
        let dave = Identity::generate(None, "dave@example.com", "http://d/").unwrap();
        keyring.import(vec![carol.cert()]).unwrap();
        let own = me.fpr();
        let p = poller(d.path(), me, keyring.clone());
        // The user is always their own contact (mail to oneself).
        assert_eq!(p.contacts().unwrap().iter().filter(|c| c.fpr == own).count(), 1);
        let names = |p: &Poller| {
            p.contacts().unwrap().into_iter().filter(|c| c.fpr != own).map(|c| (c.fpr, c.outbox.unwrap())).collect::<Vec<_>>()
        };
        assert_eq!(names(&p), vec![(carol.fpr(), "http://c/".to_string())]);
        keyring.import(vec![dave.cert()]).unwrap();
        assert_eq!(names(&p).len(), 2, "a new contact is seen");
        keyring.remove("carol@example.com").unwrap();
        assert_eq!(names(&p), vec![(dave.fpr(), "http://d/".to_string())], "a removed one is gone");
        assert_eq!(p.contact_cache.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_refresh_is_due_when_never_made_or_old_enough() {
        let d = tempfile::tempdir().unwrap();
        let me = Arc::new(Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap());
        let p = poller(d.path(), me, stubmail::keyring::Keyring::new(d.path().join("keyring")));
        let (never, just) = (Fpr::parse(&"A".repeat(40)).unwrap(), Fpr::parse(&"B".repeat(40)).unwrap());
        std::fs::create_dir_all(&p.refreshed).unwrap();
        std::fs::write(p.refreshed.join(just.as_str()), b"").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert!(p.refresh_due(&never, hour));
        assert!(!p.refresh_due(&just, hour));
        assert!(p.refresh_due(&just, std::time::Duration::ZERO));
    }

    #[test]
    fn device_id_is_stable_and_a_copied_home_gets_its_own() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let a = device_id(&state).unwrap();
        assert!(stubmail::protocol::is_valid_device(&a));
        assert_eq!(device_id(&state).unwrap(), a);
        // Moved (same file system): the same device.
        let moved = d.path().join("moved");
        std::fs::rename(&state, &moved).unwrap();
        assert_eq!(device_id(&moved).unwrap(), a);
        // Copied: another device.
        let copy = d.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for f in ["device-id", "device-origin"] {
            std::fs::copy(moved.join(f), copy.join(f)).unwrap();
        }
        let b = device_id(&copy).unwrap();
        assert_ne!(a, b);
        assert_eq!(device_id(&copy).unwrap(), b, "and keeps it");
        assert_eq!(device_id(&moved).unwrap(), a, "the original keeps its own");
        // A home from before origins were kept keeps its id.
        let old = d.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("device-id"), "d0123456789abcdef").unwrap();
        assert_eq!(device_id(&old).unwrap(), "d0123456789abcdef");
    }
}
