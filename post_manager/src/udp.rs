//! The outbox's UDP side (docs/PROTOCOL.md §8): the cookie poll service and
//! the notification stub sender. Both are optimisations: if every datagram
//! is lost, mail still moves through signed HTTP polls.
//!
//! Cookies and queued stubs are kept by the store ([`crate::store::UdpState`]),
//! so CGI instances (which issue cookies and queue stubs) and the UDP daemon
//! (`post_manager udp`, or the one inside `serve`) share them, and several
//! instances on one PostgreSQL store share counters (a datagram replayed to
//! another instance is not answered) and stubs (each sent by one of them).
//! They are *soft state*: a lost cookie only costs a signed HTTP poll.
//!
//! Denial of service was the design constraint: a reply is never larger
//! than its request and answers only entries with a valid MAC and a fresh
//! counter (unknown, forged and replayed entries get nothing); each source
//! address has a token bucket; unknown cookie ids cause at most one
//! directory scan per 100 ms; stubs go only to endpoints bound in the
//! recipient's own certificate, signed by the sender, with backoff.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use stubmail::protocol::udp::{self, CookieId, CookieKey, PollStatus, ReplyEntry};
use stubmail::protocol::{Cookie, Fpr};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// A cookie older than this gets "do a signed HTTP poll", which replaces it.
pub const COOKIE_ROTATE: Duration = Duration::from_secs(24 * 3600);
/// Cookie files older than this are deleted by the daemon.
pub const COOKIE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest wait between two sendings of one stub.
pub const STUB_MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// First wait before a stub is sent again.
pub const STUB_FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// Limits of the UDP service.
#[derive(Clone, Copy, Debug)]
pub struct UdpSettings {
    /// Port announced in poll answers (the bound port unless a NAT or a
    /// port forward puts the service elsewhere).
    pub advertise_port: Option<u16>,
    /// Datagrams per second accepted from one source address.
    pub rate_per_source: f64,
    /// Burst allowed above that rate.
    pub burst_per_source: f64,
}

impl Default for UdpSettings {
    fn default() -> Self {
        UdpSettings { advertise_port: None, rate_per_source: 50.0, burst_per_source: 100.0 }
    }
}

pub(crate) fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The running UDP service: announced through the store, read by poll handlers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Advert {
    /// The port clients send polls to.
    pub port: u16,
    /// When the service started (ns since the epoch): cookies issued before
    /// it are unknown to it (it cannot know their last counters).
    pub started_ns: u64,
    pub pid: u32,
}

/// The running UDP service, if any.
pub fn advert(store: &Store) -> Option<Advert> {
    store.udp_advert()
}

/// A cookie as the store keeps it.
#[derive(Clone, Serialize, Deserialize)]
pub struct CookieRecord {
    pub recipient: Fpr,
    #[serde(default)]
    pub device: Option<String>,
    /// The senders the signed poll asked about; the UDP answer is about
    /// them only, so a stranger's mail at a shared outbox does not make
    /// every UDP poll say "mail waiting".
    #[serde(default)]
    pub senders: Option<Vec<Fpr>>,
    /// 32 octets, hex.
    pub key: String,
    pub issued_ns: u64,
}

/// Issue a fresh cookie for a signer of a signed poll; the previous cookie
/// of that recipient's device is revoked.
pub fn issue(store: &Store, recipient: &Fpr, device: Option<&str>, senders: Option<&[Fpr]>) -> io::Result<Cookie> {
    let id: CookieId = rand::random();
    let key: CookieKey = rand::random();
    let (id_hex, key_hex) = (hex::encode(id), hex::encode(key));
    let f = CookieRecord {
        recipient: recipient.clone(),
        device: device.map(str::to_string),
        senders: senders.map(<[Fpr]>::to_vec),
        key: key_hex.clone(),
        issued_ns: wall_ns(),
    };
    store.issue_cookie(&id_hex, &f)?;
    Ok(Cookie { recipient: recipient.clone(), id: id_hex, key: key_hex })
}

