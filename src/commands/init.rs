use anyhow::Context;
use stubmail::{fsutil, Config, Home, Identity};

/// An outbox base URL as it is bound into a key: http(s), ending in `/`.
/// It is signed into every request (PROTOCOL §3): no user part, query or
/// fragment, nothing to read two ways.
pub fn outbox_url(outbox: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(outbox).with_context(|| format!("{outbox:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("the outbox must be an http:// or https:// URL");
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some()
        || outbox.trim() != outbox || outbox.contains('\\')
    {
        anyhow::bail!("{outbox:?} must be a plain base URL like https://mail.example.org/stubmail/ (no user, query or fragment)");
    }
    let mut outbox = outbox.to_string();
    if !outbox.ends_with('/') {
        outbox.push('/');
    }
    Ok(outbox)
}

/// The `--home` a printed command needs to reach this home (none for the
/// default one), so hints run as printed.
pub fn home_flag(home: &Home) -> String {
    match Home::resolve(None) {
        Ok(d) if d.config_dir == home.config_dir && d.data_dir == home.data_dir => String::new(),
        _ => format!(" --home {}", home.data_dir.display()),
    }
}

/// How to register the key with an outbox run by someone else (or by the
/// user with `post_manager`; `/var/lib/stubmail-outbox` is the data
/// directory of contrib/systemd/post_manager.service).
pub fn register_hint(home: &Home) -> String {
    format!(
        "  stubmail{} keys export > me.asc\n  # then, on the outbox's machine (its data directory; this is contrib/systemd's):\n  post_manager account add --data /var/lib/stubmail-outbox --key me.asc",
        home_flag(home)
    )
}

/// Create an identity and config. `hint`: say what to do next (the
/// `init` command); `up` and `demo` register the key themselves.
pub fn run(home: &Home, email: &str, outbox: &str, name: Option<&str>, notify: Option<&str>, hint: bool) -> anyhow::Result<()> {
    refuse_existing(home)?;
    let outbox = outbox_url(outbox)?;
    let id = Identity::generate_with(name, email, &outbox, notify)?;
    write_identity(home, &id, email, &outbox, notify, hint, "created")
}

/// `stubmail init --key FILE`: adopt an existing OpenPGP secret key (as
/// `gpg --export-secret-keys` writes it), binding the outbox (and notify)
/// notations to its User IDs. A passphrase-protected key is unlocked once
/// (from the terminal, or `STUBMAIL_KEY_PASSPHRASE`) and kept unprotected
/// in the 0600 key file, as the programs must use it unattended.
pub fn adopt(home: &Home, file: &std::path::Path, email: Option<&str>, outbox: &str, notify: Option<&str>) -> anyhow::Result<()> {
    use stubmail::pgp;
    refuse_existing(home)?;
    let outbox = outbox_url(outbox)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let certs = pgp::parse_certs(&bytes)?;
    let mut secret: Vec<_> = certs.into_iter().filter(|c| c.is_tsk()).collect();
    let cert = match secret.len() {
        1 => secret.remove(0),
        0 => anyhow::bail!(
            "{} holds no secret key: export one with `gpg --export-secret-keys --armor YOUR@ADDRESS > key.asc`",
            file.display()
        ),
        n => anyhow::bail!("{} holds {n} secret keys: export just the one to use (`gpg --export-secret-keys --armor YOUR@ADDRESS`)", file.display()),
    };
    let cert = if pgp::has_locked_secrets(&cert) {
        let pass = passphrase(&pgp::fpr_of(&cert))?;
        pgp::unlock_secrets(cert, &pass)?
    } else {
        cert
    };
    let emails = pgp::emails_of(&cert);
    let email = match email {
        Some(e) if emails.contains(&e.to_ascii_lowercase()) => e.to_string(),
        Some(e) => anyhow::bail!(
            "{e} is not an address of this key ({}): add it first (`gpg --quick-add-uid KEY \"Name <{e}>\"`), or leave out --email",
            emails.join(", ")
        ),
        None => match emails.as_slice() {
            [one] => one.clone(),
            [] => anyhow::bail!("the key has no User ID with an email address"),
            many => anyhow::bail!("the key has several addresses ({}): say which is yours with --email; the others become aliases you may send as", many.join(", ")),
        },
    };
    let mut id = Identity::from_cert(cert)?;
    id.rebind(&outbox, notify)?;
    write_identity(home, &id, &email, &outbox, notify, true, "adopted")
}

/// Ask for a key's passphrase once: from `STUBMAIL_KEY_PASSPHRASE`, or on
/// the terminal without echo.
fn passphrase(fpr: &stubmail::protocol::Fpr) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if let Ok(p) = std::env::var("STUBMAIL_KEY_PASSPHRASE") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "the secret key {fpr} is protected by a passphrase: run this on a terminal to be asked for it once, \
             set STUBMAIL_KEY_PASSPHRASE, or export it without one (`gpg --edit-key {fpr} passwd`, empty passphrase)"
        );
    }
    eprint!("Passphrase of {fpr} (asked once; Stubmail keeps the key unprotected in its 0600 key file): ");
    let p = read_hidden_line()?;
    eprintln!();
    Ok(p)
}

