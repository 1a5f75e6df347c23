//! `stubmail identity`: who you are, and what your mail client needs.

use std::net::SocketAddr;

use stubmail::{Config, Home};

/// The settings a mail client needs, one line per server. `smtp`, `pop3`
/// and `imap` are where the listeners are (the config's, or the ones `up`
/// bound).
pub fn client_settings(c: &Config, smtp: SocketAddr, pop3: SocketAddr, imap: Option<SocketAddr>) -> String {
    let enc = |a: &SocketAddr, tls: bool| if a.ip().is_loopback() && !tls { "none (loopback)" } else { "STARTTLS" };
    let mut out = match &c.smtp.password {
        Some(p) => format!(
            "  Outgoing (SMTP): server {}  port {}  encryption {}  authentication: normal password  user {}  password {}\n",
            smtp.ip(),
            smtp.port(),
            enc(&smtp, c.smtp.tls_cert.is_some()),
            c.smtp_username(),
            p.expose()
        ),
        None => "  Outgoing (SMTP): no password yet: run `stubmail identity show` to make one\n".to_string(),
    };
    out += &match &c.poll.pop3.password {
        Some(p) => format!(
            "  Incoming (POP3): server {}  port {}  encryption {}  authentication: normal password  user {}  password {}\n",
            pop3.ip(),
            pop3.port(),
            enc(&pop3, c.poll.pop3.tls_cert.is_some()),
            c.pop3_username(),
            p.expose()
        ),
        None => "  Incoming: POP3 and IMAP are off (`stubmail up` turns it on, or set poll.pop3.password); \
                 mail clients can read the Maildir directly\n"
            .to_string(),
    };
    if let (Some(p), Some(imap), true) = (&c.poll.pop3.password, imap, c.poll.imap.enabled && c.poll.deliver == stubmail::config::Delivery::Maildir) {
        out += &format!(
            "  Incoming (IMAP): server {}  port {}  encryption {}  authentication: normal password  user {}  password {}\n",
            imap.ip(),
            imap.port(),
            enc(&imap, c.poll.imap.tls_cert.is_some()),
            c.pop3_username(),
            p.expose()
        );
    }
    out
}

pub fn show(home: &Home) -> anyhow::Result<()> {
    let id = home.load_identity()?;
    let cert = id.cert();
    println!(
        "{} {} outbox {}{}",
        id.fpr(),
        stubmail::pgp::emails_of(&cert).join(","),
        stubmail::pgp::outbox_of(&cert).unwrap_or_else(|| "(none)".into()),
        stubmail::pgp::notify_of(&cert).map(|n| format!(" notify udp://{n}")).unwrap_or_default()
    );
    let c = home.load_config_with_passwords(false)?;
    println!("Mail-client settings (from {}):", home.config_file().display());
    print!("{}", client_settings(&c, c.smtp.listen, c.poll.pop3.listen, Some(c.poll.imap.listen)));
    Ok(())
}

/// `stubmail identity add-address ADDR`.
pub fn add_address(home: &Home, address: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut id = home.load_identity()?;
    id.add_address(address)?;
    stubmail::fsutil::write_atomic(&home.secret_key(), &id.to_armored_secret()?, 0o600).context("writing the secret key")?;
    let mut c = home.load_config()?;
    if !c.identity.aliases.iter().any(|a| a.eq_ignore_ascii_case(address)) {
        c.identity.aliases.push(address.to_string());
        home.save_config(&c)?;
    }
    // The personal outbox of `stubmail up` lives in this home: update its
    // account at once. Another outbox needs its operator.
    let own = home.data_dir.join("outbox");
    if own.join("accounts").is_dir() {
        post_manager::store::Store::open(&own)?.add_account(&id.cert())?;
        println!("updated your account in {}", own.display());
    }
    println!("added {address} to your key {} and to identity.aliases", id.fpr());
    println!("your contacts' http2mbox fetch the updated key from your outbox when your mail from {address} arrives;");
    println!("if your outbox is not run by `stubmail up`, register the updated key with it:");
    println!("{}", super::init::register_hint(home));
    Ok(())
}

/// `stubmail identity set-outbox URL`: move to another outbox.
pub fn set_outbox(home: &Home, url: &str, here: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use stubmail::client::{ClientError, OutboxClient};
    use stubmail::pgp;
    let url = super::init::outbox_url(url)?;
    let mut id = home.load_identity()?;
    let old = pgp::outbox_of(&id.cert()).unwrap_or_default();
    if stubmail::protocol::outbox_id(&old) == stubmail::protocol::outbox_id(&url) {
        anyhow::bail!("your key already binds {old}");
    }
    let notify = pgp::notify_of(&id.cert()).map(|n| format!("udp://{n}"));
    id.rebind(&url, notify.as_deref())?;
    stubmail::fsutil::write_atomic(&home.secret_key(), &id.to_armored_secret()?, 0o600).context("writing the secret key")?;
    let mut c = home.load_config()?;
    c.identity.outbox = url.clone();
    home.save_config(&c)?;
    println!("your key {} now binds the outbox {url} (was {old})", id.fpr());
    // The outbox `stubmail up` runs in this home: with --here the new URL is
    // one of its names; otherwise it keeps serving the updated key to the
    // contacts who still poll it.
    let own = home.data_dir.join("outbox");
    if own.join("accounts").is_dir() {
        let store = post_manager::store::Store::open(&own)?;
        if here {
            store.add_account_new_url(&id.cert())?;
            println!("your node's outbox answers as {url} too");
        } else {
            store.update_account_cert(&id.cert())?;
            println!("your node's outbox keeps serving your updated key to contacts who still poll {old}");
        }
    } else if here {
        anyhow::bail!("--here: this home runs no outbox (`stubmail up` runs one); register with {url}'s operator instead");
    }
    let me = std::sync::Arc::new(id);
    let rt = tokio::runtime::Runtime::new()?;
    // The old outbox (another server): it keeps serving the updated key to
    // contacts who still poll it, if it takes it.
    if !own.join("accounts").is_dir() && !old.is_empty() {
        let old_outbox = OutboxClient::new(stubmail::client::http_client()?, &old, me.clone())?;
        match rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), old_outbox.update_account_cert(&me.cert())).await }) {
            Ok(Ok(())) => println!("your old outbox {old} now serves your updated key to contacts who still poll it"),
            Ok(Err(e)) => println!("your old outbox {old} did not take your updated key ({e}): contacts follow when they import it"),
            Err(_) => println!("your old outbox {old} did not answer: contacts follow when they import your updated key"),
        }
    }
    // The new outbox: does it know this key?
    let outbox = OutboxClient::new(stubmail::client::http_client()?, &url, me)?;
    match rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), outbox.account()).await }) {
        Ok(Ok(_)) => println!("{url} knows your key: new mail goes there once your node restarts (Ctrl-C, `stubmail up`)"),
        Ok(Err(ClientError::Server { status, .. })) if status == 401 || status == 403 => {
            println!("{url} does not know your key yet; register it with its operator:");
            println!("{}", super::init::register_hint(home));
        }
        Ok(Err(e)) => println!("{url} cannot be asked now ({e}); check it with `stubmail doctor`"),
        Err(_) => println!("{url} did not answer in 10 s; check it with `stubmail doctor`"),
    }
    println!("contacts' pollers fetch your updated key within a day (poll.cert_refresh_secs), or at once when they import it");
    Ok(())
}
