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
    /// sender at that outbox only.
    pub fn from_user(what: &str, at: Option<&str>) -> Result<Target, BadTarget> {
        let what = what.trim();
        if let Some(at) = at {
            let outbox = outbox_host(at).ok_or_else(|| {
                BadTarget(format!("{at:?} is not an outbox URL (http:// or https://)"))
            })?;
            let sender = Fpr::parse(what).map_err(|_| {
                BadTarget(format!(
                    "with --at, name the sender by full fingerprint, not {what:?}"
                ))
            })?;
            return Ok(Target::SenderAt { outbox, sender });
        }
        if let Ok(f) = Fpr::parse(what) {
            return Ok(Target::Sender(f));
        }
        if what.contains("://") {
            return outbox_host(what).map(Target::Outbox).ok_or_else(|| {
                BadTarget(format!(
                    "{what:?} is not an outbox URL (http:// or https://)"
                ))
            });
        }
        if let Some((local, domain)) = what.rsplit_once('@') {
            if local.is_empty() || !is_domain(domain) {
                return Err(BadTarget(format!("{what:?} is not an address")));
            }
            return Ok(Target::Address(what.to_ascii_lowercase()));
        }
        let d = what.trim_start_matches("*.").trim_end_matches('.');
        if is_domain(d) {
            return Ok(Target::Domain(d.to_ascii_lowercase()));
        }
        Err(BadTarget(format!(
            "{what:?} is not a fingerprint (40 hex digits), an address, a domain or an outbox URL (https://HOST/)"
        )))
    }
}

