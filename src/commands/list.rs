//! `stubmail list`: make and run mailing lists (issue #18). The robot is
//! in the `lists` crate; this is the command line's side of it.

use std::io::Read;

use anyhow::Context;
use stubmail::config::{ListConfig, NonMembers, Subscription};
use stubmail::list::Addresses;
use stubmail::{pgp, Home, Identity};

use crate::cli::ListCommand;

pub fn run(home: &Home, cmd: ListCommand) -> anyhow::Result<()> {
    match cmd {
        ListCommand::Create { address, outbox, description, owner, notify, non_members, subscription, public } => {
            super::init::refuse_existing(home)?;
            let addrs = Addresses::of(&address).with_context(|| format!("{address:?} is not a plain address like team@example.org"))?;
            let outbox = super::init::outbox_url(&outbox)?;
            let mut id = Identity::generate_list(description.as_deref(), &addrs.post, &outbox, notify.as_deref())?;
            id.add_address(&addrs.subscribe)?;
            id.add_address(&addrs.unsubscribe)?;
            super::init::write_identity(home, &id, &addrs.post, &outbox, notify.as_deref(), false, "created list")?;
            let mut config = home.load_config()?;
            let mut list = ListConfig::new(&addrs.post);
            list.description = description;
            list.non_members = match non_members.as_str() {
                "hold" => NonMembers::Hold,
                "accept" => NonMembers::Accept,
                _ => NonMembers::Reject,
            };
            list.subscription = match subscription.as_str() {
                "approve" => Subscription::Approve,
                "closed" => Subscription::Closed,
                _ => Subscription::Confirm,
            };
            list.public = public;
            // Strangers' stubs (requests to join, non-members' posts) are
            // held for the robot, which fetches them itself.
            config.notify.first_contact = true;
            // Everyone who writes to a list is a new stranger to it, and the
            // users of one provider write from one address: more of them
            // than to a person (each costs the robot one bounded attempt).
            config.notify.new_strangers_per_source_hour = 100;
            if let Some(f) = owner {
                let certs = read_certs(&f)?;
                list.owner = certs.first().and_then(|c| pgp::emails_of(c).into_iter().next());
                super::keys::import_each(home, certs, false)?;
            }
            config.list = Some(list);
            home.save_config(&config)?;
            println!("addresses:   {} (posts), {} and {}", addrs.post, addrs.subscribe, addrs.unsubscribe);
            if public {
                println!("archive:     {outbox}v1/archive/{}/feed (Atom, public)", id.fpr());
            }
            println!("next: register the list's key with its outbox:");
            println!("{}", super::init::register_hint(home));
            println!("then run its robot:\n  stubmail{} list run", super::init::home_flag(home));
            if notify.is_none() {
                println!("(no --notify: only members you add with `stubmail{} list add` can join)", super::init::home_flag(home));
            }
            Ok(())
        }
        ListCommand::Held => {
            list_config(home)?;
            let dir = lists::list_dir(home).join("held");
            let mut names: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| is_held_id(n)).collect(),
                Err(_) => vec![],
            };
            names.sort();
            if names.is_empty() {
                println!("no posts held");
            }
            for n in names {
                let file = std::fs::read(dir.join(&n))?;
                let Some((author, _, at)) = stubmail::list::parse_intake(&file) else { continue };
                let raw = &file[at..];
                let header = &raw[..stubmail::mail::header_len(raw).unwrap_or(raw.len())];
                let (subject, _) = lists::notices::subject_and_id(header);
                let from = stubmail::mail::addresses(header, &["From"]).join(", ");
                println!("{n}  from {from} (key {author}): {:?}", subject.unwrap_or_default());
            }
            Ok(())
        }
        ListCommand::Approve { id } => {
            list_config(home)?;
            let dir = lists::list_dir(home);
            let held = held_path(home, &dir, &id)?;
            std::fs::rename(&held, dir.join("approved").join(&id)).with_context(|| format!("moving {}", held.display()))?;
            stubmail::fsutil::fsync_dir(&dir.join("approved"))?;
            stubmail::fsutil::fsync_dir(&dir.join("held"))?;
            println!("{id}: approved; the robot publishes it on its next round");
            Ok(())
        }
        ListCommand::Admit { fingerprint } => {
            list_config(home)?;
            let f = stubmail::protocol::Fpr::parse(&fingerprint)?;
            let strangers = stubmail::keyring::Keyring::new(lists::list_dir(home).join("strangers"));
            let cert = strangers.get(&f)?.with_context(|| {
                format!("{f} has not asked to join (or asked over a week ago): they write to the list's -subscribe address first")
            })?;
            home.keyring().import(vec![cert.clone()])?;
            let _ = strangers.remove(f.as_str());
            println!("admitted {f} <{}>: the robot polls them from its next round", pgp::emails_of(&cert).join(", "));
            Ok(())
        }
        ListCommand::Discard { id } => {
            list_config(home)?;
            let dir = lists::list_dir(home);
            let held = held_path(home, &dir, &id)?;
            std::fs::remove_file(&held)?;
            stubmail::fsutil::fsync_dir(&dir.join("held"))?;
            println!("{id}: discarded");
            Ok(())
        }
        ListCommand::Run => run_robot(home),
        ListCommand::Add { file } => {
            list_config(home)?;
            super::keys::import_each(home, read_certs(&file)?, false)
        }
        ListCommand::Remove { member } => {
            list_config(home)?;
            let c = home.keyring().remove(&member)?;
            println!("removed {} {}", pgp::fpr_of(&c), pgp::emails_of(&c).join(", "));
            Ok(())
        }
        ListCommand::Members => {
            list_config(home)?;
            let all = home.keyring().all()?;
            if all.is_empty() {
                println!("no members; `stubmail{} list add FILE` adds one", super::init::home_flag(home));
            }
            for c in all {
                println!("{} {}", pgp::fpr_of(&c), pgp::emails_of(&c).join(", "));
            }
            Ok(())
        }
    }
}

