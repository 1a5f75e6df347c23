//! `stubmail device add`: another device for the same identity. A device is
//! a home of its own — the same key, config and keyring, its own state
//! (device id, journal), spool and mailbox — so the outbox keeps a
//! "retrieved" mark per device and every device receives every message.

use std::path::Path;

use anyhow::Context;
use stubmail::{fsutil, pgp, Home};

/// Make a new home at `dir` for another device of this identity; with
/// `notify`, that device gets a notify endpoint of its own, bound into the
/// key next to the others.
pub fn add(home: &Home, dir: &Path, notify: Option<&str>) -> anyhow::Result<()> {
    let new = Home::single(dir);
    if new.secret_key().exists() || new.config_file().exists() {
        anyhow::bail!("{} already holds a Stubmail home: give a new directory", dir.display());
    }
    let mut id = home.load_identity()?;
    // The new device's config: this one's, with an endpoint of its own (or
    // none), and no outbox of its own to serve.
    let mut config = home.load_config()?;
    config.notify.listen = None;
    config.outbox.listen = None;
    if let Some(n) = notify {
        let Some(addr) = stubmail::protocol::udp::parse_notify_endpoint(n) else {
            anyhow::bail!("--notify {n:?} is not a notify endpoint like udp://192.0.2.7:2526");
        };
        config.notify.listen = addr.parse().ok();
        let mut all: Vec<String> = pgp::notify_all(&id.cert()).iter().map(|e| format!("udp://{e}")).collect();
        if !all.iter().any(|e| e == n) {
            all.push(n.to_string());
        }
        let outbox = pgp::outbox_of(&id.cert()).context("your key binds no outbox")?;
        id.rebind_all(&outbox, &all)?;
        // This home keeps its own endpoint; the key now names both.
        fsutil::write_atomic(&home.secret_key(), &id.to_armored_secret()?, 0o600).context("writing the secret key")?;
        let own = home.data_dir.join("outbox");
        if own.join("accounts").is_dir() {
            post_manager::store::Store::open(&own)?.add_account(&id.cert())?;
        }
    }
    fsutil::ensure_private_dir(&new.data_dir)?;
    fsutil::write_atomic(&new.secret_key(), &id.to_armored_secret()?, 0o600).context("writing the secret key")?;
    new.save_config(&config)?;
    // The address book, as it is now.
    let kr = home.keyring();
    let certs = kr.all()?;
    if !certs.is_empty() {
        new.keyring().import(certs)?;
    }
    println!("a new device of {} at {}", id.fpr(), dir.display());
    println!("copy that directory to the device (it keeps a device id of its own), and run there:");
    println!("  smtp2stub --home {0} &  http2mbox --home {0}", dir.display());
    if notify.is_some() {
        println!("your key now binds a notify endpoint for each device; restart this node (Ctrl-C, `stubmail up`) so its polls");
        println!("present the updated key: contacts' outboxes learn the endpoints from them");
    }
    Ok(())
}