/// One source address's token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-source rate limit. The table is bounded: when full, idle entries
/// (whose buckets are full again anyway) are dropped.
struct Limiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    const MAX_SOURCES: usize = 100_000;

    fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= Self::MAX_SOURCES && !self.buckets.contains_key(&src) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if self.buckets.len() >= Self::MAX_SOURCES {
                return false;
            }
        }
        let b = self.buckets.entry(src).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A cookie the service knows.
struct Live {
    file: CookieRecord,
    key: CookieKey,
    /// Highest counter answered; only greater ones are answered again.
    last: u64,
    /// The answer for the inbox as it was at this mtime.
    cache: Option<(u128, bool)>,
}

/// What the service did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub datagrams: u64,
    pub answered: u64,
    pub rate_limited: u64,
    pub malformed: u64,
    pub unknown: u64,
    pub bad_mac: u64,
    pub replayed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Answers UDP polls from the data directory.
pub struct PollService {
    store: Store,
    started_ns: u64,
    cookies: HashMap<CookieId, Live>,
    /// When the store was last asked for new cookies, and its mark then.
    scanned: Option<Instant>,
    mark: u128,
    /// Lookups of unknown cookie ids left in this 100 ms (a backend that is
    /// not scanned is asked per id; random ids must not flood it).
    lookups: (Instant, u32),
    limiter: Limiter,
    pub counters: Counters,
}

impl PollService {
    pub fn new(store: Store, started_ns: u64, settings: &UdpSettings) -> PollService {
        PollService {
            store,
            started_ns,
            cookies: HashMap::new(),
            scanned: None,
            mark: 0,
            lookups: (Instant::now(), 0),
            limiter: Limiter { rate: settings.rate_per_source, burst: settings.burst_per_source.max(1.0), buckets: HashMap::new() },
            counters: Counters::default(),
        }
    }