impl Target {
    /// The arguments of `stubmail block`/`unblock` that name this target.
    pub fn user_form(&self) -> String {
        // A URL whose host:port parses back to exactly `hp`.
        let url = |hp: &str| {
            if hp.ends_with(":443") {
                format!("http://{hp}/")
            } else {
                format!("https://{hp}/")
            }
        };
        match self {
            Target::Sender(f) => f.to_string(),
            Target::SenderAt { outbox, sender } => format!("{sender} --at {}", url(outbox)),
            Target::Outbox(o) => url(o),
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

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The `host[:port]` of an outbox URL, lower-case, without the scheme's
/// default port.
pub fn outbox_host(url: &str) -> Option<String> {
    let id = crate::protocol::outbox_id(url)?;
    let rest = id.split_once("://")?.1;
    Some(rest.split('/').next()?.to_string())
}

/// The host alone of `host[:port]` (IPv6 literals keep their brackets).
fn host_only(hp: &str) -> &str {
    if hp.starts_with('[') {
        return hp.find(']').map_or(hp, |i| &hp[..=i]);
    }
    hp.rsplit_once(':').map_or(hp, |(h, _)| h)
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
    /// The stored form, as [`Display`](fmt::Display) writes it.
    fn from_str(s: &str) -> Result<Target, BadTarget> {
        let bad = || {
            BadTarget(format!(
                "{:?} is not a block entry (kind:value)",
                s.chars().take(100).collect::<String>()
            ))
        };
        let (kind, v) = s.split_once(':').ok_or_else(bad)?;
        let fpr = |x: &str| Fpr::parse(x).map_err(|_| bad());
        let host_ok = |h: &str| {
            !h.is_empty()
                && h.len() <= 300
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        };
        Ok(match kind {
            "sender" => Target::Sender(fpr(v)?),
            "sender-at" => {
                let (o, f) = v.split_once(' ').ok_or_else(bad)?;
                if !host_ok(o) {
                    return Err(bad());
                }
                Target::SenderAt {
                    outbox: o.to_ascii_lowercase(),
                    sender: fpr(f)?,
                }
            }
            "outbox" if host_ok(v) => Target::Outbox(v.to_ascii_lowercase()),
            "address"
                if v.rsplit_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && is_domain(d))
                    && v.len() <= 320 =>
            {
                Target::Address(v.to_ascii_lowercase())
            }
            "domain" if is_domain(v) => Target::Domain(v.to_ascii_lowercase()),
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
        if let Some(hp) = self.outbox.and_then(outbox_host) {
            let host = host_only(&hp).to_string();
            out.push(Target::SenderAt {
                outbox: hp.clone(),
                sender: self.sender.clone(),
            });
            if host != hp {
                out.push(Target::SenderAt {
                    outbox: host.clone(),
                    sender: self.sender.clone(),
                });
                out.push(Target::Outbox(host));
            }
            out.push(Target::Outbox(hp));
        }
        for e in self.emails {
            let e = e.to_ascii_lowercase();
            if let Some((_, domain)) = e.rsplit_once('@') {
                // The domain and each parent domain (a.b.example → b.example → example).
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

    /// Whether `who` is blocked, and by what.
    pub fn check(&self, who: &Who) -> Option<Reason> {
        if self.is_empty() {
            return None;
        }
        let ts = who.targets();
        if let Some(t) = ts.iter().find(|t| self.own.contains(t)) {
            return Some(Reason::Own(t.clone()));
        }
        if ts.iter().any(|t| self.allows.contains(t)) {
            return None;
        }
        ts.into_iter().find_map(|t| {
            self.shared
                .get(&t)
                .map(|url| Reason::Shared(t, url.clone()))
        })
    }
}

/// Errors reading or writing `blocks.json`.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("{0} is damaged ({1}); fix or remove it (your blocks are in it)")]
    Damaged(String, serde_json::Error),
}

/// `blocks.json` in the data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("blocks.json")
}

/// Read `blocks.json` (missing: nothing blocked).
pub fn load(data_dir: &Path) -> Result<Blocks, BlocksError> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| BlocksError::Damaged(p.display().to_string(), e))
        }
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
    let p = path(data_dir);
    crate::fsutil::write_atomic(
        &p,
        &serde_json::to_vec_pretty(&b).expect("serialisable"),
        0o600,
    )
    .map_err(io_err(&p))?;
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
    // Count before building: a signed list is still bounded.
    let raw: serde_json::Value =
        serde_json::from_str(&p.list).map_err(|e| ListError::Format(e.to_string()))?;
    let n = raw
        .get("entries")
        .and_then(|e| e.as_array())
        .map_or(0, Vec::len);
    if n > MAX_ENTRIES {
        return Err(ListError::TooMany(n));
    }
    let body: ListBody =
        serde_json::from_value(raw).map_err(|e| ListError::Format(e.to_string()))?;
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
        let r = http
            .get(&sub.url)
            .send()
            .await
            .map_err(|e| ListError::Fetch(e.to_string()))?;
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
    cached: Mutex<(Option<Stamp>, Arc<Index>)>,
}

type Stamp = (u64, u64, std::time::SystemTime);

impl BlockCache {
    pub fn new(data_dir: &Path) -> BlockCache {
        BlockCache {
            data_dir: data_dir.to_path_buf(),
            cached: Mutex::new((None, Arc::new(Index::default()))),
        }
    }

    /// The current index. A damaged file keeps the last good one (and
    /// says so in the log): a typo must not unblock everyone.
    pub fn get(&self) -> Arc<Index> {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(path(&self.data_dir))
            .ok()
            .and_then(|m| Some((m.ino(), m.len(), m.modified().ok()?)));
        let mut c = self.cached.lock().expect("not poisoned");
        if c.0 != stamp || c.0.is_none() && stamp.is_none() && !c.1.is_empty() {
            match load(&self.data_dir) {
                Ok(b) => *c = (stamp, Arc::new(Index::new(&b))),
                Err(e) => {
                    tracing::warn!("{e}; keeping the blocks read before");
                    c.0 = stamp;
                }
            }
        }
        c.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fpr(c: char) -> Fpr {
        Fpr::parse(&c.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn user_input_names_the_right_target() {
        let f = "A".repeat(40);
        assert_eq!(
            Target::from_user(&f.to_lowercase(), None).unwrap(),
            Target::Sender(fpr('A'))
        );
        assert_eq!(
            Target::from_user("Spam@Example.COM", None).unwrap(),
            Target::Address("spam@example.com".into())
        );
        assert_eq!(
            Target::from_user("spam.example", None).unwrap(),
            Target::Domain("spam.example".into())
        );
        assert_eq!(
            Target::from_user("*.spam.example", None).unwrap(),
            Target::Domain("spam.example".into())
        );
        assert_eq!(
            Target::from_user("https://Out.Example:443/x/", None).unwrap(),
            Target::Outbox("out.example".into())
        );
        assert_eq!(
            Target::from_user("http://127.0.0.1:8080/", None).unwrap(),
            Target::Outbox("127.0.0.1:8080".into())
        );
        assert_eq!(
            Target::from_user(&f, Some("https://out.example/")).unwrap(),
            Target::SenderAt {
                outbox: "out.example".into(),
                sender: fpr('A')
            }
        );
        for bad in [
            "",
            "nodots",
            "@example.com",
            "a@",
            "a@b",
            "ftp://x/",
            "x y.example",
            "spam.example/path",
        ] {
            assert!(
                Target::from_user(bad, None).is_err(),
                "{bad:?} names nothing"
            );
        }
        assert!(
            Target::from_user("spam@example.com", Some("https://o/")).is_err(),
            "--at takes a fingerprint"
        );
    }

    #[test]
    fn stored_form_round_trips_and_hostile_forms_are_refused() {
        for t in [
            Target::Sender(fpr('B')),
            Target::SenderAt {
                outbox: "[::1]:8080".into(),
                sender: fpr('C'),
            },
            Target::Outbox("out.example".into()),
            Target::Address("a@b.example".into()),
            Target::Domain("b.example".into()),
        ] {
            assert_eq!(t.to_string().parse::<Target>().unwrap(), t);
        }
        // What the CLI prints to undo a block runs as printed.
        for t in [
            Target::Sender(fpr('B')),
            Target::SenderAt {
                outbox: "out.example:8080".into(),
                sender: fpr('C'),
            },
            Target::Outbox("out.example".into()),
            Target::Outbox("out.example:80".into()),
            Target::Outbox("out.example:443".into()),
            Target::Outbox("127.0.0.1:8080".into()),
            Target::Address("a@b.example".into()),
            Target::Domain("b.example".into()),
        ] {
            let form = t.user_form();
            let (what, at) = match form.split_once(" --at ") {
                Some((w, a)) => (w, Some(a)),
                None => (form.as_str(), None),
            };
            assert_eq!(Target::from_user(what, at).unwrap(), t, "{form}");
        }
        for bad in [
            "",
            "sender:",
            "sender:xyz",
            "outbox:",
            "outbox:a/b",
            "domain:x",
            "address:@x.y",
            "nothing:x",
            "sender-at:host",
            &"x".repeat(100_000),
        ] {
            assert!(
                bad.parse::<Target>().is_err(),
                "{:?}",
                bad.chars().take(20).collect::<String>()
            );
        }
    }

    #[test]
    fn own_blocks_beat_own_exceptions_which_beat_shared_lists() {
        let (a, b) = (fpr('A'), fpr('B'));
        let emails = vec!["x@mail.spam.example".to_string()];
        let who = Who {
            sender: &a,
            outbox: Some("http://127.0.0.1:8080/o/"),
            emails: &emails,
        };
        let other = Who {
            sender: &b,
            outbox: Some("http://127.0.0.1:9090/"),
            emails: &[],
        };
        let entry = |t: Target| Entry {
            target: t,
            added: 0,
            note: None,
        };
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
        for t in [
            Target::Sender(a.clone()),
            Target::Domain("spam.example".into()),
            Target::Domain("mail.spam.example".into()),
            Target::Address("x@mail.spam.example".into()),
            Target::Outbox("127.0.0.1".into()),
            Target::Outbox("127.0.0.1:8080".into()),
            Target::SenderAt {
                outbox: "127.0.0.1:8080".into(),
                sender: a.clone(),
            },
        ] {
            let b = Blocks {
                blocks: vec![entry(t.clone())],
                ..Default::default()
            };
            assert_eq!(check(&b, &who), Some(Reason::Own(t.clone())), "{t}");
            let other_blocked = check(&b, &other).is_some();
            assert_eq!(
                other_blocked,
                t == Target::Outbox("127.0.0.1".into()),
                "{t} and another sender on another port"
            );
        }
        // Near misses name nobody.
        for t in [
            Target::Domain("example".into()),
            Target::Domain("pam.example".into()),
            Target::Outbox("127.0.0.1:8081".into()),
        ] {
            let b = Blocks {
                blocks: vec![entry(t.clone())],
                ..Default::default()
            };
            assert_eq!(check(&b, &who), None, "{t}");
        }
        let shared = Blocks {
            subscriptions: vec![sub(vec![Target::Domain("spam.example".into())])],
            ..Default::default()
        };
        assert!(matches!(check(&shared, &who), Some(Reason::Shared(..))));
        let excepted = Blocks {
            allows: vec![entry(Target::Sender(a.clone()))],
            ..shared.clone()
        };
        assert_eq!(
            check(&excepted, &who),
            None,
            "an exception beats a shared list"
        );
        let own_too = Blocks {
            blocks: vec![entry(Target::Domain("spam.example".into()))],
            ..excepted
        };
        assert!(
            matches!(check(&own_too, &who), Some(Reason::Own(_))),
            "an own block beats an exception"
        );
    }

    #[test]
    fn a_shared_list_is_taken_only_signed_by_its_signer_bounded_and_never_older() {
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
        let entries = vec![
            Target::Domain("spam.example".into()),
            Target::Sender(fpr('D')),
        ];
        let doc = publish(&publisher, entries.clone(), 1000).unwrap();
        let body = verify(&sub, &doc, 1000).unwrap();
        assert_eq!((body.published, body.entries), (1000, entries.clone()));
        // Signed by someone else, or tampered with after signing.
        assert!(matches!(
            verify(
                &sub,
                &publish(&mallory, entries.clone(), 1000).unwrap(),
                1000
            ),
            Err(ListError::Signature(..))
        ));
        let mut p: Published = serde_json::from_slice(&doc).unwrap();
        p.list = p.list.replace("spam.example", "good.example");
        assert!(matches!(
            verify(&sub, &serde_json::to_vec(&p).unwrap(), 1000),
            Err(ListError::Signature(..))
        ));
        // An older one (a replay) after a newer one was taken.
        sub.published = 2000;
        assert!(matches!(
            verify(&sub, &doc, 3000),
            Err(ListError::Older(1000, 2000))
        ));
        assert!(matches!(
            verify(&sub, &publish(&publisher, vec![], 500_000).unwrap(), 1000),
            Err(ListError::Future(_))
        ));
        // Too many entries, even signed.
        let many: Vec<Target> = (0..MAX_ENTRIES + 1)
            .map(|i| Target::Domain(format!("d{i}.example")))
            .collect();
        assert!(matches!(
            verify(&sub, &publish(&publisher, many, 3000).unwrap(), 3000),
            Err(ListError::TooMany(_))
        ));
        for junk in [
            &b""[..],
            b"{}",
            b"not json",
            br#"{"list":"{}","signature":"!!"}"#,
        ] {
            assert!(
                matches!(verify(&sub, junk, 3000), Err(ListError::Format(_))),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn the_cache_follows_the_file_and_keeps_the_last_good_one_when_damaged() {
        let d = tempfile::tempdir().unwrap();
        let c = BlockCache::new(d.path());
        let a = fpr('A');
        let who = Who {
            sender: &a,
            outbox: None,
            emails: &[],
        };
        assert!(c.get().check(&who).is_none());
        update(d.path(), |b| {
            b.blocks.push(Entry {
                target: Target::Sender(a.clone()),
                added: 1,
                note: None,
            })
        })
        .unwrap();
        assert!(c.get().check(&who).is_some());
        std::fs::write(path(d.path()), b"{ damaged").unwrap();
        assert!(
            c.get().check(&who).is_some(),
            "a damaged file unblocks no one"
        );
        std::fs::remove_file(path(d.path())).unwrap();
        assert!(
            c.get().check(&who).is_none(),
            "a removed file blocks no one"
        );
    }
}
