//! Notification stubs (docs/PROTOCOL.md §8): a contact's outbox says "I
//! have mail for you", so we poll it now instead of at the next interval.
//!
//! A stub never carries content and never names where to poll: for a
//! contact we poll the outbox bound in *their certificate*, after checking
//! the stub's signature with it. A stub from a stranger is dropped, or, with
//! first contact enabled, held in a bounded quarantine until the user
//! decides (`stubmail intro`); nothing is fetched before that, and nothing
//! at all is fetched on the word of an unauthenticated datagram.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use stubmail::keyring::Keyring;
use stubmail::pgp;
use stubmail::protocol::udp::{Stub, MAX_DATAGRAM};
use stubmail::protocol::Fpr;
use tokio_util::sync::CancellationToken;

/// Stubs made longer ago than this are ignored (the outbox's retention).
const MAX_STUB_AGE: i64 = 31 * 86400;
/// Clock difference tolerated for a stub made "in the future".
const MAX_STUB_FUTURE: i64 = 86400;
/// The turned-away record is written at most this often (a flood of
/// strangers must not become a flood of file writes).
const TURNED_AWAY_FLUSH: Duration = Duration::from_secs(5);
/// Stubs remembered, so a replayed one causes nothing.
const SEEN_STUBS: usize = 4096;

/// A stranger's introduction: what their stubs claim, unverified until
/// the user accepts (then the certificate is fetched from `outbox` and the
/// stubs' signatures are checked with it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Intro {
    pub sender: Fpr,
    /// The outbox URL the stubs name.
    pub outbox: String,
    /// Unix time of the first stub.
    pub first_seen: i64,
    pub stubs: Vec<HeldStub>,
    /// Stubs refused because this stranger had `max_per_sender` held
    /// already (shown by `stubmail intro list`).
    #[serde(default)]
    pub over_limit: u64,
    /// Unix time of the last of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_over_limit: Option<i64>,
    /// The certificate a stub carried (binary, base64), which proved it:
    /// its fingerprint is the sender's, it binds `outbox`, and it verifies
    /// the stub's signature. `None`: nothing proves the stubs yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
}

impl Intro {
    /// The certificate that proved these stubs, if one did.
    pub fn proven_by(&self) -> Option<stubmail::openpgp::Cert> {
        let b = base64::engine::general_purpose::STANDARD.decode(self.cert.as_deref()?).ok()?;
        pgp::parse_certs(&b).ok()?.into_iter().next()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldStub {
    pub id: String,
    pub size: u64,
    /// When the sender says it made the stub.
    pub made: i64,
    /// The datagram, base64: its signature is checked on acceptance.
    pub datagram: String,
}

impl HeldStub {
    /// The signed octets and the signature.
    pub fn parts(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let raw = base64::engine::general_purpose::STANDARD.decode(&self.datagram).ok()?;
        let (_, signed, sig) = Stub::decode(&raw).ok()?;
        Some((signed.to_vec(), sig.to_vec()))
    }
}

/// A stranger's certificate, for an introduction being accepted: fetched
/// from the outbox the stubs named, and taken only if its fingerprint is
/// the stubs' sender's, it binds that outbox, and it verifies one of the
/// held stubs' signatures (else the stubs were not theirs to make).
pub async fn introduced_cert(http: &reqwest::Client, intro: &Intro, deadline: Duration) -> anyhow::Result<stubmail::openpgp::Cert> {
    use anyhow::Context;
    let f = &intro.sender;
    let bytes = stubmail::client::OutboxClient::account_cert(http, &intro.outbox, f, deadline)
        .await
        .with_context(|| format!("fetching {f}'s certificate from {}", intro.outbox))?;
    let cert = pgp::parse_certs(&bytes)?
        .into_iter()
        .find(|c| pgp::fpr_of(c) == *f)
        .with_context(|| format!("{} served no certificate with fingerprint {f}", intro.outbox))?;
    check_introduced(intro, &cert)?;
    Ok(cert)
}

/// Is `cert` the one an introduction's stubs claim: the sender's, usable,
/// binding the outbox the stubs name, and verifying one of them?
pub fn check_introduced(intro: &Intro, cert: &stubmail::openpgp::Cert) -> anyhow::Result<()> {
    use anyhow::Context;
    let f = &intro.sender;
    if pgp::fpr_of(cert) != *f {
        anyhow::bail!("the certificate is {}, not {f}'s", pgp::fpr_of(cert));
    }
    pgp::check_contact(cert).with_context(|| format!("{f}'s certificate is not usable"))?;
    let bound = pgp::outbox_of(&cert).unwrap_or_default();
    if bound.trim_end_matches('/') != intro.outbox.trim_end_matches('/') {
        anyhow::bail!("{f}'s certificate binds outbox {bound:?}, not {:?} as the stubs claimed; not accepted", intro.outbox);
    }
    let signed = intro.stubs.iter().filter_map(|s| s.parts()).any(|(data, sig)| pgp::verify_detached(cert, &data, &sig).is_ok());
    if !signed {
        anyhow::bail!("none of the held stubs is signed by {f}: they were forged; not accepted");
    }
    Ok(())
}

/// Check the certificate a stranger's stub carries: one certificate, the
/// sender's, usable, binding the outbox the stub names, verifying the
/// stub. What proves nothing is refused, naming why.
fn prove(stub: &Stub, signed: &[u8], sig: &[u8], carried: &[u8]) -> Result<(), &'static str> {
    let mut certs = pgp::parse_certs(carried).map_err(|_| "a stranger's stub carries no readable certificate")?;
    if certs.len() != 1 {
        return Err("a stranger's stub carries other than one certificate");
    }
    let cert = certs.remove(0);
    if pgp::fpr_of(&cert) != stub.sender {
        return Err("a stranger's stub carries someone else's certificate");
    }
    if pgp::check_contact(&cert).is_err() {
        return Err("a stranger's stub carries an unusable certificate");
    }
    if pgp::outbox_of(&cert).is_none_or(|o| o.trim_end_matches('/') != stub.outbox.trim_end_matches('/')) {
        return Err("a stranger's stub names an outbox its certificate does not bind");
    }
    pgp::verify_detached(&cert, signed, sig).map_err(|_| "a stranger's stub is not signed by the certificate it carries")
}

/// What became of a stranger's stub.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    New,
    Added,
    Duplicate,
    SenderFull,
    QuarantineFull,
    Rejected,
    /// An unproven stub naming another outbox than the one a certificate
    /// proved for this sender: forged, dropped.
    Contradicts,
}

