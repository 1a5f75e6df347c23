//! Accounts (`accounts/`): who may upload, their limits, cached usage,
//! and the per-day recipient log (`rcptlog/`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use stubmail::fsutil::{self, fsync_dir};
use stubmail::pgp;
use stubmail::protocol::{self, Fpr};
use stubmail::openpgp::Cert;

use super::{Files, StoreError};
use crate::store::{Accounts, Limits, UploadRate};

/// The outbox's own base URLs, one per line.
const URLS: &str = "accounts/urls";

pub(super) fn utc_day(now: i64) -> String {
    stubmail::time::rfc3339(now)[..10].to_string()
}

impl Accounts for Files {
    /// The certificate must be usable, and the outbox URL it binds one this
    /// outbox is known by (the first account's URL makes the first name): an
    /// account binding another outbox's URL would make requests signed for
    /// that outbox valid here.
    fn add_account_with(&self, cert: &Cert, new_url: bool) -> anyhow::Result<Fpr> {
        pgp::check_contact(cert)?;
        let f = pgp::fpr_of(cert);
        let _lock = self.lock("urls")?;
        let mut urls = self.outbox_urls()?;
        let new = crate::store::names_to_add(cert, &urls, new_url)?;
        if !new.is_empty() {
            urls.extend(new);
            fsutil::write_atomic(&self.p(URLS), urls.join("\n").as_bytes(), 0o600)?;
        }
        fsutil::write_atomic(&self.p(&format!("accounts/{f}.pgp")), &pgp::binary(cert)?, 0o600)?;
        Ok(f)
    }

    /// Replace an existing account's certificate by the owner's newer one
    /// that binds *another* outbox (the owner moved, `stubmail identity
    /// set-outbox`): this outbox keeps serving it (`/v1/certs`, WKD) so
    /// contacts who still poll here learn where to go — without taking the
    /// other URL as one of its own names (requests signed for that outbox
    /// stay invalid here). Only the same key, still usable.
    fn update_account_cert(&self, cert: &Cert) -> anyhow::Result<()> {
        pgp::check_contact(cert)?;
        let f = pgp::fpr_of(cert);
        let Some(old) = self.account(&f)? else { anyhow::bail!("{f} is not an account of this outbox") };
        // The names are fixed before the account's certificate changes.
        let _lock = self.lock("urls")?;
        if self.outbox_urls()?.is_empty() {
            anyhow::bail!("this outbox does not know its own URL yet: run `post_manager account add --new-url` first");
        }
        // The URL it was registered with stays on record: names derived
        // again from the accounts (a lost `urls` file) come from it, never
        // from a URL a pushed certificate binds.
        let registered = self.p(&format!("accounts/{f}.registered-url"));
        if !registered.exists() {
            if let Some(u) = pgp::outbox_of(&old).and_then(|u| protocol::outbox_id(&u)) {
                fsutil::write_atomic(&registered, u.as_bytes(), 0o600)?;
            }
        }
        // Merged, then reduced as a whole: pushes add up, and the stored
        // key stays within the bounds of any remembered one.
        let merged = pgp::reduced(&old.merge_public(cert.clone())?)?;
        fsutil::write_atomic(&self.p(&format!("accounts/{f}.pgp")), &pgp::binary(&merged)?, 0o600)?;
        Ok(())
    }

