//! Blocklists at the receiver (issue #19): whom never to poll and whose
//! stubs never to act on, decided before anything is downloaded.
//!
//! One file, `<data>/blocks.json`, written only by `stubmail` (and by a
//! daemon refreshing a shared list) under `blocks.lock`, read by http2mbox
//! through [`BlockCache`], which re-reads it when it changes — so a block
//! takes effect before the next poll without a restart.
//!
//! Precedence: the user's own blocks, then the user's own exceptions
//! (`stubmail unblock` of something a shared list names), then the shared
//! lists the user subscribed to. The user's own identity is never blocked.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::protocol::Fpr;

/// What a block names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A sender's key, wherever it sends from.
    Sender(Fpr),
    /// A sender's key at one outbox (host or host:port) only.
    SenderAt { outbox: String, sender: Fpr },
    /// Every sender at an outbox: `host` (any port) or `host:port`.
    Outbox(String),
    /// An address, lower-case.
    Address(String),
    /// A domain and its subdomains, lower-case.
    Domain(String),
}

/// Why a user's input names no target.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadTarget(String);

impl Target {
    /// What a user typed: a fingerprint, an address, a domain, or an
    /// outbox URL; with `at` (an outbox URL) a fingerprint means that
    /// sender at that outbox only. Every target made here is in the form
    /// it is stored and matched in (hosts and domains normalised: IDNA,
    /// IPv4 forms, default ports), so it always parses back.
    pub fn from_user(what: &str, at: Option<&str>) -> Result<Target, BadTarget> {
        let what = what.trim();
        let not_outbox = |u: &str| BadTarget(format!("{u:?} is not an outbox URL (http:// or https://, no user name)"));
        if let Some(at) = at {
            let outbox = outbox_key(at).ok_or_else(|| not_outbox(at))?;
            let sender = Fpr::parse(what).map_err(|_| BadTarget(format!("with --at, name the sender by full fingerprint, not {what:?}")))?;
            return Ok(Target::SenderAt { outbox, sender });
        }
        if let Ok(f) = Fpr::parse(what) {
            return Ok(Target::Sender(f));
        }
        if what.contains("://") {
            return outbox_key(what).map(Target::Outbox).ok_or_else(|| not_outbox(what));
        }
        let what = what.strip_prefix("mailto:").unwrap_or(what);
        if what.contains('@') {
            return norm_address(what).map(Target::Address).ok_or_else(|| BadTarget(format!("{what:?} is not an address")));
        }
        let d = what.trim_start_matches("*.");
        if let Some(d) = norm_domain(d) {
            return Ok(Target::Domain(d));
        }
        Err(BadTarget(format!(
            "{what:?} is not a fingerprint (40 hex digits), an address, a domain or an outbox URL (https://HOST/)"
        )))
    }

    /// The arguments of `stubmail block`/`unblock` that name this target.
    pub fn user_form(&self) -> String {
        match self {
            Target::Sender(f) => f.to_string(),
            Target::SenderAt { outbox, sender } => format!("{sender} --at https://{outbox}/"),
            Target::Outbox(o) => format!("https://{o}/"),
            Target::Address(a) | Target::Domain(a) => a.clone(),
        }
    }

    /// The target a reason names.
    pub fn of(r: &Reason) -> &Target {
        match r {
            Reason::Own(t) | Reason::Shared(t, _) => t,
        }
    }
}

fn is_ascii_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// A domain in the one form it is compared in: lower-case ASCII (IDNA
/// for international names), no trailing dot; None if it is not one.
pub fn norm_domain(d: &str) -> Option<String> {
    let d = d.trim().trim_end_matches('.');
    if d.is_empty() || d.len() > 253 || d.contains(['/', ':', '@', '[', '%', '*']) {
        return None;
    }
    match url::Host::parse(d).ok()? {
        url::Host::Domain(a) => is_ascii_domain(&a).then_some(a),
        _ => None,
    }
}

/// An address with its domain normalised as [`norm_domain`] does.
pub fn norm_address(a: &str) -> Option<String> {
    let (local, domain) = a.trim().rsplit_once('@')?;
    if local.is_empty() || local.len() > 64 || local.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '@') {
        return None;
    }
    Some(format!("{}@{}", local.to_lowercase(), norm_domain(domain)?))
}