/// Strangers' stubs the quarantine could not take, kept for
/// `stubmail intro list` in `state/quarantine/turned-away.json`: the
/// quarantine was full (`notify.max_senders`), or their source address had
/// introduced `notify.new_strangers_per_source_hour` strangers already.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnedAway {
    /// Stubs of new strangers refused because the quarantine was full.
    pub quarantine_full: u64,
    /// Unix time of the last of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_quarantine_full: Option<i64>,
    /// Stubs of new strangers refused because their source was past its
    /// hourly number of new strangers.
    pub source_over_limit: u64,
    /// Unix time of the last of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_source_over_limit: Option<i64>,
    /// The source addresses refused so, with their counts (the 16 most
    /// refused).
    #[serde(default)]
    pub sources: BTreeMap<String, u64>,
}

impl TurnedAway {
    const MAX_SOURCES: usize = 16;

    /// Count one more refusal of `src`. The table keeps the most refused
    /// sources by Space-Saving (Metwally et al.): a new source takes the
    /// place of the least counted with that count plus one, so a heavy
    /// source cannot be kept out by earlier ones (its count may be high by
    /// at most the count it took over).
    fn count_source(&mut self, src: IpAddr, now: i64) {
        self.source_over_limit += 1;
        self.last_source_over_limit = Some(now);
        let key = src.to_string();
        if let Some(n) = self.sources.get_mut(&key) {
            *n += 1;
        } else if self.sources.len() < Self::MAX_SOURCES {
            self.sources.insert(key, 1);
        } else if let Some((least, n)) = self.sources.iter().min_by_key(|(k, n)| (**n, (*k).clone())).map(|(k, n)| (k.clone(), *n)) {
            self.sources.remove(&least);
            self.sources.insert(key, n + 1);
        }
    }
}

/// The quarantine: `state/quarantine/<FPR>.json`, and
/// `state/quarantine/rejected/<FPR>` for strangers the user turned away.
#[derive(Clone, Debug)]
pub struct Quarantine {
    dir: PathBuf,
    pub max_per_sender: usize,
    pub max_senders: usize,
}

impl Quarantine {
    pub fn open(state_dir: &Path, max_per_sender: usize, max_senders: usize) -> io::Result<Quarantine> {
        let dir = state_dir.join("quarantine");
        stubmail::fsutil::ensure_private_dir(&dir.join("rejected"))?;
        Ok(Quarantine { dir, max_per_sender, max_senders })
    }

    fn file(&self, f: &Fpr) -> PathBuf {
        self.dir.join(format!("{f}.json"))
    }