    /// Answer one datagram from `src`, or stay silent.
    pub fn answer(&mut self, src: IpAddr, req: &[u8]) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.counters.datagrams += 1;
        self.counters.bytes_in += req.len() as u64;
        if !self.limiter.allow(src, now) {
            self.counters.rate_limited += 1;
            return None;
        }
        let Ok(entries) = udp::decode_poll(req) else {
            self.counters.malformed += 1;
            return None;
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if !self.cookies.contains_key(&e.cookie) {
                self.rescan(now);
                self.lookup(&e.cookie, now);
            }
            let Some(live) = self.cookies.get_mut(&e.cookie) else {
                self.counters.unknown += 1;
                continue;
            };
            if !e.verify(&live.key) {
                self.counters.bad_mac += 1;
                continue;
            }
            if e.counter <= live.last {
                self.counters.replayed += 1;
                continue;
            }
            live.last = e.counter;
            // Shared counters (several instances on one database): another
            // instance may have answered this counter already.
            if !self.store.advance_cookie(&hex::encode(e.cookie), e.counter) {
                self.counters.replayed += 1;
                continue;
            }
            let status = Self::status(&self.store, live);
            out.push(ReplyEntry::new(e.cookie, &live.key, e.counter, status));
        }
        if out.is_empty() {
            return None;
        }
        let reply = udp::encode_reply(&out).ok()?;
        // The format guarantees it; this makes it an invariant of the code.
        debug_assert!(reply.len() < req.len());
        if reply.len() >= req.len() {
            return None;
        }
        self.counters.answered += 1;
        self.counters.bytes_out += reply.len() as u64;
        Some(reply)
    }

    fn status(store: &Store, live: &mut Live) -> PollStatus {
        if wall_ns().saturating_sub(live.file.issued_ns) > COOKIE_ROTATE.as_nanos() as u64 {
            return PollStatus::SignedPoll;
        }
        let Some(stamp) = store.inbox_stamp(&live.file.recipient) else {
            return PollStatus::Nothing;
        };
        let mail = match live.cache {
            Some((m, mail)) if m == stamp.value && stamp.exact => mail,
            _ => match store.poll(&live.file.recipient, live.file.senders.as_deref(), live.file.device.as_deref()) {
                Ok(items) => {
                    live.cache = Some((stamp.value, !items.is_empty()));
                    !items.is_empty()
                }
                Err(e) => {
                    tracing::warn!("UDP poll: {e}");
                    return PollStatus::SignedPoll;
                }
            },
        };
        if mail { PollStatus::Mail } else { PollStatus::Nothing }
    }

    /// Ask the store for one unknown cookie, at most 50 times per 100 ms.
    fn lookup(&mut self, id: &CookieId, now: Instant) {
        if self.cookies.contains_key(id) {
            return;
        }
        if now.duration_since(self.lookups.0) >= Duration::from_millis(100) {
            self.lookups = (now, 0);
        }
        if self.lookups.1 >= 50 {
            return;
        }
        self.lookups.1 += 1;
        let Some(f) = self.store.lookup_cookie(&hex::encode(id)) else { return };
        let mut key = [0u8; 32];
        if hex::decode_to_slice(&f.key, &mut key).is_ok() && wall_ns().saturating_sub(f.issued_ns) <= COOKIE_MAX_AGE.as_nanos() as u64 {
            self.cookies.insert(*id, Live { file: f, key, last: 0, cache: None });
        }
    }

    /// Load cookies issued since the last scan (and forget revoked ones),
    /// at most every 100 ms.
    fn rescan(&mut self, now: Instant) {
        if self.scanned.is_some_and(|at| now.duration_since(at) < Duration::from_millis(100)) {
            return;
        }
        self.scanned = Some(now);
        // Issued before this service started: in a data directory their
        // counters are unknown here, so answering could answer a replay.
        // The client falls back to a signed poll and gets a fresh cookie.
        let Some((whole, found)) = self.store.scan_cookies(self.started_ns, &mut self.mark) else { return };
        let wall = wall_ns();
        let mut seen = std::collections::HashSet::new();
        for (hexid, f) in found {
            let mut id = [0u8; 16];
            let mut key = [0u8; 32];
            if hex::decode_to_slice(&hexid, &mut id).is_err() || hex::decode_to_slice(&f.key, &mut key).is_err() {
                continue;
            }
            seen.insert(id);
            self.cookies.entry(id).or_insert(Live { file: f, key, last: 0, cache: None });
        }
        if whole {
            self.cookies.retain(|id, _| seen.contains(id));
        } else {
            self.cookies.retain(|_, l| wall.saturating_sub(l.file.issued_ns) <= COOKIE_MAX_AGE.as_nanos() as u64);
        }
    }
}

/// A stub the outbox (re)sends until the recipient has the message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueuedStub {
    pub id: String,
    pub recipient: Fpr,
    /// `HOST:PORT` from the recipient's certificate.
    pub endpoint: String,
    /// The datagram, base64.
    pub stub: String,
}

/// Queue a stub for the notifier, to the recipient's `k`-th endpoint.
pub fn queue_stub(store: &Store, q: &QueuedStub, k: usize) -> io::Result<()> {
    store.queue_stub(q, k)
}

struct Scheduled {
    stub: QueuedStub,
    datagram: Vec<u8>,
    sent: u32,
    next: Instant,
}

/// Stubs one destination address receives: a burst, then one per this
/// interval. Recipients' keys are made by anyone, so many of them can
/// name one victim's address as their notify endpoint; the outbox must
/// not be the means of flooding it.
pub const STUBS_PER_DESTINATION_BURST: f64 = 10.0;
pub const STUBS_PER_DESTINATION_EVERY: Duration = Duration::from_secs(5);
/// Stubs of one sending account, all destinations together.
pub const STUBS_PER_ACCOUNT_BURST: f64 = 100.0;
pub const STUBS_PER_ACCOUNT_EVERY: Duration = Duration::from_millis(200);

/// A token bucket.
#[derive(Clone, Copy, Debug)]
struct StubBucket {
    tokens: f64,
    at: Instant,
}

