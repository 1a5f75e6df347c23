//! `stubmail intro`: first contact. Strangers' stubs wait in quarantine
//! (http2mbox, `notify.first_contact = true`); nothing is fetched from a
//! stranger until the user accepts them here.

use anyhow::Context;
use stubmail::protocol::Fpr;
use stubmail::{pgp, Home};

use crate::cli::IntroCommand;

pub fn run(home: &Home, cmd: IntroCommand) -> anyhow::Result<()> {
    let config = home.load_config()?;
    let q = http2mbox::notify::Quarantine::open(&home.state_dir(), config.notify.max_per_sender, config.notify.max_senders)?;
    match cmd {
        IntroCommand::List => {
            let list = q.list()?;
            let away = q.turned_away();
            if list.is_empty() && away == Default::default() {
                println!("no introductions waiting");
                if !config.notify.first_contact {
                    println!("(first contact is off: set notify.first_contact = true to hold strangers' stubs)");
                }
            }
            for i in list {
                let bytes: u64 = i.stubs.iter().map(|s| s.size).sum();
                println!(
                    "{}  {} message(s), {} bytes, outbox {}, since {} (unverified until accepted)",
                    i.sender,
                    i.stubs.len(),
                    bytes,
                    i.outbox,
                    stubmail::time::rfc3339(i.first_seen)
                );
                if let Some(t) = i.last_over_limit {
                    println!(
                        "    OVER LIMIT: {} more stub(s) refused (notify.max_per_sender = {}), the last {}; \
                         `stubmail{} block {}` stops them",
                        i.over_limit,
                        config.notify.max_per_sender,
                        stubmail::time::rfc3339(t),
                        super::init::home_flag(home),
                        i.sender
                    );
                }
            }
            if let Some(t) = away.last_quarantine_full {
                println!(
                    "QUARANTINE FULL: {} stub(s) of new strangers turned away (notify.max_senders = {}), the last {}; \
                     `stubmail{} intro reject FPR` makes room",
                    away.quarantine_full,
                    config.notify.max_senders,
                    stubmail::time::rfc3339(t),
                    super::init::home_flag(home)
                );
            }
            if let Some(t) = away.last_source_over_limit {
                let mut sources: Vec<(&String, &u64)> = away.sources.iter().collect();
                sources.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                println!(
                    "SOURCE OVER LIMIT: {} stub(s) of new strangers turned away (notify.new_strangers_per_source_hour = {}), the last {}, from {}",
                    away.source_over_limit,
                    config.notify.new_strangers_per_source_hour,
                    stubmail::time::rfc3339(t),
                    sources.iter().map(|(a, n)| format!("{a} ({n})")).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(())
        }
        IntroCommand::Reject { fingerprint } => {
            let f = Fpr::parse(&fingerprint)?;
            let had = q.reject(&f)?;
            println!("{f}: rejected{}; their stubs are dropped from now on", if had { " and forgotten" } else { "" });
            Ok(())
        }
        IntroCommand::Accept { fingerprint } => {
            let f = Fpr::parse(&fingerprint)?;
            let intro = q.get(&f).with_context(|| format!("no introduction from {f}; see `stubmail intro list`"))?;
            // Blocked by key or by the outbox the stubs named: nothing is
            // fetched from there, not even a certificate.
            let blocks = stubmail::blocklist::Index::new(&stubmail::blocklist::load(&home.data_dir)?);
            if let Some(r) = blocks.check(&stubmail::blocklist::Who { sender: &f, outbox: Some(&intro.outbox), emails: &[] }) {
                anyhow::bail!(
                    "{f} is {r}: nothing is fetched from them; `stubmail{} unblock {}` first if you trust them",
                    super::init::home_flag(home),
                    stubmail::blocklist::Target::of(&r).user_form()
                );
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let http = stubmail::client::http_client_with_timeout(std::time::Duration::from_secs(config.poll.timeout_secs.max(1)))?;
            let cert = rt.block_on(http2mbox::notify::introduced_cert(&http, &intro, stubmail::client::REQUEST_DEADLINE)).map_err(|e| {
                if e.to_string().contains("forged") { anyhow::anyhow!("{e:#} (try `stubmail intro reject {f}`)") } else { e }
            })?;
            home.keyring().import(vec![cert.clone()])?;
            q.remove(&f)?;
            println!("accepted {f} <{}>", pgp::emails_of(&cert).join(", "));
            let poller = http2mbox::poller_for(home, &config, true)?;
            match rt.block_on(poller.poll_senders(std::slice::from_ref(&f))) {
                Ok(r) => println!("fetched {} message(s) from them", r.delivered),
                Err(e) => println!("their mail will arrive with the next poll ({e:#})"),
            }
            Ok(())
        }
    }
}