    /// Every held introduction, oldest first.
    pub fn list(&self) -> io::Result<Vec<Intro>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let Some(f) = intro_of(&name) else { continue };
            if let Some(i) = self.get(&f) {
                out.push(i);
            }
        }
        out.sort_by_key(|i| i.first_seen);
        Ok(out)
    }

    pub fn get(&self, f: &Fpr) -> Option<Intro> {
        serde_json::from_slice(&std::fs::read(self.file(f)).ok()?).ok()
    }

    pub fn is_rejected(&self, f: &Fpr) -> bool {
        self.dir.join("rejected").join(f.as_str()).exists()
    }

    /// Hold a stranger's stub, within the limits. `proof`: the certificate
    /// it carried, checked (`prove`). A proven stub replaces what unproven
    /// ones claimed (anyone can send those, naming any outbox); an unproven
    /// one never changes what a certificate proved.
    pub fn hold(&self, stub: &Stub, datagram: &[u8], proof: Option<&[u8]>, now: i64) -> io::Result<Held> {
        if self.is_rejected(&stub.sender) {
            return Ok(Held::Rejected);
        }
        let held = HeldStub {
            id: stub.id.clone(),
            size: stub.size,
            made: stub.made,
            datagram: base64::engine::general_purpose::STANDARD.encode(datagram),
        };
        let proof = proof.map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        let existing = match self.get(&stub.sender) {
            Some(i) if i.cert.is_none() && proof.is_some() => {
                // Started by unproven stubs: what they claimed goes.
                self.remove(&stub.sender)?;
                None
            }
            Some(i) if i.cert.is_some() && i.outbox.trim_end_matches('/') != stub.outbox.trim_end_matches('/') => return Ok(Held::Contradicts),
            e => e,
        };
        let (intro, result) = match existing {
            Some(mut i) => {
                if i.stubs.iter().any(|s| s.id == stub.id) {
                    return Ok(Held::Duplicate);
                }
                if i.stubs.len() >= self.max_per_sender {
                    // Counted, so the user sees who pushes past the limit.
                    // At most one write per stub the source rate lets in.
                    i.over_limit += 1;
                    i.last_over_limit = Some(now);
                    stubmail::fsutil::write_atomic(&self.file(&stub.sender), &serde_json::to_vec_pretty(&i).expect("serialisable"), 0o600)?;
                    return Ok(Held::SenderFull);
                }
                i.stubs.push(held);
                (i, Held::Added)
            }
            None => {
                // Introductions only (`<FPR>.json`, not `turned-away.json`).
                let n = std::fs::read_dir(&self.dir)?
                    .filter(|e| e.as_ref().is_ok_and(|e| intro_of(&e.file_name()).is_some()))
                    .count();
                if n >= self.max_senders {
                    return Ok(Held::QuarantineFull);
                }
                (
                    Intro {
                        sender: stub.sender.clone(),
                        outbox: stub.outbox.clone(),
                        first_seen: now,
                        stubs: vec![held],
                        over_limit: 0,
                        last_over_limit: None,
                        cert: proof,
                    },
                    Held::New,
                )
            }
        };
        stubmail::fsutil::write_atomic(&self.file(&stub.sender), &serde_json::to_vec_pretty(&intro).expect("serialisable"), 0o600)?;
        Ok(result)
    }

    fn turned_away_file(&self) -> PathBuf {
        self.dir.join("turned-away.json")
    }

    /// Strangers turned away so far (empty if none, or unreadable).
    pub fn turned_away(&self) -> TurnedAway {
        stubmail::fsutil::read_bounded(&self.turned_away_file(), 64 * 1024)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_turned_away(&self, t: &TurnedAway) -> io::Result<()> {
        stubmail::fsutil::write_atomic(&self.turned_away_file(), &serde_json::to_vec_pretty(t).expect("serialisable"), 0o600)
    }

    /// Forget an introduction (accepted: the sender is now a contact).
    pub fn remove(&self, f: &Fpr) -> io::Result<bool> {
        match std::fs::remove_file(self.file(f)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Turn a stranger away: forget their stubs and drop future ones.
    pub fn reject(&self, f: &Fpr) -> io::Result<bool> {
        let had = self.remove(f)?;
        stubmail::fsutil::write_atomic(&self.dir.join("rejected").join(f.as_str()), b"", 0o600)?;
        Ok(had)
    }
}

/// The stranger an introduction file (`<FPR>.json`) is for; `None` for
/// anything else in the quarantine (`turned-away.json`, `rejected/`).
fn intro_of(name: &std::ffi::OsStr) -> Option<Fpr> {
    name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| Fpr::parse(n).ok())
}

/// The longest `notify.contact_poll_spacing_ms` taken (an hour): more
/// would overflow the clock's arithmetic, and means "never" anyway.
pub const MAX_CONTACT_SPACING: Duration = Duration::from_secs(3600);

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A contact's authentic stub: poll their outbox now.
    Poll(Fpr),
    /// A contact's authentic stub, but their outbox was polled moments
    /// ago: poll it once more after this delay.
    PollLater(Fpr, Duration),
    /// A stranger's stub, now in quarantine.
    Held(Held),
    /// Ignored, and why (for the debug log).
    Dropped(&'static str),
}

/// Judges incoming stubs.
pub struct Judge {
    pub me: Fpr,
    /// The user's own certificate: their stubs (mail to oneself, sent
    /// from another device) are a contact's.
    pub own: Option<stubmail::openpgp::Cert>,
    pub keyring: Keyring,
    /// Present when first contact is enabled.
    pub quarantine: Option<Quarantine>,
    /// The user's blocklist: a blocked sender's or outbox's stub causes
    /// nothing, not even a place in the quarantine.
    pub blocks: Option<std::sync::Arc<stubmail::blocklist::BlockCache>>,
    /// New strangers one source may introduce per hour
    /// (`notify.new_strangers_per_source_hour`).
    pub strangers_per_hour: u32,
    /// Stubs taken from one source per minute (`notify.stubs_per_source_minute`).
    pub stubs_per_minute: u32,
    /// Polls one contact's stubs may cause: at most one per this interval
    /// (`notify.contact_poll_spacing_ms`).
    pub contact_spacing: Duration,
    /// Strangers turned away (None: not read yet), when the record was
    /// last written, and whether it has counts not written yet.
    turned_away: Option<TurnedAway>,
    turned_written: Option<Instant>,
    turned_dirty: bool,
    /// Where contacts' authentic stubs are kept (`state/stubs/<id>.<FPR>`),
    /// the sender's signed word for a report of that message.
    pub evidence: Option<PathBuf>,
    /// New strangers per source address in the current hour.
    strangers: HashMap<IpAddr, (u32, Instant)>,
    /// Stubs per source address in the current minute.
    sources: HashMap<IpAddr, (u32, Instant)>,
    /// Stubs already acted on (sender, message id, made): a replay of a
    /// captured stub triggers nothing. Bounded by [`SEEN_STUBS`].
    seen: HashMap<(Fpr, String, i64), Instant>,
    /// When each contact's outbox is (or is scheduled to be) polled next
    /// because of a stub.
    polled: HashMap<Fpr, Instant>,
}

impl Judge {
    pub fn new(me: Fpr, keyring: Keyring, quarantine: Option<Quarantine>) -> Judge {
        let d = stubmail::config::NotifyConfig::default();
        Judge {
            me,
            own: None,
            keyring,
            quarantine,
            blocks: None,
            strangers_per_hour: d.new_strangers_per_source_hour,
            stubs_per_minute: d.stubs_per_source_minute,
            contact_spacing: Duration::from_millis(d.contact_poll_spacing_ms),
            turned_away: None,
            turned_written: None,
            turned_dirty: false,
            evidence: None,
            sources: HashMap::new(),
            strangers: HashMap::new(),
            seen: HashMap::new(),
            polled: HashMap::new(),
        }
    }

    pub fn judge(&mut self, src: IpAddr, datagram: &[u8], now: i64) -> Verdict {
        if datagram.len() > MAX_DATAGRAM {
            return Verdict::Dropped("oversized");
        }
        // Before any parsing or signature check: one source cannot make
        // the listener work without bound.
        if !take(&mut self.sources, src, self.stubs_per_minute, Duration::from_secs(60)) {
            return Verdict::Dropped("too many stubs from this address");
        }
        // A stub may carry its sender's certificate (a stranger's proof,
        // `split_cert`); the stub itself is what is held and kept.
        let Ok((datagram, carried)) = stubmail::protocol::udp::split_cert(datagram) else {
            return Verdict::Dropped("malformed");
        };
        let Ok((stub, signed, sig)) = Stub::decode(datagram) else {
            return Verdict::Dropped("malformed");
        };
        if stub.recipient != self.me {
            return Verdict::Dropped("for someone else");
        }
        if stub.made < now - MAX_STUB_AGE || stub.made > now + MAX_STUB_FUTURE {
            return Verdict::Dropped("stale");
        }
        let cert = match &self.own {
            Some(c) if stub.sender == self.me => Ok(Some(c.clone())),
            _ => self.keyring.get(&stub.sender),
        };
        let blocks = match self.blocks.as_ref().map(|b| b.get()) {
            None => None,
            Some(Ok(b)) => Some(b).filter(|b| !b.is_empty() && stub.sender != self.me),
            // Fail closed: nothing is acted on until the user fixes it.
            Some(Err(_)) if stub.sender != self.me => return Verdict::Dropped("the blocklist is unreadable"),
            Some(Err(_)) => None,
        };
        // The outbox the stub names (a stranger's claim, unverified: it
        // can only make a block apply, never lift one).
        if let Some(b) = &blocks
            && b.check(&stubmail::blocklist::Who { sender: &stub.sender, outbox: Some(&stub.outbox), emails: &[] }).is_some()
        {
            return Verdict::Dropped("blocked");
        }
        match cert {
            Ok(Some(cert)) => {
                if pgp::check_contact(&cert).is_err() {
                    return Verdict::Dropped("the contact's certificate is not usable (expired or revoked?)");
                }
                if let Some(b) = &blocks {
                    let (emails, outbox) = (pgp::all_emails_of(&cert), pgp::outbox_of(&cert));
                    let who = stubmail::blocklist::Who { sender: &stub.sender, outbox: outbox.as_deref(), emails: &emails };
                    if b.check(&who).is_some() {
                        return Verdict::Dropped("blocked");
                    }
                }
                match pgp::verify_detached(&cert, signed, sig) {
                    Ok(()) => {
                        self.keep(&stub, datagram);
                        self.schedule(&stub, Instant::now())
                    }
                    Err(_) => Verdict::Dropped("bad signature"),
                }
            }
            Ok(None) => {
                let Some(q) = &self.quarantine else { return Verdict::Dropped("stranger") };
                if q.get(&stub.sender).is_none()
                    && !q.is_rejected(&stub.sender)
                    && !take(&mut self.strangers, src, self.strangers_per_hour, Duration::from_secs(3600))
                {
                    self.turn_away(|t| t.count_source(src, now));
                    return Verdict::Dropped("too many strangers from this address");
                }
                if let Some(c) = carried
                    && let Err(why) = prove(&stub, signed, sig, c)
                {
                    return Verdict::Dropped(why);
                }
                match q.hold(&stub, datagram, carried, now) {
                    Ok(Held::QuarantineFull) => {
                        self.turn_away(|t| {
                            t.quarantine_full += 1;
                            t.last_quarantine_full = Some(now);
                        });
                        Verdict::Held(Held::QuarantineFull)
                    }
                    Ok(h) => Verdict::Held(h),
                    Err(e) => {
                        tracing::warn!("quarantine: {e}");
                        Verdict::Dropped("quarantine not writable")
                    }
                }
            }
            Err(_) => Verdict::Dropped("keyring unreadable"),
        }
    }
}

impl Judge {
    /// Count a stranger turned away; the record is written at most every
    /// [`TURNED_AWAY_FLUSH`] (the last counts of a burst wait for the next
    /// one, or the flush at shutdown).
    fn turn_away(&mut self, f: impl FnOnce(&mut TurnedAway)) {
        let Some(q) = &self.quarantine else { return };
        f(self.turned_away.get_or_insert_with(|| q.turned_away()));
        self.turned_dirty = true;
        if self.turned_written.is_none_or(|w| w.elapsed() >= TURNED_AWAY_FLUSH) {
            self.flush();
        }
    }

    /// Write the counts [`Judge::turn_away`] has not written yet (the
    /// listener calls it every few seconds and when it stops).
    pub fn flush(&mut self) {
        if let (Some(q), Some(t), true) = (&self.quarantine, &self.turned_away, self.turned_dirty) {
            if let Err(e) = q.save_turned_away(t) {
                tracing::debug!("cannot record turned-away strangers: {e}");
            }
            self.turned_dirty = false;
            self.turned_written = Some(Instant::now());
        }
    }

    /// Keep a contact's authentic stub, once per message (a later one of
    /// the same message adds nothing); pruned after a month (`report.rs`).
    fn keep(&self, stub: &Stub, datagram: &[u8]) {
        let Some(dir) = &self.evidence else { return };
        if !stubmail::protocol::is_valid_id(&stub.id) {
            return;
        }
        let path = dir.join(format!("{}.{}", stub.id, stub.sender));
        if path.exists() {
            return;
        }
        if let Err(e) = stubmail::fsutil::ensure_private_dir(dir).and_then(|()| stubmail::fsutil::write_atomic(&path, datagram, 0o600)) {
            tracing::debug!("cannot keep a stub: {e}");
        }
    }

    /// An authentic stub of a contact: poll now, later, or not at all (a
    /// replay, or a poll already scheduled).
    fn schedule(&mut self, stub: &Stub, now: Instant) -> Verdict {
        let key = (stub.sender.clone(), stub.id.clone(), stub.made);
        if self.seen.contains_key(&key) {
            return Verdict::Dropped("replayed stub");
        }
        if self.seen.len() >= SEEN_STUBS {
            // Forget the older half; a stub older than that is long acted on.
            let mut ages: Vec<Instant> = self.seen.values().copied().collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            self.seen.retain(|_, t| *t > cut);
        }
        self.seen.insert(key, now);
        let next = self.polled.get(&stub.sender).copied();
        match next {
            Some(t) if t > now => Verdict::Dropped("a poll of this contact is already scheduled"),
            Some(t) if now.duration_since(t) < self.contact_spacing => {
                let at = t + self.contact_spacing;
                self.polled.insert(stub.sender.clone(), at);
                Verdict::PollLater(stub.sender.clone(), at - now)
            }
            _ => {
                if self.polled.len() > 10_000 {
                    let spacing = self.contact_spacing;
                    self.polled.retain(|_, t| now.saturating_duration_since(*t) < spacing);
                }
                self.polled.insert(stub.sender.clone(), now);
                Verdict::Poll(stub.sender.clone())
            }
        }
    }
}

/// One more event from `src` in its current window of `window`, if it
/// had fewer than `limit` there. The table stays bounded: past 10,000
/// sources, those whose window has ended are forgotten.
fn take(counts: &mut HashMap<IpAddr, (u32, Instant)>, src: IpAddr, limit: u32, window: Duration) -> bool {
    let e = counts.entry(src).or_insert((0, Instant::now()));
    if e.1.elapsed() > window {
        *e = (0, Instant::now());
    }
    if e.0 >= limit {
        return false;
    }
    e.0 += 1;
    if counts.len() > 10_000 {
        counts.retain(|_, (_, t)| t.elapsed() < window);
    }
    true
}

/// Receive stubs on `socket` until `shutdown`, sending contacts with mail
/// waiting to `polls`.
pub async fn listen(
    socket: tokio::net::UdpSocket,
    mut judge: Judge,
    polls: tokio::sync::mpsc::Sender<Fpr>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut tick = tokio::time::interval(TURNED_AWAY_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("stub receive: {e}");
                    continue;
                }
            },
            // Counts of strangers turned away in a burst that has ended.
            _ = tick.tick() => {
                judge.flush();
                continue;
            }
            _ = shutdown.cancelled() => {
                judge.flush();
                return;
            }
        };
        let datagram = buf[..n].to_vec();
        let now = stubmail::time::unix_now();
        // Signature checks and quarantine writes touch files: off the runtime.
        let (j, verdict) = match tokio::task::spawn_blocking(move || {
            let v = judge.judge(src.ip(), &datagram, now);
            (judge, v)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("stub judge failed: {e}");
                return;
            }
        };
        judge = j;
        match verdict {
            Verdict::Poll(f) => {
                tracing::debug!(sender = %f, "stub: polling now");
                // A full queue already holds polls to make: nothing lost.
                let _ = polls.try_send(f);
            }
            Verdict::PollLater(f, wait) => {
                tracing::debug!(sender = %f, ?wait, "stub: polling again shortly");
                // At most one of these per contact at a time (the judge
                // schedules no second one before this fires).
                let polls = polls.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = polls.try_send(f);
                });
            }
            // A full quarantine is counted for `intro list`, not logged
            // stub by stub (a flood of strangers is no flood of log lines).
            Verdict::Held(Held::QuarantineFull) => tracing::debug!(%src, "stub from a stranger: the quarantine is full"),
            Verdict::Held(h) => tracing::info!(%src, "stub from a stranger: {h:?}"),
            Verdict::Dropped(why) => tracing::debug!(%src, "stub dropped: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stubmail::Identity;

    #[test]
    fn a_replayed_stub_causes_no_poll_and_stubs_cause_at_most_one_poll_per_contact_in_two_seconds() {
        let d = tempfile::tempdir().unwrap();
        let keyring = Keyring::new(d.path().join("kr"));
        let (alice, bob) = (
            Identity::generate(None, "alice@example.org", "http://a/").unwrap(),
            Identity::generate(None, "bob@example.net", "http://b/").unwrap(),
        );
        keyring.import(vec![alice.cert()]).unwrap();
        let mut j = Judge::new(bob.fpr(), keyring, None);
        j.stubs_per_minute = u32::MAX;
        let now = stubmail::time::unix_now();
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let one = stub_from(&alice, &bob.fpr(), 1, now);
        assert_eq!(j.judge(src, &one, now), Verdict::Poll(alice.fpr()));
        for _ in 0..2000 {
            assert_eq!(j.judge(src, &one, now), Verdict::Dropped("replayed stub"));
        }
        // A second, new message at once: one poll later, not now.
        let two = stub_from(&alice, &bob.fpr(), 2, now);
        assert!(matches!(j.judge(src, &two, now), Verdict::PollLater(f, w) if f == alice.fpr() && w <= j.contact_spacing));
        // A third while that is pending: nothing more.
        let three = stub_from(&alice, &bob.fpr(), 3, now);
        assert_eq!(j.judge(src, &three, now), Verdict::Dropped("a poll of this contact is already scheduled"));
    }

    fn stub_from(sender: &Identity, to: &Fpr, id_byte: u8, made: i64) -> Vec<u8> {
        let s = Stub { sender: sender.fpr(), recipient: to.clone(), id: hex::encode([id_byte; 32]), size: 10, made, outbox: "http://127.0.0.1:1/".into() };
        let sig = sender.sign_detached(&s.signed_part().unwrap()).unwrap();
        s.encode(&sig).unwrap()
    }

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const NOW: i64 = 1_800_000_000;

    /// A stub naming `outbox`, signed by `signer`, in `sender`'s name,
    /// carrying `carried`'s certificate (cut short, as smtp2stub sends it).
    fn proven_stub(signer: &Identity, sender: &Identity, to: &Fpr, outbox: &str, carried: &Identity, id_byte: u8) -> Vec<u8> {
        let s = Stub { sender: sender.fpr(), recipient: to.clone(), id: hex::encode([id_byte; 32]), size: 10, made: NOW, outbox: outbox.into() };
        let d = s.encode(&signer.sign_detached(&s.signed_part().unwrap()).unwrap()).unwrap();
        let cert = pgp::binary(&pgp::minimal(&carried.cert()).unwrap()).unwrap();
        stubmail::protocol::udp::encode_with_cert(&d, &cert).unwrap()
    }

    /// A stranger's stub may carry their certificate: one that proves it
    /// is held as proven, and then no unproven stub (anyone can send one in
    /// anyone's name) moves their introduction to another outbox. Every
    /// way of carrying a certificate that proves nothing is dropped.
    #[test]
    fn a_strangers_certificate_proves_their_stub_and_forgeries_in_their_name_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let list = Identity::generate(None, "list@example.net", "http://l/").unwrap();
        let carol = Identity::generate(None, "carol@example.com", "http://carol.example/").unwrap();
        let mallory = Identity::generate(None, "mallory@example.com", "http://silent.example/").unwrap();
        let q = Quarantine::open(&d.path().join("state"), 10, 10).unwrap();
        let mut j = Judge::new(list.fpr(), Keyring::new(d.path().join("kr")), Some(q.clone()));
        j.stubs_per_minute = u32::MAX;
        let to = list.fpr();
        // Mallory's plain forgeries in Carol's name come first, naming a
        // silent outbox.
        let forged = |id: u8| {
            let s = Stub { sender: carol.fpr(), recipient: to.clone(), id: hex::encode([id; 32]), size: 1, made: NOW, outbox: "http://silent.example/".into() };
            s.encode(&mallory.sign_detached(&s.signed_part().unwrap()).unwrap()).unwrap()
        };
        assert_eq!(j.judge(SRC, &forged(1), NOW), Verdict::Held(Held::New));
        assert_eq!(q.get(&carol.fpr()).unwrap().outbox, "http://silent.example/");
        // Carried certificates that prove nothing.
        let cases = [
            ("someone else's certificate", proven_stub(&carol, &carol, &to, "http://carol.example/", &mallory, 2), "a stranger's stub carries someone else's certificate"),
            ("signed by another key", proven_stub(&mallory, &carol, &to, "http://carol.example/", &carol, 2), "a stranger's stub is not signed by the certificate it carries"),
            ("an outbox the certificate does not bind", proven_stub(&carol, &carol, &to, "http://silent.example/", &carol, 2), "a stranger's stub names an outbox its certificate does not bind"),
        ];
        for (what, datagram, why) in cases {
            assert_eq!(j.judge(SRC, &datagram, NOW), Verdict::Dropped(why), "{what}");
        }
        let mut garbled = proven_stub(&carol, &carol, &to, "http://carol.example/", &carol, 2);
        let n = garbled.len();
        garbled[n - 40] ^= 0xff;
        assert!(matches!(j.judge(SRC, &garbled, NOW), Verdict::Dropped(_)), "a garbled certificate");
        assert_eq!(q.get(&carol.fpr()).unwrap().outbox, "http://silent.example/", "nothing proven yet");
        // Carol's own stub, proven: what the forgeries claimed is gone.
        assert_eq!(j.judge(SRC, &proven_stub(&carol, &carol, &to, "http://carol.example/", &carol, 3), NOW), Verdict::Held(Held::New));
        let i = q.get(&carol.fpr()).unwrap();
        assert_eq!((i.outbox.as_str(), i.stubs.len()), ("http://carol.example/", 1));
        let cert = i.proven_by().expect("the carried certificate is kept");
        check_introduced(&i, &cert).unwrap();
        // More forgeries: refused, the introduction unchanged; a plain stub
        // naming Carol's real outbox is only held beside.
        assert_eq!(j.judge(SRC, &forged(4), NOW), Verdict::Held(Held::Contradicts));
        assert_eq!(q.get(&carol.fpr()).unwrap().outbox, "http://carol.example/");
        assert_eq!(j.judge(SRC, &stub_from_at(&carol, &to, 5, "http://carol.example/"), NOW), Verdict::Held(Held::Added));
        assert!(q.get(&carol.fpr()).unwrap().cert.is_some());
    }

    fn stub_from_at(sender: &Identity, to: &Fpr, id_byte: u8, outbox: &str) -> Vec<u8> {
        let s = Stub { sender: sender.fpr(), recipient: to.clone(), id: hex::encode([id_byte; 32]), size: 10, made: NOW, outbox: outbox.into() };
        s.encode(&sender.sign_detached(&s.signed_part().unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn contacts_trigger_polls_strangers_are_held_or_dropped() {
        let d = tempfile::tempdir().unwrap();
        let bob = Identity::generate(None, "bob@example.net", "http://b/").unwrap();
        let alice = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let mallory = Identity::generate(None, "mallory@example.com", "http://m/").unwrap();
        let keyring = Keyring::new(d.path().join("keyring"));
        keyring.import(vec![alice.cert()]).unwrap();
        let mut j = Judge::new(bob.fpr(), keyring.clone(), None);
        assert_eq!(j.judge(SRC, &stub_from(&alice, &bob.fpr(), 1, NOW), NOW), Verdict::Poll(alice.fpr()));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 1, NOW), NOW), Verdict::Dropped("stranger"));
        assert_eq!(j.judge(SRC, &stub_from(&alice, &mallory.fpr(), 1, NOW), NOW), Verdict::Dropped("for someone else"));
        assert_eq!(j.judge(SRC, &stub_from(&alice, &bob.fpr(), 1, NOW - 40 * 86400), NOW), Verdict::Dropped("stale"));
        // Mallory signs a stub claiming to be from Alice.
        let forged = {
            let s = Stub { sender: alice.fpr(), recipient: bob.fpr(), id: hex::encode([2; 32]), size: 1, made: NOW, outbox: "http://m/".into() };
            s.encode(&mallory.sign_detached(&s.signed_part().unwrap()).unwrap()).unwrap()
        };
        assert_eq!(j.judge(SRC, &forged, NOW), Verdict::Dropped("bad signature"));
        let mut tampered = stub_from(&alice, &bob.fpr(), 3, NOW);
        tampered[50] ^= 1;
        assert_eq!(j.judge(SRC, &tampered, NOW), Verdict::Dropped("bad signature"));
        assert_eq!(j.judge(SRC, &vec![0; MAX_DATAGRAM + 1], NOW), Verdict::Dropped("oversized"));
        assert_eq!(j.judge(SRC, b"SMN1garbage", NOW), Verdict::Dropped("malformed"));

        // First contact on: the stranger is held, within limits.
        let q = Quarantine::open(&d.path().join("state"), 3, 2).unwrap();
        let mut j = Judge::new(bob.fpr(), keyring, Some(q.clone()));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 1, NOW), NOW), Verdict::Held(Held::New));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 1, NOW), NOW), Verdict::Held(Held::Duplicate));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 2, NOW), NOW), Verdict::Held(Held::Added));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 3, NOW), NOW), Verdict::Held(Held::Added));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 4, NOW), NOW), Verdict::Held(Held::SenderFull));
        let list = q.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].stubs.len(), 3);
        let s2 = Identity::generate(None, "s2@example.com", "http://s/").unwrap();
        let s3 = Identity::generate(None, "s3@example.com", "http://s/").unwrap();
        assert_eq!(j.judge(SRC, &stub_from(&s2, &bob.fpr(), 1, NOW), NOW), Verdict::Held(Held::New));
        assert_eq!(j.judge(SRC, &stub_from(&s3, &bob.fpr(), 1, NOW), NOW), Verdict::Held(Held::QuarantineFull));
        // Recorded for `intro list` (the first at once), and the record is
        // no introduction: it takes no place in the quarantine.
        assert_eq!((q.turned_away().quarantine_full, q.turned_away().last_quarantine_full), (1, Some(NOW)));
        assert_eq!(j.judge(SRC, &stub_from(&s3, &bob.fpr(), 2, NOW), NOW), Verdict::Held(Held::QuarantineFull));
        assert_eq!(q.turned_away().quarantine_full, 1, "written at most every few seconds");
        j.flush();
        assert_eq!(q.turned_away().quarantine_full, 2);
        assert!(q.reject(&mallory.fpr()).unwrap());
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 5, NOW), NOW), Verdict::Held(Held::Rejected));
        assert_eq!(q.list().unwrap().len(), 1);
    }

    #[test]
    fn a_blocked_contacts_or_strangers_stub_causes_nothing_not_even_a_place_in_quarantine() {
        use stubmail::blocklist::{update, BlockCache, Entry, Target};
        let d = tempfile::tempdir().unwrap();
        let bob = Identity::generate(None, "bob@example.net", "http://b/").unwrap();
        let alice = Identity::generate(None, "alice@example.org", "http://a.example:8080/").unwrap();
        let mallory = Identity::generate(None, "mallory@spam.example", "http://m/").unwrap();
        let keyring = Keyring::new(d.path().join("keyring"));
        keyring.import(vec![alice.cert()]).unwrap();
        let q = Quarantine::open(&d.path().join("state"), 3, 10).unwrap();
        let mut j = Judge::new(bob.fpr(), keyring, Some(q.clone()));
        j.blocks = Some(std::sync::Arc::new(BlockCache::new(d.path())));
        let block = |t: Target| update(d.path(), |b| b.blocks = vec![Entry { target: t, added: 0, note: None }]).unwrap();
        assert_eq!(j.judge(SRC, &stub_from(&alice, &bob.fpr(), 1, NOW), NOW), Verdict::Poll(alice.fpr()));
        // By the contact's address (from their certificate), their
        // outbox (bound in it), or their key: no poll.
        for (i, t) in [
            Target::Address("alice@example.org".into()),
            Target::Outbox("a.example:8080".into()),
            Target::Domain("example.org".into()),
            Target::Sender(alice.fpr()),
        ]
        .into_iter()
        .enumerate()
        {
            block(t.clone());
            assert_eq!(j.judge(SRC, &stub_from(&alice, &bob.fpr(), 10 + i as u8, NOW), NOW), Verdict::Dropped("blocked"), "{t}");
        }
        // A stranger blocked by key, or by the outbox their stub names.
        block(Target::Sender(mallory.fpr()));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 1, NOW), NOW), Verdict::Dropped("blocked"));
        block(Target::Outbox("127.0.0.1:1".into()));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 2, NOW), NOW), Verdict::Dropped("blocked"));
        assert!(q.list().unwrap().is_empty(), "nothing held for a blocked stranger");
        block(Target::Domain("unrelated.example".into()));
        assert_eq!(j.judge(SRC, &stub_from(&mallory, &bob.fpr(), 3, NOW), NOW), Verdict::Held(Held::New));
    }

    #[test]
    fn an_unreadable_blocklist_read_by_no_one_before_drops_every_stub() {
        let d = tempfile::tempdir().unwrap();
        let bob = Identity::generate(None, "bob@example.net", "http://b/").unwrap();
        let alice = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let keyring = Keyring::new(d.path().join("keyring"));
        keyring.import(vec![alice.cert()]).unwrap();
        std::fs::write(stubmail::blocklist::path(d.path()), b"{ damaged").unwrap();
        let mut j = Judge::new(bob.fpr(), keyring, None);
        j.blocks = Some(std::sync::Arc::new(stubmail::blocklist::BlockCache::new(d.path())));
        assert_eq!(j.judge(SRC, &stub_from(&alice, &bob.fpr(), 1, NOW), NOW), Verdict::Dropped("the blocklist is unreadable"));
    }

    #[test]
    fn one_source_gets_stubs_per_minute_checked_and_no_more_and_other_sources_are_not_held_up() {
        let d = tempfile::tempdir().unwrap();
        let bob = Identity::generate(None, "bob@example.net", "http://b/").unwrap();
        let alice = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let keyring = Keyring::new(d.path().join("keyring"));
        keyring.import(vec![alice.cert()]).unwrap();
        let mut j = Judge::new(bob.fpr(), keyring, None);
        j.stubs_per_minute = 5;
        let forged = stub_from(&bob, &bob.fpr(), 1, NOW);
        for _ in 0..5 {
            assert_ne!(j.judge(SRC, &forged, NOW), Verdict::Dropped("too many stubs from this address"));
        }
        assert_eq!(j.judge(SRC, &stub_from(&alice, &bob.fpr(), 1, NOW), NOW), Verdict::Dropped("too many stubs from this address"));
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(j.judge(other, &stub_from(&alice, &bob.fpr(), 1, NOW), NOW), Verdict::Poll(alice.fpr()));
    }

    #[test]
    fn a_stranger_past_the_limit_is_counted_for_intro_list() {
        let d = tempfile::tempdir().unwrap();
        let bob = Identity::generate(None, "bob@example.net", "http://b/").unwrap();
        let mallory = Identity::generate(None, "mallory@example.com", "http://m/").unwrap();
        let q = Quarantine::open(&d.path().join("state"), 2, 10).unwrap();
        let mut j = Judge::new(bob.fpr(), Keyring::new(d.path().join("keyring")), Some(q.clone()));
        for i in 1..=5 {
            j.judge(SRC, &stub_from(&mallory, &bob.fpr(), i, NOW), NOW + i as i64);
        }
        let i = q.get(&mallory.fpr()).unwrap();
        assert_eq!((i.stubs.len(), i.over_limit, i.last_over_limit), (2, 3, Some(NOW + 5)));
    }

    #[test]
    fn one_source_cannot_introduce_endless_strangers() {
        let d = tempfile::tempdir().unwrap();
        let bob = Identity::generate(None, "bob@example.net", "http://b/").unwrap();
        let q = Quarantine::open(&d.path().join("state"), 3, 1000).unwrap();
        let mut j = Judge::new(bob.fpr(), Keyring::new(d.path().join("keyring")), Some(q));
        let mut held = 0;
        for i in 0..15 {
            let s = Identity::generate(None, &format!("s{i}@example.com"), "http://s/").unwrap();
            if matches!(j.judge(SRC, &stub_from(&s, &bob.fpr(), 1, NOW), NOW), Verdict::Held(Held::New)) {
                held += 1;
            }
        }
        assert_eq!(held, j.strangers_per_hour as usize);
        j.flush();
        let t = j.quarantine.as_ref().unwrap().turned_away();
        assert_eq!((t.source_over_limit, t.sources.get("127.0.0.1").copied()), (15 - held as u64, Some(15 - held as u64)));
        // The record of sources stays small whatever the number of sources.
        let mut t = TurnedAway::default();
        for i in 0..1000u32 {
            t.count_source(IpAddr::V4(std::net::Ipv4Addr::from(i)), NOW);
        }
        assert!(t.sources.len() <= TurnedAway::MAX_SOURCES && t.source_over_limit == 1000);
        // Sixteen addresses seeded first do not hide a heavy one after them.
        let mut t = TurnedAway::default();
        for i in 0..16u32 {
            for _ in 0..2 {
                t.count_source(IpAddr::V4(std::net::Ipv4Addr::from(0x7f0a_0000 + i)), NOW);
            }
        }
        for _ in 0..246 {
            t.count_source(IpAddr::V4(std::net::Ipv4Addr::new(127, 20, 0, 1)), NOW);
        }
        assert!(t.sources.get("127.20.0.1").is_some_and(|n| *n >= 246), "{:?}", t.sources);
    }
}
