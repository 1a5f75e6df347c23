//! `stubmail block`, `unblock`, `blocks`: the receiver's blocklist
//! (`stubmail::blocklist`). http2mbox reads it before every poll and for
//! every stub, so a block takes effect before the next poll.

use stubmail::blocklist::{self, Entry, Index, Target, Who};
use stubmail::{Home, pgp};

pub fn block(home: &Home, what: &str, at: Option<&str>, note: Option<String>) -> anyhow::Result<()> {
    let target = Target::from_user(what, at)?;
    let me = home.load_identity()?;
    let mine = me.cert();
    let (emails, outbox) = (pgp::all_emails_of(&mine), pgp::outbox_of(&mine));
    let me_fpr = me.fpr();
    let names_me = Who { sender: &me_fpr, outbox: outbox.as_deref(), emails: &emails }.is_named_by(&target);
    if names_me {
        // Your own mail is never blocked; an exception you made can still
        // be taken back (a shared list's entry never applies to you).
        let had = blocklist::update(&home.data_dir, |b| {
            let n = b.allows.len();
            b.allows.retain(|e| e.target != target);
            n != b.allows.len()
        })?;
        if had {
            println!("{target}: your exception is removed; the shared lists naming it apply again (never to your own mail)");
            return Ok(());
        }
        anyhow::bail!(
            "{target} names you (your key, address, domain or outbox): your own mail cannot be blocked; block the other party's fingerprint or address instead"
        );
    }
    let added = blocklist::update(&home.data_dir, |b| {
        b.allows.retain(|e| e.target != target);
        if b.blocks.iter().any(|e| e.target == target) {
            return false;
        }
        b.blocks.push(Entry { target: target.clone(), added: stubmail::time::unix_now(), note });
        true
    })?;
    println!("{target}: {}", if added { "blocked" } else { "already blocked" });
    // The contacts this names: they stay, marked blocked.
    for c in home.keyring().all().unwrap_or_default() {
        let f = pgp::fpr_of(&c);
        let (emails, outbox) = (pgp::all_emails_of(&c), pgp::outbox_of(&c));
        if (Who { sender: &f, outbox: outbox.as_deref(), emails: &emails }).is_named_by(&target) {
            println!("  contact {f} {}: stays in your keyring, marked blocked; nothing is fetched from them", emails.join(", "));
        }
    }
    // Strangers waiting in quarantine whom this names (by key or by the
    // outbox their stubs named): turned away, nothing fetched from them.
    let config = home.load_config()?;
    let q = http2mbox::notify::Quarantine::open(&home.state_dir(), config.notify.max_per_sender, config.notify.max_senders)?;
    for i in q.list()? {
        if (Who { sender: &i.sender, outbox: Some(&i.outbox), emails: &[] }).is_named_by(&target) && q.reject(&i.sender)? {
            println!("  stranger {}: their introduction is forgotten (`stubmail intro list`)", i.sender);
        }
    }
    Ok(())
}

pub fn unblock(home: &Home, what: &str, at: Option<&str>) -> anyhow::Result<()> {
    let target = Target::from_user(what, at)?;
    let (removed, shared, excepted) = blocklist::update(&home.data_dir, |b| {
        let before = b.blocks.len();
        b.blocks.retain(|e| e.target != target);
        let removed = b.blocks.len() != before;
        let shared: Vec<String> = b.subscriptions.iter().filter(|s| s.entries.contains(&target)).map(|s| s.url.clone()).collect();
        // An exception to the shared lists only when asked for it: undoing
        // one's own block of something a list also names leaves the list
        // in force (a second `unblock` makes the exception).
        let excepted = !removed && !shared.is_empty() && !b.allows.iter().any(|e| e.target == target);
        if excepted {
            b.allows.push(Entry { target: target.clone(), added: stubmail::time::unix_now(), note: None });
        }
        (removed, shared, excepted)
    })?;
    let form = target.user_form();
    match (removed, shared.is_empty(), excepted) {
        (true, true, _) => println!("{target}: unblocked"),
        (true, false, _) => println!(
            "{target}: your block is removed, but {} still name(s) it; `stubmail{} unblock {form}` again makes an exception",
            shared.join(", "),
            super::init::home_flag(home)
        ),
        (false, false, true) => println!("{target}: an exception to {}, which name(s) it", shared.join(", ")),
        (false, false, false) => println!("{target}: already an exception to {}", shared.join(", ")),
        (false, true, _) => anyhow::bail!(
            "{target} is not itself blocked; `stubmail keys list` says what blocks each contact, and `stubmail blocks` lists every entry"
        ),
    }
    Ok(())
}

