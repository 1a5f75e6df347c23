//! `stubmail identity`: who you are, and what your mail client needs.

use std::net::SocketAddr;

use stubmail::{Config, Home};

/// The settings a mail client needs, one line per server. `smtp` and
/// `pop3` are where the listeners are (the config's, or the ones `up`
/// bound).
pub fn client_settings(c: &Config, smtp: SocketAddr, pop3: SocketAddr) -> String {
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
        None => "  Incoming: POP3 is off (`stubmail up` turns it on, or set poll.pop3.password); \
                 mail clients can read the Maildir directly\n"
            .to_string(),
    };
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
    print!("{}", client_settings(&c, c.smtp.listen, c.poll.pop3.listen));
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
    println!("  stubmail keys export > me.asc; post_manager account add --data DIR --key me.asc");
    Ok(())
}