    /// The base URLs this outbox is known by: those its accounts' own
    /// certificates bind (`accounts/urls`, kept by `add_account`; made
    /// from the accounts if missing). Signed requests are bound to one of
    /// them (docs/PROTOCOL.md §3); an operator adds others with
    /// `--public-url`.
    fn outbox_urls(&self) -> io::Result<Vec<String>> {
        match fs::read_to_string(self.p(URLS)) {
            Ok(t) => Ok(t.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A data directory from before the list was kept: its
                // accounts' URLs, if they agree on one. If they name several,
                // none is taken on trust (one of them could be another
                // outbox's): the operator says which with --public-url, or
                // `account add --new-url`, which writes the list.
                let mut urls: Vec<String> = self
                    .accounts()?
                    .iter()
                    .filter_map(|c| {
                        // A moved account counts with the URL it registered with.
                        let f = pgp::fpr_of(c);
                        fs::read_to_string(self.p(&format!("accounts/{f}.registered-url")))
                            .ok()
                            .or_else(|| pgp::outbox_of(c))
                            .and_then(|u| protocol::outbox_id(u.trim()))
                    })
                    .collect();
                urls.sort();
                urls.dedup();
                if urls.len() > 1 {
                    tracing::error!(
                        "the accounts bind several outbox URLs ({}) and {URLS} is missing: no signed request is accepted \
                         for them until the operator names this outbox's URLs (serve --public-url, or account add --new-url)",
                        urls.join(", ")
                    );
                    return Ok(vec![]);
                }
                // Agreed: keep the list, so no request parses every account
                // again (an account added later keeps it up to date).
                if !urls.is_empty() {
                    let _ = fsutil::write_atomic(&self.p(URLS), urls.join("\n").as_bytes(), 0o600);
                }
                Ok(urls)
            }
            Err(e) => Err(e),
        }
    }

    /// Set an account's limits.
    fn set_limits(&self, f: &Fpr, l: &Limits) -> io::Result<()> {
        fsutil::write_atomic(&self.p(&format!("accounts/{f}.limits.json")), &serde_json::to_vec_pretty(l).expect("serialisable"), 0o600)
    }