pub fn list(home: &Home, json: bool) -> anyhow::Result<()> {
    let b = blocklist::load(&home.data_dir)?;
    if json {
        // The shared lists' entries can be many: counted, not listed.
        let subs: Vec<_> = b
            .subscriptions
            .iter()
            .map(|s| {
                serde_json::json!({
                    "url": s.url, "signer": s.signer_fpr, "entries": s.entries.len(), "published": s.published,
                    "fetched": s.fetched, "error": s.error,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "blocks": b.blocks, "allows": b.allows, "subscriptions": subs })
            )?
        );
        return Ok(());
    }
    if b.blocks.is_empty() && b.allows.is_empty() && b.subscriptions.is_empty() {
        println!(
            "nothing blocked; `stubmail block WHAT` blocks a fingerprint, an address, a domain or an outbox"
        );
    }
    for e in &b.blocks {
        let note = e
            .note
            .as_deref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        println!(
            "block  {}  since {}{note}",
            e.target,
            stubmail::time::rfc3339(e.added)
        );
    }
    for e in &b.allows {
        println!(
            "allow  {}  since {} (an exception to the shared lists)",
            e.target,
            stubmail::time::rfc3339(e.added)
        );
    }
    for s in &b.subscriptions {
        let state = match (&s.error, s.fetched) {
            (Some(e), _) => format!("last refresh failed: {e}"),
            (None, 0) => "not fetched yet".to_string(),
            (None, t) => format!("fetched {}", stubmail::time::rfc3339(t)),
        };
        println!(
            "shared {}  {} entries, signed by {}, {state}",
            s.url,
            s.entries.len(),
            s.signer_fpr
        );
    }
    Ok(())
}

/// What blocks the contact, for `keys list`.
pub fn reasons(index: &Index, c: &stubmail::openpgp::Cert) -> Vec<blocklist::Reason> {
    let f = pgp::fpr_of(c);
    let (emails, outbox) = (pgp::all_emails_of(c), pgp::outbox_of(c));
    index.check_all(&Who { sender: &f, outbox: outbox.as_deref(), emails: &emails })
}

pub fn blocklist(home: &Home, cmd: crate::cli::BlocklistCommand) -> anyhow::Result<()> {
    use crate::cli::BlocklistCommand as C;
    use anyhow::Context;
    let now = stubmail::time::unix_now();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cmd {
        C::Subscribe { url, signer, every } => {
            let u = reqwest::Url::parse(&url).with_context(|| format!("{url:?} is not a URL"))?;
            if !matches!(u.scheme(), "https" | "http") {
                anyhow::bail!("{url:?}: a blocklist is fetched over https:// (or http://)");
            }
            if !u.username().is_empty() || u.password().is_some() {
                anyhow::bail!("{url:?}: a user name or password in the URL would be shown by `stubmail blocks`; publish the list where it can be fetched without one");
            }
            let bytes = stubmail::fsutil::read_bounded(&signer, 1 << 20).with_context(|| format!("reading {}", signer.display()))?;
            let mut certs = pgp::parse_certs(&bytes)?;
            if certs.len() != 1 {
                anyhow::bail!("{} holds {} certificates: give the publisher's alone (`gpg --export --armor FINGERPRINT`)", signer.display(), certs.len());
            }
            let cert = certs.remove(0);
            let sub = blocklist::Subscription {
                url: url.clone(),
                signer: pgp::armored(&cert)?,
                signer_fpr: pgp::fpr_of(&cert),
                refresh_secs: every * 3600,
                published: 0,
                fetched: 0,
                tried: 0,
                error: None,
                entries: vec![],
            };
            // Taken only once it verifies: a wrong URL or key is said now.
            let body = rt()?
                .block_on(blocklist::fetch(
                    &stubmail::client::http_client()?,
                    &sub,
                    now,
                ))
                .with_context(|| format!("the list at {url} is not taken"))?;
            let n = body.entries.len();
            blocklist::update(&home.data_dir, |b| {
                b.subscriptions.retain(|s| s.url != url);
                b.subscriptions.push(blocklist::Subscription {
                    published: body.published,
                    fetched: now,
                    tried: now,
                    entries: body.entries,
                    ..sub
                });
            })?;
            println!(
                "subscribed to {url}: {n} entries, signed by {}; refreshed every {every} h",
                pgp::fpr_of(&cert)
            );
        }
        C::Unsubscribe { url } => {
            let had = blocklist::update(&home.data_dir, |b| {
                let n = b.subscriptions.len();
                b.subscriptions.retain(|s| s.url != url);
                n != b.subscriptions.len()
            })?;
            if !had {
                anyhow::bail!("not subscribed to {url}; `stubmail blocks` lists the subscriptions");
            }
            println!("unsubscribed from {url}");
        }
        C::Refresh => {
            let r = rt()?.block_on(blocklist::refresh(
                &home.data_dir,
                &stubmail::client::http_client()?,
                now,
                true,
            ))?;
            if r.is_empty() {
                println!(
                    "no shared blocklists; `stubmail blocklist subscribe URL --signer FILE` adds one"
                );
            }
            let mut failed = false;
            for (url, o) in r {
                match o {
                    Ok(n) => println!("{url}: {n} entries"),
                    Err(e) => {
                        failed = true;
                        println!("{url}: not refreshed ({e}); the entries held stay in force");
                    }
                }
            }
            if failed {
                std::process::exit(75);
            }
        }
        C::Publish { out } => {
            let me = home.load_identity()?;
            let entries: Vec<Target> = blocklist::load(&home.data_dir)?
                .blocks
                .into_iter()
                .map(|e| e.target)
                .collect();
            let doc = blocklist::publish(&me, entries, now)?;
            match out {
                Some(p) => {
                    stubmail::fsutil::write_atomic(&p, &doc, 0o644)
                        .with_context(|| format!("writing {}", p.display()))?;
                    eprintln!(
                        "wrote {} (signed by {}); subscribers need your certificate: `stubmail keys export`",
                        p.display(),
                        me.fpr()
                    );
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&doc)?;
                }
            }
        }
    }
    Ok(())
}
