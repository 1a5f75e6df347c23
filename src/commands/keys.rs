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
            if let Ok(me) = home.load_identity()
                && certs.iter().any(|c| pgp::fpr_of(c) == me.fpr()) {
                    anyhow::bail!("that is your own key; import your contacts' keys");
                }
            let kr = home.keyring();
            let bar = stubmail::progress::items(certs.len() as u64, "importing");
            let imported = if replace { kr.import_replacing(certs)? } else { kr.import(certs)? };
            for c in imported {
                if let Some(b) = &bar {
                    b.inc(1);
                }
                kr.vouch(&pgp::fpr_of(&c))?;
                println!("imported {} {} {}", pgp::fpr_of(&c), pgp::emails_of(&c).join(", "), describe(&c));
            }
        }
        KeysCommand::List => {
            let kr = home.keyring();
            let all = kr.all()?;
            if all.is_empty() {
                println!("no contacts; `stubmail keys import FILE` adds one");
            }
            for c in all {
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

fn describe(c: &stubmail::openpgp::Cert) -> String {
    if let Err(e) = pgp::check_contact(c) {
        return format!("NOT USABLE ({e}): neither polled nor sent to");
    }
    match pgp::outbox_of(c) {
        Some(o) => format!("stubmail outbox {o}"),
        None => "no outbox (ordinary OpenPGP user)".into(),
    }
}