    fn limits(&self, f: &Fpr) -> Limits {
        fs::read(self.p(&format!("accounts/{f}.limits.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Limits and usage of an account at `now`: stored bytes and messages
    /// (counted from the store, so never out of step with it) and distinct
    /// recipients of the UTC day.
    fn account_status(&self, f: &Fpr, now: i64) -> Result<protocol::AccountStatus, StoreError> {
        let l = self.limits(f);
        let (bytes, messages) = self.usage(f)?;
        let today: Vec<Fpr> = self.recipients_today(f, now)?.iter().filter_map(|r| Fpr::parse(r).ok()).collect();
        Ok(protocol::AccountStatus {
            fpr: Some(f.clone()),
            bytes,
            messages,
            recipients_today: today.len() as u64,
            today,
            max_bytes: l.max_bytes,
            max_messages: l.max_messages,
            max_recipients_per_day: l.max_recipients_per_day,
        })
    }








    fn remove_account(&self, f: &Fpr) -> io::Result<bool> {
        let _ = fs::remove_file(self.p(&format!("accounts/{f}.usage")));
        match fs::remove_file(self.p(&format!("accounts/{f}.pgp"))) {
            Ok(()) => {
                fsync_dir(&self.p("accounts"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn accounts(&self) -> io::Result<Vec<Cert>> {
        let mut v = Vec::new();
        for e in fs::read_dir(self.p("accounts"))? {
            let p = e?.path();
            // Only `<FPR>.pgp`: not limits files, not leftovers of a write
            // a crash cut short.
            if p.extension().and_then(|x| x.to_str()) != Some("pgp") || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
            if let Some(c) = self.read_cert(&format!("accounts/{name}")) {
                v.push(c);
            }
        }
        Ok(v)
    }

    /// The certificate of an account, if `f` is one.
    fn account(&self, f: &Fpr) -> io::Result<Option<Cert>> {
        self.try_read_cert(&format!("accounts/{f}.pgp"))
    }


}

impl Files {
    /// Bytes and messages an account stores now. Read from a cache,
    /// `accounts/<FPR>.usage`, kept under the account's lock by uploads and
    /// unsends; retention drops it for the accounts it touched, and a
    /// missing or unreadable cache is recounted from the store (one stat
    /// per message). Without the cache every upload and every SMTP
    /// transaction paid that recount: quadratic in the account's size.
    pub(super) fn usage(&self, f: &Fpr) -> io::Result<(u64, u64)> {
        let cache = self.p(&format!("accounts/{f}.usage"));
        if let Some(u) = fs::read_to_string(&cache).ok().and_then(|t| {
            let (b, m) = t.trim().split_once(' ')?;
            Some((b.parse().ok()?, m.parse().ok()?))
        }) {
            return Ok(u);
        }
        let u = self.count_usage(f)?;
        self.write_usage(f, u)?;
        Ok(u)
    }

    /// Soft state: not fsync'd; after a crash it is recounted or, at
    /// worst, off by the last change until retention's next pass.
    pub(super) fn write_usage(&self, f: &Fpr, (bytes, messages): (u64, u64)) -> io::Result<()> {
        fsutil::write_replace(&self.p(&format!("accounts/{f}.usage")), format!("{bytes} {messages}\n").as_bytes())
    }

    /// Change the cached usage; the caller holds the account's lock.
    pub(super) fn adjust_usage(&self, f: &Fpr, bytes: i64, messages: i64) -> io::Result<()> {
        let (b, m) = self.usage(f)?;
        self.write_usage(f, (b.saturating_add_signed(bytes), m.saturating_add_signed(messages)))
    }

    /// Drop the cache (it is recounted when next needed).
    pub(super) fn forget_usage(&self, f: &Fpr) -> io::Result<()> {
        let _account = self.lock(&format!("account-{f}"))?;
        match fs::remove_file(self.p(&format!("accounts/{f}.usage"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Count an account's usage from the store itself.
    pub(super) fn count_usage(&self, f: &Fpr) -> io::Result<(u64, u64)> {
        let (mut bytes, mut messages) = (0, 0);
        if let Ok(rd) = fs::read_dir(self.p(&format!("sent/{f}"))) {
            for e in rd {
                let name = e?.file_name();
                let Some(id) = name.to_str().filter(|s| protocol::is_valid_id(s)) else { continue };
                if let Ok(m) = fs::metadata(self.p(&format!("messages/{id}"))) {
                    bytes += m.len();
                    messages += 1;
                }
            }
        }
        Ok((bytes, messages))
    }

    pub(super) fn recipients_today(&self, f: &Fpr, now: i64) -> io::Result<std::collections::BTreeSet<String>> {
        match fs::read_to_string(self.p(&format!("rcptlog/{f}/{}", utc_day(now)))) {
            Ok(t) => Ok(t.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn log_recipients(&self, f: &Fpr, now: i64, new: &[Fpr]) -> io::Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let dir = self.p(&format!("rcptlog/{f}"));
        fs::create_dir_all(&dir)?;
        let mut file = OpenOptions::new().create(true).append(true).open(dir.join(utc_day(now)))?;
        let text: String = new.iter().map(|r| format!("{r}\n")).collect();
        // Made durable by the caller's flush, with the upload it counts.
        file.write_all(text.as_bytes())
    }

    /// Check an upload against the account's limits; returns the recipients
    /// that are new today (to be logged once the upload is stored).
    pub(super) fn check_limits(&self, sender: &Fpr, id: &str, size: u64, recipients: &[Fpr], now: i64) -> Result<Vec<Fpr>, StoreError> {
        let l = self.limits(sender);
        let (bytes, messages) = self.usage(sender)?;
        let already = self.p(&format!("messages/{id}")).exists();
        let today = self.recipients_today(sender, now)?;
        let new: Vec<Fpr> = recipients.iter().filter(|r| !today.contains(r.as_str())).cloned().collect();
        l.check((bytes, messages), (!already).then_some(size), (today.len() + new.len()) as u64)?;
        // The minute's uploads: soft state (a crash may forget a minute's
        // count, which costs nothing), written under the account's lock.
        let rate_file = self.p(&format!("accounts/{sender}.rate"));
        let rate: UploadRate = fs::read(&rate_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let next = rate.after(&l, if already { 0 } else { size }, now)?;
        fsutil::write_replace(&rate_file, &serde_json::to_vec(&next).expect("serialisable"))?;
        Ok(new)
    }
}