/// An outbox URL's host, normalised (IDNA, IPv4 forms, an IPv4-mapped
/// IPv6 address as IPv4, no trailing dot), its port if the URL spells one
/// out, and the port it uses.
fn outbox_parts(url: &str) -> Option<(String, Option<u16>, u16)> {
    let url = url.trim();
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some() {
        return None;
    }
    let host = match u.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            // A domain, or a single label such as `localhost`.
            let label = !d.is_empty() && d.len() <= 63 && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !(is_ascii_domain(&d) || label) {
                return None;
            }
            d
        }
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{a}]"),
        },
    };
    // Spelled out: the authority as written ends in ":digits".
    let authority = url.split_once("://")?.1.split(['/', '?', '#']).next()?;
    let spelled = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']') => {
            Some(u.port_or_known_default()?)
        }
        _ => None,
    };
    Some((host, spelled, u.port_or_known_default()?))
}

/// The key an outbox is blocked by: `host`, or `host:port` when the URL
/// spells a port out.
fn outbox_key(url: &str) -> Option<String> {
    let (host, spelled, _) = outbox_parts(url)?;
    Some(match spelled {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// A stored outbox key (`host` or `host:port`), normalised; None if it is
/// not one.
fn norm_outbox_key(k: &str) -> Option<String> {
    if k.is_empty() || k.len() > 300 || k.contains(['/', '@', '?', '#']) || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    outbox_key(&format!("http://{k}/"))
}

/// The `host[:port]` of an outbox URL, lower-case, without the scheme's
/// default port (for display).
pub fn outbox_host(url: &str) -> Option<String> {
    let (host, _, port) = outbox_parts(url)?;
    let default = if url.trim().to_ascii_lowercase().starts_with("https:") { 443 } else { 80 };
    Some(if port == default { host } else { format!("{host}:{port}") })
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Sender(s) => write!(f, "sender:{s}"),
            Target::SenderAt { outbox, sender } => write!(f, "sender-at:{outbox} {sender}"),
            Target::Outbox(o) => write!(f, "outbox:{o}"),
            Target::Address(a) => write!(f, "address:{a}"),
            Target::Domain(d) => write!(f, "domain:{d}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = BadTarget;
    /// The stored form, as [`Display`](fmt::Display) writes it; hosts,
    /// domains and addresses are normalised as when typed.
    fn from_str(s: &str) -> Result<Target, BadTarget> {
        let bad = || BadTarget(format!("{:?} is not a block entry (kind:value)", s.chars().take(100).collect::<String>()));
        if s.len() > 400 {
            return Err(bad());
        }
        let (kind, v) = s.split_once(':').ok_or_else(bad)?;
        let fpr = |x: &str| Fpr::parse(x).map_err(|_| bad());
        Ok(match kind {
            "sender" => Target::Sender(fpr(v)?),
            "sender-at" => {
                let (o, f) = v.split_once(' ').ok_or_else(bad)?;
                Target::SenderAt { outbox: norm_outbox_key(o).ok_or_else(bad)?, sender: fpr(f)? }
            }
            "outbox" => Target::Outbox(norm_outbox_key(v).ok_or_else(bad)?),
            "address" => Target::Address(norm_address(v).ok_or_else(bad)?),
            "domain" => Target::Domain(norm_domain(v).ok_or_else(bad)?),
            _ => return Err(bad()),
        })
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Someone who may be blocked: a sender's key, the outbox it sends from
/// (as far as known) and the addresses it claims.
pub struct Who<'a> {
    pub sender: &'a Fpr,
    pub outbox: Option<&'a str>,
    pub emails: &'a [String],
}

impl Who<'_> {
    /// Whether `t` names this sender.
    pub fn is_named_by(&self, t: &Target) -> bool {
        self.targets().contains(t)
    }

    /// Every target that would name this sender.
    fn targets(&self) -> Vec<Target> {
        let mut out = vec![Target::Sender(self.sender.clone())];
        if let Some((host, _, port)) = self.outbox.and_then(outbox_parts) {
            let hp = format!("{host}:{port}");
            out.push(Target::SenderAt { outbox: hp.clone(), sender: self.sender.clone() });
            out.push(Target::SenderAt { outbox: host.clone(), sender: self.sender.clone() });
            out.push(Target::Outbox(hp));
            out.push(Target::Outbox(host));
        }
        for e in self.emails {
            let Some(e) = norm_address(e) else { continue };
            if let Some((_, domain)) = e.rsplit_once('@') {
                // The domain and each parent domain (a.b.example → b.example).
                let mut d = domain;
                loop {
                    out.push(Target::Domain(d.to_string()));
                    match d.split_once('.') {
                        Some((_, rest)) if rest.contains('.') => d = rest,
                        _ => break,
                    }
                }
            }
            out.push(Target::Address(e));
        }
        out
    }
}

/// One of the user's own entries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    /// Unix time it was added.
    pub added: i64,
    /// Why (e.g. "reported as spam: <id>"), for `stubmail blocks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A shared blocklist the user subscribed to (issue #19 §2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subscription {
    /// Where the signed document is published.
    pub url: String,
    /// The publisher's certificate (armored): only a document signed by
    /// it is taken.
    pub signer: String,
    /// The signer's fingerprint, for display.
    pub signer_fpr: Fpr,
    /// Seconds between refreshes.
    pub refresh_secs: u64,
    /// `published` of the document held (a refresh never goes back).
    #[serde(default)]
    pub published: i64,
    /// Unix time of the last successful refresh (0: never).
    #[serde(default)]
    pub fetched: i64,
    /// Unix time of the last attempt.
    #[serde(default)]
    pub tried: i64,
    /// The last refresh's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The document's entries.
    #[serde(default)]
    pub entries: Vec<Target>,
}

/// `blocks.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blocks {
    /// The user's own blocks.
    #[serde(default)]
    pub blocks: Vec<Entry>,
    /// The user's own exceptions to the shared lists.
    #[serde(default)]
    pub allows: Vec<Entry>,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// Why someone is blocked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// By the user's own entry.
    Own(Target),
    /// By a shared list (its URL).
    Shared(Target, String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Own(t) => write!(f, "blocked ({t})"),
            Reason::Shared(t, url) => write!(f, "blocked by the shared list {url} ({t})"),
        }
    }
}

/// The entries of `blocks.json`, indexed for lookups.
#[derive(Debug, Default)]
pub struct Index {
    own: HashSet<Target>,
    allows: HashSet<Target>,
    shared: std::collections::HashMap<Target, String>,
}

impl Index {
    pub fn new(b: &Blocks) -> Index {
        let mut shared = std::collections::HashMap::new();
        for s in &b.subscriptions {
            for t in &s.entries {
                shared.entry(t.clone()).or_insert_with(|| s.url.clone());
            }
        }
        Index {
            own: b.blocks.iter().map(|e| e.target.clone()).collect(),
            allows: b.allows.iter().map(|e| e.target.clone()).collect(),
            shared,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.own.is_empty() && self.shared.is_empty()
    }

    /// Whether `who` is blocked, and by what (the first reason).
    pub fn check(&self, who: &Who) -> Option<Reason> {
        self.check_all(who).into_iter().next()
    }

    /// Every reason `who` is blocked: the user's own blocks, then the
    /// shared lists' entries the user made no exception for. An exception
    /// cancels the shared entry it names, not others that also apply.
    pub fn check_all(&self, who: &Who) -> Vec<Reason> {
        if self.is_empty() {
            return vec![];
        }
        let ts = who.targets();
        let mut out: Vec<Reason> = ts.iter().filter(|t| self.own.contains(t)).map(|t| Reason::Own(t.clone())).collect();
        out.extend(ts.into_iter().filter(|t| !self.allows.contains(t)).filter_map(|t| self.shared.get(&t).map(|url| Reason::Shared(t, url.clone()))));
        out
    }
}

/// Errors reading or writing `blocks.json`.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("{0} is damaged ({1}); fix it by hand (your blocks are in it) — until then nothing is polled")]
    Damaged(String, serde_json::Error),
    #[error("{0}")]
    Unstorable(String),
}

/// Largest `blocks.json` read (shared lists of 100,000 entries each).
const MAX_FILE: u64 = 64 << 20;

/// `blocks.json` in the data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("blocks.json")
}