/// A line from the terminal with echo off.
fn read_hidden_line() -> anyhow::Result<String> {
    use std::io::BufRead;
    // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        let had = libc::tcgetattr(0, &mut t) == 0;
        let old = t;
        if had {
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
        let mut line = String::new();
        let r = std::io::stdin().lock().read_line(&mut line);
        if had {
            libc::tcsetattr(0, libc::TCSANOW, &old);
        }
        r?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

pub(crate) fn refuse_existing(home: &Home) -> anyhow::Result<()> {
    let key = home.secret_key();
    if key.exists() {
        anyhow::bail!("{} already exists: this home already has an identity", key.display());
    }
    Ok(())
}

pub(crate) fn write_identity(home: &Home, id: &Identity, email: &str, outbox: &str, notify: Option<&str>, hint: bool, verb: &str) -> anyhow::Result<()> {
    let key = home.secret_key();
    fsutil::ensure_private_dir(&home.data_dir)?;
    fsutil::ensure_private_dir(&home.config_dir)?;
    fsutil::write_atomic(&key, &id.to_armored_secret()?, 0o600).context("writing the secret key")?;
    let mut config = Config::new(email, outbox);
    // Every other address of the key is one the user may send as.
    config.identity.aliases =
        stubmail::pgp::emails_of(&id.cert()).into_iter().filter(|e| !e.eq_ignore_ascii_case(email)).collect();
    // AUTH is required on every SMTP listener: the mail client's password.
    config.ensure_smtp_password();
    // Listen where the key says, when that is an address of this machine's
    // kind (an IP); behind a NAT, set notify.listen by hand.
    config.notify.listen = notify.and_then(stubmail::protocol::udp::parse_notify_endpoint).and_then(|a| a.parse().ok());
    let text = format!(
        "# Stubmail configuration. See README.md.\n{}",
        toml::to_string_pretty(&config).expect("serialisable")
    );
    if !home.config_file().exists() {
        fsutil::write_atomic(&home.config_file(), text.as_bytes(), 0o600)?;
    }
    println!("{verb} identity {} <{email}>", id.fpr());
    println!("outbox:      {outbox}");
    if let Some(n) = notify {
        println!("notify:      {n}");
    }
    println!("secret key:  {}", key.display());
    println!("config:      {}", home.config_file().display());
    // (`up` prints the settings itself, with the ports it binds.)
    if let Ok(c) = home.load_config()
        && hint
    {
        println!("Mail-client settings (smtp2stub and http2mbox, once running):");
        print!("{}", super::identity::client_settings(&c, c.smtp.listen, c.poll.pop3.listen, Some(c.poll.imap.listen)));
    }
    if hint {
        println!("next: register your key with your outbox:");
        println!("{}", register_hint(home));
    }
    Ok(())
}