impl StubBucket {
    fn take(b: Option<&mut StubBucket>, burst: f64, every: Duration, now: Instant) -> (bool, StubBucket) {
        let mut x = b.copied().unwrap_or(StubBucket { tokens: burst, at: now });
        x.tokens = (x.tokens + now.duration_since(x.at).as_secs_f64() / every.as_secs_f64()).min(burst);
        x.at = now;
        let ok = x.tokens >= 1.0;
        if ok {
            x.tokens -= 1.0;
        }
        (ok, x)
    }
}

/// Sends queued stubs with backoff until the recipient's ack or expiry.
pub struct Notifier {
    store: Store,
    socket: UdpSocket,
    queue: HashMap<String, Scheduled>,
    /// When the store was last asked for stubs, and its mark then.
    scanned: Option<Instant>,
    mark: u128,
    renewed: Instant,
    resolved: HashMap<String, (Option<SocketAddr>, Instant)>,
    /// Token buckets by destination address and by sending account.
    per_destination: HashMap<IpAddr, StubBucket>,
    per_account: HashMap<String, StubBucket>,
    pub sent: u64,
    /// Stubs put off by the rate limits (sent later).
    pub deferred: u64,
}

impl Notifier {
    pub fn new(store: Store, socket: UdpSocket) -> Notifier {
        Notifier {
            store,
            socket,
            queue: HashMap::new(),
            scanned: None,
            mark: 0,
            renewed: Instant::now(),
            resolved: HashMap::new(),
            per_destination: HashMap::new(),
            per_account: HashMap::new(),
            sent: 0,
            deferred: 0,
        }
    }

    fn scan(&mut self, now: Instant) {
        // Under load the queue changes all the time: ask at most ten times
        // a second.
        if self.scanned.is_some_and(|at| now.duration_since(at) < Duration::from_millis(100)) {
            return;
        }
        self.scanned = Some(now);
        if now.duration_since(self.renewed) > Duration::from_secs(5) {
            self.store.renew_stubs();
            self.renewed = now;
        }
        let queue = &self.queue;
        let found = self.store.claim_stubs(&mut self.mark, &mut |n| queue.contains_key(n));
        use base64::Engine as _;
        for (name, stub) in found {
            match base64::engine::general_purpose::STANDARD.decode(&stub.stub) {
                Ok(datagram) => {
                    self.queue.insert(name, Scheduled { stub, datagram, sent: 0, next: now });
                }
                Err(_) => self.store.drop_stub(&name),
            }
        }
    }

    fn resolve(&mut self, endpoint: &str, now: Instant) -> Option<SocketAddr> {
        if let Some((a, at)) = self.resolved.get(endpoint)
            && now.duration_since(*at) < Duration::from_secs(300) {
                return *a;
            }
        let a = endpoint.to_socket_addrs().ok().and_then(|mut it| it.next());
        self.resolved.insert(endpoint.to_string(), (a, now));
        a
    }