/// Read `blocks.json` (missing: nothing blocked).
pub fn load(data_dir: &Path) -> Result<Blocks, BlocksError> {
    let p = path(data_dir);
    // A regular file of bounded size: a link to /dev/zero or a FIFO is an error.
    match crate::fsutil::read_bounded(&p, MAX_FILE) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| BlocksError::Damaged(p.display().to_string(), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Blocks::default()),
        Err(e) => Err(BlocksError::Io(p.display().to_string(), e)),
    }
}

/// Change `blocks.json` under its lock (the CLI and a daemon refreshing a
/// shared list may write at the same time), durably.
pub fn update<T>(data_dir: &Path, f: impl FnOnce(&mut Blocks) -> T) -> Result<T, BlocksError> {
    let lock_path = data_dir.join("blocks.lock");
    let io_err = |p: &Path| {
        let p = p.display().to_string();
        move |e| BlocksError::Io(p, e)
    };
    crate::fsutil::ensure_private_dir(data_dir).map_err(io_err(data_dir))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    let mut b = load(data_dir)?;
    let out = f(&mut b);
    // Never write what would not read back (a damaged file stops polling).
    let bytes = serde_json::to_vec_pretty(&b).expect("serialisable");
    if let Err(e) = serde_json::from_slice::<Blocks>(&bytes) {
        return Err(BlocksError::Unstorable(format!("this change would not read back ({e}); nothing was changed")));
    }
    let p = path(data_dir);
    crate::fsutil::write_atomic(&p, &bytes, 0o600).map_err(io_err(&p))?;
    Ok(out)
}