/// A held post's id as `stubmail list held` prints it: `l` and 24 hex digits.
fn is_held_id(id: &str) -> bool {
    id.len() == 25 && id.starts_with('l') && id[1..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn held_path(home: &Home, dir: &std::path::Path, id: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join("held").join(id);
    if !is_held_id(id) || !p.exists() {
        anyhow::bail!("no held post {id:?}; `stubmail{} list held` shows them", super::init::home_flag(home));
    }
    Ok(p)
}

fn list_config(home: &Home) -> anyhow::Result<ListConfig> {
    home.load_config()?.list.with_context(|| {
        format!("{} is not a list's home: make one with `stubmail --home DIR list create LIST@DOMAIN --outbox URL`", home.data_dir.display())
    })
}

fn read_certs(file: &std::path::Path) -> anyhow::Result<Vec<stubmail::openpgp::Cert>> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    }
    Ok(pgp::parse_certs(&bytes)?)
}

pub(crate) fn run_robot(home: &Home) -> anyhow::Result<()> {
    let list = list_config(home)?;
    let config = home.load_config()?;
    let state = home.state_dir();
    let _smtp = stubmail::node::hold(&state, "smtp2stub", "stubmail list run")?;
    let mut poll = stubmail::node::hold(&state, "http2mbox", "stubmail list run")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let notify = http2mbox::bind_notify(&config).await?;
        let at = match &notify {
            Some(s) => {
                let a = s.local_addr()?;
                poll.listening("notify", a)?;
                format!("udp://{a}")
            }
            None => "nothing (no notify.listen: members' posts arrive with each poll)".to_string(),
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        stubmail::signals::cancel_on_signal(&shutdown);
        println!("list robot for {} listening on {at}", list.address);
        use std::io::Write;
        std::io::stdout().flush()?;
        lists::run(home, &config, notify, shutdown).await?;
        println!("stubmail: stopped");
        Ok(())
    })
}