    /// Send what is due; returns when the next stub is due.
    pub fn tick(&mut self) -> Option<Instant> {
        let now = Instant::now();
        self.scan(now);
        let due: Vec<String> = self.queue.iter().filter(|(_, s)| s.next <= now).map(|(k, _)| k.clone()).collect();
        for name in due {
            let Some(s) = self.queue.get(&name) else { continue };
            let (id, rcpt) = (s.stub.id.clone(), s.stub.recipient.clone());
            let pending = matches!(self.store.recipient_state(&id, &rcpt), Ok(Some(st)) if st.is_pending());
            if !pending {
                // Retrieved, expired, unsent or gone: stop sending.
                self.store.drop_stub(&name);
                self.queue.remove(&name);
                continue;
            }
            let endpoint = s.stub.endpoint.clone();
            let addr = self.resolve(&endpoint, now);
            // Both limits must allow it; otherwise it waits a second and
            // counts as neither sent nor tried.
            if let Some(a) = addr {
                let account = udp::Stub::decode(&self.queue[&name].datagram).map(|(st, _, _)| st.sender.to_string()).unwrap_or_default();
                let (d_ok, d) = StubBucket::take(self.per_destination.get_mut(&a.ip()), STUBS_PER_DESTINATION_BURST, STUBS_PER_DESTINATION_EVERY, now);
                let (a_ok, b) = StubBucket::take(self.per_account.get_mut(&account), STUBS_PER_ACCOUNT_BURST, STUBS_PER_ACCOUNT_EVERY, now);
                if !(d_ok && a_ok) {
                    self.deferred += 1;
                    if let Some(s) = self.queue.get_mut(&name) {
                        s.next = now + Duration::from_secs(1);
                    }
                    continue;
                }
                if self.per_destination.len() > 100_000 {
                    self.per_destination.clear();
                }
                if self.per_account.len() > 100_000 {
                    self.per_account.clear();
                }
                self.per_destination.insert(a.ip(), d);
                self.per_account.insert(account, b);
            }
            let Some(s) = self.queue.get_mut(&name) else { continue };
            if let Some(addr) = addr {
                match self.socket.send_to(&s.datagram, addr) {
                    Ok(_) => self.sent += 1,
                    Err(e) => tracing::debug!(endpoint, "stub not sent: {e}"),
                }
            }
            let first = s.sent == 0;
            s.sent += 1;
            let wait = STUB_FIRST_BACKOFF.saturating_mul(1 << (s.sent - 1).min(12)).min(STUB_MAX_BACKOFF);
            s.next = now + wait;
            if first && let Err(e) = self.store.mark_notified(&id, &rcpt, stubmail::time::unix_now()) {
                tracing::warn!(id, "cannot record the notification: {e}");
            }
        }
        self.queue.values().map(|s| s.next).min()
    }
}