// ---- Shared blocklists (docs/PROTOCOL.md §9) ---------------------------

/// Largest published document fetched.
pub const MAX_DOCUMENT: usize = 8 << 20;
/// Most entries one shared list may hold.
pub const MAX_ENTRIES: usize = 100_000;

/// The signed part of a published blocklist.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListBody {
    /// Format version: 1.
    pub stubmail_blocklist: u32,
    /// Unix time of publication; a subscriber never goes back to an older one.
    pub published: i64,
    pub entries: Vec<Target>,
}

/// What is published at the URL: the body, as the exact string that was
/// signed, and a detached OpenPGP signature over its UTF-8 bytes (base64).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Published {
    pub list: String,
    pub signature: String,
}

/// Why a published list is not taken.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("fetching it: {0}")]
    Fetch(String),
    #[error("not a Stubmail blocklist ({0})")]
    Format(String),
    #[error("its signature is not by {0}: {1}")]
    Signature(Fpr, String),
    #[error("it holds {0} entries, over the limit of {MAX_ENTRIES}")]
    TooMany(usize),
    #[error("it is older (published {0}) than the one held (published {1}): a replay is not taken")]
    Older(i64, i64),
    #[error("it claims to be published in the future ({0})")]
    Future(i64),
}

/// Sign `entries` as a publishable list.
pub fn publish(me: &crate::Identity, entries: Vec<Target>, now: i64) -> anyhow::Result<Vec<u8>> {
    let list = serde_json::to_string(&ListBody {
        stubmail_blocklist: 1,
        published: now,
        entries,
    })?;
    let sig = me.sign_detached(list.as_bytes())?;
    use base64::Engine as _;
    let out = Published {
        list,
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
    };
    Ok(serde_json::to_vec_pretty(&out)?)
}

