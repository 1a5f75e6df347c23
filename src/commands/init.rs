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

/// Create an identity and config. `hint`: say what to do next (the
/// `init` command); `up` and `demo` register the key themselves.
pub fn run(home: &Home, email: &str, outbox: &str, name: Option<&str>, notify: Option<&str>, hint: bool) -> anyhow::Result<()> {
    let key = home.secret_key();
    if key.exists() {
        anyhow::bail!("{} already exists: this home already has an identity", key.display());
    }
    let outbox = outbox_url(outbox)?;
    let id = Identity::generate_with(name, email, &outbox, notify)?;
    fsutil::ensure_private_dir(&home.data_dir)?;
    fsutil::ensure_private_dir(&home.config_dir)?;
    fsutil::write_atomic(&key, &id.to_armored_secret()?, 0o600).context("writing the secret key")?;
    let mut config = Config::new(email, &outbox);
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
    println!("created identity {} <{email}>", id.fpr());
    println!("outbox:      {outbox}");
    if let Some(n) = notify {
        println!("notify:      {n}");
    }
    println!("secret key:  {}", key.display());
    println!("config:      {}", home.config_file().display());
    if let Ok(c) = home.load_config() {
        println!("Mail-client settings (smtp2stub and http2mbox, once running):");
        print!("{}", super::identity::client_settings(&c, c.smtp.listen, c.poll.pop3.listen));
    }
    if hint {
        println!("next: register your key with your outbox: stubmail keys export > me.asc; post_manager account add --key me.asc");
    }
    Ok(())
}