/// Run the UDP service on `socket` until `shutdown`: one thread answers
/// polls, another sends stubs. Blocking I/O in plain threads: each
/// datagram is a few syscalls and a hash, nothing to await.
pub fn run(socket: UdpSocket, store: Store, settings: UdpSettings, shutdown: CancellationToken) -> io::Result<()> {
    let local = socket.local_addr()?;
    let started_ns = wall_ns();
    let advert = Advert { port: settings.advertise_port.unwrap_or(local.port()), started_ns, pid: std::process::id() };
    store.set_udp_advert(Some(&advert))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let notify_socket = socket.try_clone()?;
    let (st, sd) = (store.clone(), shutdown.clone());
    let notifier = std::thread::Builder::new().name("stubs".into()).spawn(move || {
        let mut n = Notifier::new(st, notify_socket);
        while !sd.is_cancelled() {
            let next = n.tick();
            // Stubs queued by an upload go out within ~50 ms.
            let wait = next.map_or(Duration::from_millis(50), |t| t.saturating_duration_since(Instant::now()));
            std::thread::sleep(wait.clamp(Duration::from_millis(1), Duration::from_millis(50)));
        }
    })?;
    let mut svc = PollService::new(store.clone(), started_ns, &settings);
    let mut buf = [0u8; 2048];
    let mut announced = Instant::now();
    while !shutdown.is_cancelled() {
        if announced.elapsed() > Duration::from_secs(10) {
            announced = Instant::now();
            if let Err(e) = store.set_udp_advert(Some(&advert)) {
                tracing::warn!("cannot announce the UDP service: {e}");
            }
        }
        match socket.recv_from(&mut buf) {
            Ok((n, src)) => {
                if let Some(reply) = svc.answer(src.ip(), &buf[..n]) {
                    let _ = socket.send_to(&reply, src);
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            Err(e) => tracing::debug!("UDP receive: {e}"),
        }
    }
    let _ = notifier.join();
    if let Err(e) = store.set_udp_advert(None) {
        tracing::warn!("cannot withdraw the UDP service's advert: {e}");
    }
    tracing::info!(?svc.counters, "UDP service stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stubmail::protocol::udp::{decode_reply, encode_poll, PollEntry};

    fn fpr(c: char) -> Fpr {
        Fpr::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn setup() -> (tempfile::TempDir, Store, PollService) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let svc = PollService::new(store.clone(), 0, &UdpSettings { rate_per_source: 1000.0, burst_per_source: 1000.0, ..Default::default() });
        (d, store, svc)
    }

    fn poll(c: &Cookie, counter: u64) -> Vec<u8> {
        let (id, key) = c.decode().unwrap();
        encode_poll(&[PollEntry::new(id, &key, counter)]).unwrap()
    }

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn answers_only_fresh_authentic_entries() {
        let (_d, store, mut svc) = setup();
        let c = issue(&store, &fpr('B'), Some("dev1"), None).unwrap();
        let (id, key) = c.decode().unwrap();
        let req = poll(&c, 10);
        let rep = svc.answer(SRC, &req).expect("an answer");
        assert!(rep.len() < req.len());
        let e = decode_reply(&rep).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].verify(&key, 10));
        assert_eq!(e[0].status, PollStatus::Nothing);
        assert_eq!(svc.answer(SRC, &req), None, "a replay");
        assert_eq!(svc.answer(SRC, &poll(&c, 9)), None, "an older counter");
        assert!(svc.answer(SRC, &poll(&c, 11)).is_some());
        let mut forged = poll(&c, 12);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(svc.answer(SRC, &forged), None, "a bad MAC");
        assert!(svc.answer(SRC, &poll(&c, 12)).is_some(), "the forgery did not burn the counter");
        let guessed = encode_poll(&[PollEntry::new(rand::random(), &key, 13)]).unwrap();
        assert_eq!(svc.answer(SRC, &guessed), None, "a guessed cookie id");
        let wrong_key = encode_poll(&[PollEntry::new(id, &rand::random(), 14)]).unwrap();
        assert_eq!(svc.answer(SRC, &wrong_key), None, "a guessed key");
        assert_eq!(svc.counters.replayed, 2);
        assert_eq!(svc.counters.bad_mac, 2);
        assert_eq!(svc.counters.unknown, 1);
        assert!(svc.counters.bytes_out < svc.counters.bytes_in);
    }

    #[test]
    fn a_new_cookie_revokes_the_old_one_and_mail_is_reported() {
        let (_d, store, mut svc) = setup();
        let (alice, carol) = (fpr('A'), fpr('C'));
        let old = issue(&store, &fpr('B'), Some("dev1"), Some(std::slice::from_ref(&alice))).unwrap();
        assert!(svc.answer(SRC, &poll(&old, 1)).is_some());
        let new = issue(&store, &fpr('B'), Some("dev1"), Some(std::slice::from_ref(&alice))).unwrap();
        svc.scanned = None; // as if 100 ms passed
        svc.mark = 0;
        assert!(svc.answer(SRC, &poll(&new, 1)).is_some());
        assert_eq!(svc.answer(SRC, &poll(&old, 2)), None, "revoked");
        // Mail from a sender the cookie does not ask about is not news.
        let body = b"ciphertext";
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        store.put(&carol, &id, &[fpr('B')], &mut &body[..], 1 << 20, 1).unwrap();
        let st = |svc: &mut PollService, n| decode_reply(&svc.answer(SRC, &poll(&new, n)).unwrap()).unwrap()[0].status;
        assert_eq!(st(&mut svc, 2), PollStatus::Nothing);
        let id2 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"from alice"));
        store.put(&alice, &id2, &[fpr('B')], &mut &b"from alice"[..], 1 << 20, 1).unwrap();
        assert_eq!(st(&mut svc, 3), PollStatus::Mail);
        store.ack(&fpr('B'), &id2, Some("dev1"), 2).unwrap();
        assert_eq!(st(&mut svc, 4), PollStatus::Nothing, "acked by this device");
    }

    #[test]
    fn cookies_from_before_the_service_started_are_unknown() {
        let (_d, store, _) = setup();
        let c = issue(&store, &fpr('B'), None, None).unwrap();
        let mut svc = PollService::new(store, wall_ns() + 1, &UdpSettings::default());
        assert_eq!(svc.answer(SRC, &poll(&c, 1)), None);
    }

    #[test]
    fn each_source_is_rate_limited() {
        let (_d, store, _) = setup();
        let c = issue(&store, &fpr('B'), None, None).unwrap();
        let mut svc = PollService::new(store, 0, &UdpSettings { rate_per_source: 0.001, burst_per_source: 5.0, ..Default::default() });
        let answered = (1..=20).filter(|n| svc.answer(SRC, &poll(&c, *n)).is_some()).count();
        assert_eq!(answered, 5);
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        assert!(svc.answer(other, &poll(&c, 21)).is_some(), "another source has its own bucket");
    }

    #[test]
    fn many_recipients_naming_one_victims_address_get_it_a_trickle_not_a_flood() {
        let (_d, store, _) = setup();
        let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
        victim.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        use base64::Engine as _;
        // 200 throwaway recipients, each with a message waiting, all naming
        // the victim's address.
        for i in 0..200u32 {
            let r = Fpr::parse(&format!("{:040X}", i + 1)).unwrap();
            let body = format!("ciphertext {i}");
            let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
            store.put(&fpr('A'), &id, std::slice::from_ref(&r), &mut body.as_bytes(), 1 << 20, 1).unwrap();
            let q = QueuedStub {
                id,
                recipient: r,
                endpoint: victim.local_addr().unwrap().to_string(),
                stub: base64::engine::general_purpose::STANDARD.encode(b"SMN1 stub bytes"),
            };
            queue_stub(&store, &q, 0).unwrap();
        }
        let mut n = Notifier::new(store, UdpSocket::bind("127.0.0.1:0").unwrap());
        for _ in 0..5 {
            n.tick();
        }
        let mut got = 0;
        let mut buf = [0u8; 64];
        while victim.recv(&mut buf).is_ok() {
            got += 1;
        }
        assert_eq!(got, STUBS_PER_DESTINATION_BURST as usize, "a burst, then one per {STUBS_PER_DESTINATION_EVERY:?}");
        assert!(n.deferred >= 190, "the rest wait: {}", n.deferred);
    }

    #[test]
    fn stubs_are_resent_with_backoff_until_the_recipient_has_the_message() {
        let (_d, store, _) = setup();
        let bob = fpr('B');
        let body = b"ciphertext for bob";
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        store.put(&fpr('A'), &id, std::slice::from_ref(&bob), &mut &body[..], 1 << 20, 1).unwrap();
        let endpoint = UdpSocket::bind("127.0.0.1:0").unwrap();
        endpoint.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        use base64::Engine as _;
        let q = QueuedStub {
            id: id.clone(),
            recipient: bob.clone(),
            endpoint: endpoint.local_addr().unwrap().to_string(),
            stub: base64::engine::general_purpose::STANDARD.encode(b"SMN1 stub bytes"),
        };
        queue_stub(&store, &q, 0).unwrap();
        let mut n = Notifier::new(store.clone(), UdpSocket::bind("127.0.0.1:0").unwrap());
        let mut buf = [0u8; 64];
        let next = n.tick().expect("scheduled again");
        assert_eq!(endpoint.recv(&mut buf).unwrap(), 15, "sent at once");
        assert!(next > Instant::now() + Duration::from_secs(1), "then after a backoff");
        assert_eq!(store.recipient_state(&id, &bob).unwrap(), Some(stubmail::protocol::DeliveryState::Notified));
        n.tick();
        assert!(endpoint.recv(&mut buf).is_err(), "nothing before the backoff ends");
        // Each wait doubles.
        let waits: Vec<Duration> = (0..3)
            .map(|_| {
                for s in n.queue.values_mut() {
                    s.next = Instant::now();
                }
                let next = n.tick().unwrap();
                endpoint.recv(&mut buf).unwrap();
                next.saturating_duration_since(Instant::now())
            })
            .collect();
        assert!(waits[0] > Duration::from_secs(3) && waits[1] > Duration::from_secs(7) && waits[2] > Duration::from_secs(15), "{waits:?}");
        // Retrieved: the stub is dropped, not sent again.
        store.ack(&bob, &id, None, 2).unwrap();
        for s in n.queue.values_mut() {
            s.next = Instant::now();
        }
        assert_eq!(n.tick(), None);
        assert!(endpoint.recv(&mut buf).is_err());
        assert!(store.claim_stubs(&mut 0, &mut |_| false).is_empty(), "no stub left");
        assert_eq!(n.sent, 4);
    }
}