/// Check a fetched document against the subscription: signed by its
/// signer, within the limits, not older than what is held.
pub fn verify(sub: &Subscription, bytes: &[u8], now: i64) -> Result<ListBody, ListError> {
    use base64::Engine as _;
    if bytes.len() > MAX_DOCUMENT {
        return Err(ListError::Format(format!(
            "larger than {MAX_DOCUMENT} bytes"
        )));
    }
    let p: Published =
        serde_json::from_slice(bytes).map_err(|e| ListError::Format(e.to_string()))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(p.signature.trim())
        .map_err(|e| ListError::Format(format!("signature: {e}")))?;
    let cert = crate::pgp::parse_certs(sub.signer.as_bytes())
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| {
            ListError::Signature(
                sub.signer_fpr.clone(),
                "the subscription's signer certificate is unreadable".into(),
            )
        })?;
    // The signature first: nothing unsigned is parsed further.
    crate::pgp::verify_detached(&cert, p.list.as_bytes(), &sig)
        .map_err(|e| ListError::Signature(sub.signer_fpr.clone(), e.to_string()))?;
    // Count before building: a signed list is still bounded. Both passes
    // refuse a repeated field (JSON parsers disagree on which one counts,
    // so what was signed must say one thing).
    #[derive(Deserialize)]
    struct Count {
        #[serde(default)]
        entries: Vec<serde::de::IgnoredAny>,
        #[serde(default)]
        #[allow(dead_code)]
        published: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        #[allow(dead_code)]
        stubmail_blocklist: Option<serde::de::IgnoredAny>,
    }
    let n = serde_json::from_str::<Count>(&p.list).map_err(|e| ListError::Format(e.to_string()))?.entries.len();
    if n > MAX_ENTRIES {
        return Err(ListError::TooMany(n));
    }
    let body: ListBody = serde_json::from_str(&p.list).map_err(|e| ListError::Format(e.to_string()))?;
    if body.stubmail_blocklist != 1 {
        return Err(ListError::Format(format!(
            "version {}",
            body.stubmail_blocklist
        )));
    }
    if body.published > now + 86400 {
        return Err(ListError::Future(body.published));
    }
    if body.published < sub.published {
        return Err(ListError::Older(body.published, sub.published));
    }
    Ok(body)
}

/// Fetch and check one subscription's list (bounded in bytes and time).
pub async fn fetch(
    http: &reqwest::Client,
    sub: &Subscription,
    now: i64,
) -> Result<ListBody, ListError> {
    let resp = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let _ = http;
        let http = crate::client::http_client_no_redirects(std::time::Duration::from_secs(30)).map_err(|e| ListError::Fetch(e.to_string()))?;
        let r = http.get(&sub.url).send().await.map_err(|e| ListError::Fetch(e.to_string()))?;
        if r.status().is_redirection() {
            // Not followed: a list's server must not send the subscriber's
            // machine to some other (internal) address.
            return Err(ListError::Fetch(format!("HTTP {} (a redirect, not followed: subscribe to the address it names if you trust it)", r.status())));
        }
        if !r.status().is_success() {
            return Err(ListError::Fetch(format!("HTTP {}", r.status())));
        }
        crate::client::read_limited(r, MAX_DOCUMENT)
            .await
            .map_err(|e| ListError::Fetch(e.to_string()))
    })
    .await
    .map_err(|_| ListError::Fetch("no complete answer within 60 s".into()))??;
    verify(sub, &resp, now)
}

/// Refresh every subscription due at `now` (all with `force`), recording
/// each result in `blocks.json`. Returns (url, outcome) per list tried.
pub async fn refresh(
    data_dir: &Path,
    http: &reqwest::Client,
    now: i64,
    force: bool,
) -> Result<Vec<(String, Result<usize, String>)>, BlocksError> {
    let subs = load(data_dir)?.subscriptions;
    let mut out = Vec::new();
    for sub in subs {
        // Failures retry after a tenth of the period (at least a minute).
        let retry = (sub.refresh_secs / 10).max(60) as i64;
        let due =
            force || (now - sub.fetched >= sub.refresh_secs as i64 && now - sub.tried >= retry);
        if !due {
            continue;
        }
        let r = fetch(http, &sub, now).await;
        let outcome = r
            .as_ref()
            .map(|b| b.entries.len())
            .map_err(|e| e.to_string());
        update(data_dir, |b| {
            if let Some(s) = b.subscriptions.iter_mut().find(|s| s.url == sub.url) {
                s.tried = now;
                match r {
                    Ok(body) => {
                        s.fetched = now;
                        s.published = body.published;
                        s.entries = body.entries;
                        s.error = None;
                    }
                    // The entries held stay in force.
                    Err(e) => s.error = Some(e.to_string()),
                }
            }
        })?;
        out.push((sub.url, outcome));
    }
    Ok(out)
}

/// `blocks.json`, re-read when it changes (one `stat` per call).
pub struct BlockCache {
    data_dir: PathBuf,
    /// The file's stamp when last read, and the last index read well.
    cached: Mutex<(Option<Stamp>, Option<Arc<Index>>)>,
}

type Stamp = (u64, u64, std::time::SystemTime);

impl BlockCache {
    pub fn new(data_dir: &Path) -> BlockCache {
        BlockCache { data_dir: data_dir.to_path_buf(), cached: Mutex::new((None, None)) }
    }

