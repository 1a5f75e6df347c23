use std::io::Read;

use anyhow::Context;
use stubmail::{pgp, Home};

use crate::cli::KeysCommand;

pub fn run(home: &Home, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Export => {
            let id = home.load_identity()?;
            print!("{}", pgp::armored(&id.cert())?);
        }
        KeysCommand::Import { file, replace } => {
            let mut bytes = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes)?;
            } else {
                bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            }
            let certs = pgp::parse_certs(&bytes)?;
            import_each(home, certs, replace)?;
        }
        KeysCommand::Refresh { contact } => {
            let kr = home.keyring();
            let c = kr.find(&contact)?;
            let f = pgp::fpr_of(&c);
            let config = home.load_config()?;
            let url = config
                .poll
                .outboxes
                .get(f.as_str())
                .cloned()
                .or_else(|| pgp::outbox_of(&c))
                .with_context(|| format!("{f} has no outbox to ask: ask the contact for their key and `stubmail keys import` it"))?;
            let http = stubmail::client::http_client()?;
            let rt = tokio::runtime::Runtime::new()?;
            let bytes = rt
                .block_on(stubmail::client::OutboxClient::account_cert(&http, &url, &f, std::time::Duration::from_secs(30)))
                .with_context(|| format!("asking {url} for {f}'s key"))?;
            let cert = pgp::parse_certs(&bytes)?
                .into_iter()
                .find(|x| pgp::fpr_of(x) == f)
                .with_context(|| format!("{url} answered with another key than {f}"))?;
            let cert = pgp::reduced(&cert)?;
            let new: Vec<String> = pgp::all_emails_of(&cert).into_iter().filter(|e| !pgp::all_emails_of(&c).contains(e)).collect();
            if !new.is_empty() {
                println!("{f} now also names {}", new.join(", "));
            }
            import_each(home, vec![cert], false)?;
        }
        KeysCommand::List => {
            let kr = home.keyring();
            let all = kr.all()?;
            if all.is_empty() {
                println!("no contacts; `stubmail keys import FILE` adds one");
            }
            let blocks = stubmail::blocklist::Index::new(&stubmail::blocklist::load(&home.data_dir)?);
            for c in all {
                let why = super::block::reasons(&blocks, &c);
                if !why.is_empty() {
                    // Every entry that applies, each with the command that
                    // lifts it: all of them together unblock the contact.
                    let mut undo: Vec<String> = why.iter().map(|r| format!("`stubmail{} unblock {}`", super::init::home_flag(home), stubmail::blocklist::Target::of(r).user_form())).collect();
                    undo.dedup();
                    println!(
                        "{} {} BLOCKED: {}; {} undo{} it",
                        pgp::fpr_of(&c),
                        pgp::emails_of(&c).join(", "),
                        why.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                        undo.join(" and "),
                        if undo.len() == 1 { "es" } else { "" }
                    );
                    continue;
                }
                let state = match pgp::check_contact(&c) {
                    Ok(_) if kr.is_discovered(&pgp::fpr_of(&c)) => {
                        format!("{} (discovered via WKD, not yet vouched for)", describe(&c))
                    }
                    Ok(_) => describe(&c),
                    Err(e) => format!("UNUSABLE: {e}"),
                };
                println!("{} {} {}", pgp::fpr_of(&c), pgp::emails_of(&c).join(", "), state);
            }
        }
        KeysCommand::Remove { contact } => {
            let c = home.keyring().remove(&contact)?;
            println!("removed {} {}", pgp::fpr_of(&c), pgp::emails_of(&c).join(", "));
        }
    }
    Ok(())
}

/// Import each certificate on its own, as `gpg --import` does: the usable
/// ones go in, each refused one is named with its reason, and a summary
/// ends the report. An error (non-zero exit) only if nothing was imported.
pub(crate) fn import_each(home: &Home, certs: Vec<stubmail::openpgp::Cert>, replace: bool) -> anyhow::Result<()> {
    let me = home.load_identity().ok().map(|m| m.fpr());
    let own = home.load_config().map(|c| c.own_addresses()).unwrap_or_default();
    let kr = home.keyring();
    let bar = stubmail::progress::items(certs.len() as u64, "importing");
    let total = certs.len();
    let (mut imported, mut skipped) = (0usize, 0usize);
    for c in certs {
        if let Some(b) = &bar {
            b.inc(1);
        }
        let f = pgp::fpr_of(&c);
        let who = pgp::all_emails_of(&c).join(", ");
        if me.as_ref() == Some(&f) {
            skipped += 1;
            eprintln!("skipped  {f} {who}: that is your own key (mail to your own addresses needs no import)");
            continue;
        }
        // A contact is someone else: a key naming one of your own addresses
        // would take your mail to yourself, and speak as you.
        if let Some(a) = pgp::all_emails_of(&c).into_iter().find(|e| own.contains(e)) {
            skipped += 1;
            eprintln!("skipped  {f} {who}: it claims your own address {a}");
            continue;
        }
        if c.is_tsk() {
            // A contact's secret has no business in an address book; take
            // the public part only, and say so.
            eprintln!("warning: {f} came with secret key material; only its public part is imported");
        }
        let one = vec![c.strip_secret_key_material()];
        match if replace { kr.import_replacing(one) } else { kr.import(one) } {
            Ok(done) => {
                for c in done {
                    kr.vouch(&pgp::fpr_of(&c))?;
                    imported += 1;
                    println!("imported {} {} {}", pgp::fpr_of(&c), pgp::emails_of(&c).join(", "), describe(&c));
                }
            }
            Err(e) => {
                skipped += 1;
                eprintln!("skipped  {f} {who}: {e}");
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!("{total} certificate(s): {imported} imported, {skipped} skipped");
    if imported == 0 {
        anyhow::bail!("nothing was imported (the reasons are above)");
    }
    Ok(())
}

fn describe(c: &stubmail::openpgp::Cert) -> String {
    if let Err(e) = pgp::check_contact(c) {
        return format!("NOT USABLE ({e}): neither polled nor sent to");
    }
    match pgp::outbox_of(c) {
        Some(o) => format!("stubmail outbox {o}"),
        None => "no outbox (ordinary OpenPGP user)".into(),
    }
}