    /// The current index. A damaged file keeps the last good one read by
    /// this process (and says so in the log); with none read before, it
    /// is an error, and callers fetch nothing: a typo must not unblock
    /// everyone.
    pub fn get(&self) -> Result<Arc<Index>, BlocksError> {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(path(&self.data_dir)).ok().and_then(|m| Some((m.ino(), m.len(), m.modified().ok()?)));
        let mut c = self.cached.lock().expect("not poisoned");
        if let Some(good) = &c.1
            && c.0 == stamp
        {
            return Ok(good.clone());
        }
        match load(&self.data_dir) {
            Ok(b) => {
                let i = Arc::new(Index::new(&b));
                *c = (stamp, Some(i.clone()));
                Ok(i)
            }
            Err(e) => match &c.1 {
                Some(good) => {
                    tracing::warn!("{e}; keeping the blocks read before");
                    let good = good.clone();
                    c.0 = stamp;
                    Ok(good)
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fpr(c: char) -> Fpr {
        Fpr::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn t(what: &str) -> Target {
        Target::from_user(what, None).unwrap()
    }

    #[test]
    fn user_input_names_the_right_target_in_one_normal_form() {
        let f = "A".repeat(40);
        assert_eq!(t(&f.to_lowercase()), Target::Sender(fpr('A')));
        assert_eq!(t("Spam@Example.COM"), Target::Address("spam@example.com".into()));
        assert_eq!(t("mailto:spam@example.com"), Target::Address("spam@example.com".into()));
        assert_eq!(t("spam.example"), Target::Domain("spam.example".into()));
        assert_eq!(t("spam.example."), Target::Domain("spam.example".into()));
        assert_eq!(t("*.spam.example"), Target::Domain("spam.example".into()));
        // International names compare in their ASCII (IDNA) form.
        assert_eq!(t("späm.example"), Target::Domain("xn--spm-rla.example".into()));
        assert_eq!(t("m5@späm.example"), Target::Address("m5@xn--spm-rla.example".into()));
        // Outboxes: a port spelled out is that port only, whatever the scheme.
        assert_eq!(t("https://Out.Example/x/"), Target::Outbox("out.example".into()));
        assert_eq!(t("https://Out.Example:443/x/"), Target::Outbox("out.example:443".into()));
        assert_eq!(t("http://x.example:80/"), Target::Outbox("x.example:80".into()));
        // Every spelling of one host and port is one target.
        for same in ["http://127.0.0.1:8080/", "http://127.0.0.1:08080/", "http://127.0.0.1.:8080/", "http://0x7f.0.0.1:8080/", "http://[::ffff:7f00:1]:8080/"] {
            assert_eq!(t(same), Target::Outbox("127.0.0.1:8080".into()), "{same}");
        }
        assert_eq!(t("http://ä.example/"), Target::Outbox("xn--4ca.example".into()));
        assert_eq!(t("http://a%41.example/"), Target::Outbox("aa.example".into()), "as a client would connect");
        assert_eq!(
            Target::from_user(&f, Some("https://out.example/")).unwrap(),
            Target::SenderAt { outbox: "out.example".into(), sender: fpr('A') }
        );
        for bad in [
            "", "nodots", "@example.com", "a@", "a@b", "ftp://x/", "x y.example", "spam.example/path", "https://outbox_1.spam.example/",
            "http://[fe80::1%25eth0]/", "http://*.example/", "http://user:pw@x.example/", "a:b@x.example",
        ] {
            assert!(Target::from_user(bad, None).is_err(), "{bad:?} names nothing");
        }
        assert!(Target::from_user(&format!("http://{}.example/", "a".repeat(100_000)), None).is_err());
        assert!(Target::from_user("spam@example.com", Some("https://o/")).is_err(), "--at takes a fingerprint");
    }

    #[test]
    fn every_target_made_stores_and_reads_back_and_its_hint_names_it_again() {
        for what in [
            "B".repeat(40).as_str(), "spam@späm.example", "spam.example", "https://x.example/", "https://x.example:443/", "http://x.example:80/",
            "http://[::1]:8080/", "http://127.0.0.1:18081/", "http://localhost:8080/",
        ] {
            let target = t(what);
            assert_eq!(target.to_string().parse::<Target>().unwrap(), target, "{what}");
            let form = target.user_form();
            let (w, at) = match form.split_once(" --at ") {
                Some((w, a)) => (w, Some(a)),
                None => (form.as_str(), None),
            };
            assert_eq!(Target::from_user(w, at).unwrap(), target, "{form}");
        }
        let at = Target::from_user(&"C".repeat(40), Some("http://127.0.0.1:8080/")).unwrap();
        assert_eq!(at.to_string().parse::<Target>().unwrap(), at);
        for bad in ["", "sender:", "sender:xyz", "outbox:", "outbox:a/b", "outbox:a_b.example", "domain:x", "address:@x.y", "nothing:x", "sender-at:host"] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
        assert!("x".repeat(100_000).parse::<Target>().is_err());
    }

    #[test]
    fn own_blocks_beat_exceptions_which_cancel_only_the_shared_entry_they_name() {
        let (a, b) = (fpr('A'), fpr('B'));
        let emails = vec!["x@mail.spam.example".to_string()];
        let who = Who { sender: &a, outbox: Some("http://127.0.0.1:8080/o/"), emails: &emails };
        let other = Who { sender: &b, outbox: Some("http://127.0.0.1:9090/"), emails: &[] };
        let entry = |t: Target| Entry { target: t, added: 0, note: None };
        let sub = |ts: Vec<Target>| Subscription {
            url: "https://lists.example/bl".into(),
            signer: String::new(),
            signer_fpr: fpr('C'),
            refresh_secs: 3600,
            published: 0,
            fetched: 0,
            tried: 0,
            error: None,
            entries: ts,
        };
        let check = |b: &Blocks, w: &Who| Index::new(b).check(w);
        assert_eq!(check(&Blocks::default(), &who), None);
        for (target, others_too) in [
            (Target::Sender(a.clone()), false),
            (t("spam.example"), false),
            (t("mail.spam.example"), false),
            (t("x@mail.spam.example"), false),
            (t("http://127.0.0.1/"), true),
            (t("http://127.0.0.1:8080/"), false),
            (Target::SenderAt { outbox: "127.0.0.1:8080".into(), sender: a.clone() }, false),
            (Target::SenderAt { outbox: "127.0.0.1".into(), sender: a.clone() }, false),
        ] {
            let bl = Blocks { blocks: vec![entry(target.clone())], ..Default::default() };
            assert_eq!(check(&bl, &who), Some(Reason::Own(target.clone())), "{target}");
            assert_eq!(check(&bl, &other).is_some(), others_too, "{target} and another sender on another port");
        }
        // Near misses name nobody.
        for target in [t("pam.example"), t("spam.example.evil"), t("http://127.0.0.1:8081/")] {
            let bl = Blocks { blocks: vec![entry(target.clone())], ..Default::default() };
            assert_eq!(check(&bl, &who), None, "{target}");
        }
        // A default port matches its spelled-out form, both ways.
        let https = Who { sender: &b, outbox: Some("https://y.example/"), emails: &[] };
        for target in [t("https://y.example:443/"), "outbox:y.example:443".parse().unwrap(), t("https://y.example/")] {
            assert!(check(&Blocks { blocks: vec![entry(target.clone())], ..Default::default() }, &https).is_some(), "{target}");
        }
        assert!(check(&Blocks { blocks: vec![entry(t("https://y.example:8443/"))], ..Default::default() }, &https).is_none());

        let domain = t("spam.example");
        let shared = Blocks { subscriptions: vec![sub(vec![domain.clone(), Target::Sender(a.clone())])], ..Default::default() };
        assert_eq!(Index::new(&shared).check_all(&who).len(), 2);
        // An exception cancels the entry it names, not another one.
        let one = Blocks { allows: vec![entry(domain.clone())], ..shared.clone() };
        assert_eq!(Index::new(&one).check_all(&who), vec![Reason::Shared(Target::Sender(a.clone()), "https://lists.example/bl".into())]);
        let both = Blocks { allows: vec![entry(domain.clone()), entry(Target::Sender(a.clone()))], ..shared.clone() };
        assert_eq!(check(&both, &who), None);
        let own_too = Blocks { blocks: vec![entry(domain.clone())], ..both };
        assert!(matches!(check(&own_too, &who), Some(Reason::Own(_))), "an own block beats an exception");
    }

    #[test]
    fn a_shared_list_is_taken_only_signed_by_its_signer_bounded_unambiguous_and_never_older() {
        let publisher = crate::Identity::generate(None, "lists@example.org", "http://o/").unwrap();
        let mallory = crate::Identity::generate(None, "m@example.com", "http://m/").unwrap();
        let mut sub = Subscription {
            url: "https://lists.example/bl".into(),
            signer: crate::pgp::armored(&publisher.cert()).unwrap(),
            signer_fpr: publisher.fpr(),
            refresh_secs: 3600,
            published: 0,
            fetched: 0,
            tried: 0,
            error: None,
            entries: vec![],
        };
        let entries = vec![Target::Domain("spam.example".into()), Target::Sender(fpr('D'))];
        let doc = publish(&publisher, entries.clone(), 1000).unwrap();
        let body = verify(&sub, &doc, 1000).unwrap();
        assert_eq!((body.published, body.entries), (1000, entries.clone()));
        // Signed by someone else, or tampered with after signing.
        assert!(matches!(verify(&sub, &publish(&mallory, entries.clone(), 1000).unwrap(), 1000), Err(ListError::Signature(..))));
        let mut p: Published = serde_json::from_slice(&doc).unwrap();
        p.list = p.list.replace("spam.example", "good.example");
        assert!(matches!(verify(&sub, &serde_json::to_vec(&p).unwrap(), 1000), Err(ListError::Signature(..))));
        // A signed body that says two things (a repeated field) is refused.
        for twice in [
            r#"{"stubmail_blocklist":1,"published":1000,"entries":["domain:a.example"],"entries":[]}"#,
            r#"{"stubmail_blocklist":1,"published":1000,"published":1,"entries":[]}"#,
        ] {
            use base64::Engine as _;
            let sig = publisher.sign_detached(twice.as_bytes()).unwrap();
            let d = serde_json::to_vec(&Published { list: twice.into(), signature: base64::engine::general_purpose::STANDARD.encode(sig) }).unwrap();
            assert!(matches!(verify(&sub, &d, 1000), Err(ListError::Format(_))), "{twice}");
        }
        // An older one (a replay) after a newer one was taken.
        sub.published = 2000;
        assert!(matches!(verify(&sub, &doc, 3000), Err(ListError::Older(1000, 2000))));
        assert!(matches!(verify(&sub, &publish(&publisher, vec![], 500_000).unwrap(), 1000), Err(ListError::Future(_))));
        // Too many entries, even signed.
        let many: Vec<Target> = (0..MAX_ENTRIES + 1).map(|i| Target::Domain(format!("d{i}.example"))).collect();
        assert!(matches!(verify(&sub, &publish(&publisher, many, 3000).unwrap(), 3000), Err(ListError::TooMany(_))));
        for junk in [&b""[..], b"{}", b"not json", br#"{"list":"{}","signature":"!!"}"#] {
            assert!(matches!(verify(&sub, junk, 3000), Err(ListError::Format(_))), "{junk:?}");
        }
    }

    #[test]
    fn a_damaged_file_keeps_the_blocks_read_before_and_with_none_read_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let a = fpr('A');
        let who = Who { sender: &a, outbox: None, emails: &[] };
        update(d.path(), |b| b.blocks.push(Entry { target: Target::Sender(a.clone()), added: 1, note: None })).unwrap();
        let running = BlockCache::new(d.path());
        assert!(running.get().unwrap().check(&who).is_some());
        std::fs::write(path(d.path()), b"{ damaged").unwrap();
        assert!(running.get().unwrap().check(&who).is_some(), "a damaged file unblocks no one");
        // A process started now has read nothing good: it gets an error.
        assert!(matches!(BlockCache::new(d.path()).get(), Err(BlocksError::Damaged(..))));
        // Nor is a device or a FIFO read (a link to /dev/zero).
        std::fs::remove_file(path(d.path())).unwrap();
        std::os::unix::fs::symlink("/dev/zero", path(d.path())).unwrap();
        assert!(BlockCache::new(d.path()).get().is_err());
        std::fs::remove_file(path(d.path())).unwrap();
        assert!(running.get().unwrap().check(&who).is_none(), "a removed file blocks no one");
    }
}
