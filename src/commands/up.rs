//! `stubmail up`: a whole personal node in one process — the user's own
//! outbox (post_manager), smtp2stub, and http2mbox with POP3 — on loopback.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use stubmail::{fsutil, Config, Home};
use tokio::net::TcpListener;

pub struct Args {
    pub email: Option<String>,
    pub name: Option<String>,
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    pub outbox_listen: SocketAddr,
    pub outbox_url: Option<String>,
}

fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut r = rand::rng();
    (0..16).map(|_| CHARS[r.random_range(0..CHARS.len())] as char).collect()
}

fn ask_email() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no identity yet: pass --email ADDRESS to create one");
    }
    print!("Your email address: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

pub fn run(home: &Home, a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let outbox_l = TcpListener::bind(a.outbox_listen).await.with_context(|| format!("binding the outbox on {}", a.outbox_listen))?;
        let outbox_addr = outbox_l.local_addr()?;
        if !home.secret_key().exists() {
            let email = match a.email.clone() {
                Some(e) => e,
                None => ask_email()?,
            };
            let url = a.outbox_url.clone().unwrap_or_else(|| format!("http://{outbox_addr}/"));
            super::init::run(home, &email, &url, a.name.as_deref())?;
        }
        let mut config = home.load_config()?;
        // Passwords for the mail client, made once and kept in config.toml (0600).
        let mut changed = false;
        if config.smtp.password.is_none() {
            config.smtp.password = Some(random_password());
            changed = true;
        }
        if config.poll.pop3.password.is_none() {
            config.poll.pop3.password = Some(random_password());
            changed = true;
        }
        if changed {
            save_config(home, &config)?;
        }
        // The user's own outbox, with the user as its account.
        let me = home.load_identity()?;
        let store = post_manager::store::Store::open(&home.data_dir.join("outbox")).context("opening the outbox")?;
        if store.account(&me.fpr()).is_none() {
            store.add_account(&me.cert())?;
        }
        let smtp_l = TcpListener::bind(a.smtp).await.with_context(|| format!("binding SMTP on {}", a.smtp))?;
        let pop3_l = TcpListener::bind(a.pop3).await.with_context(|| format!("binding POP3 on {}", a.pop3))?;
        let (smtp_addr, pop3_addr) = (smtp_l.local_addr()?, pop3_l.local_addr()?);
        let user = config.identity.email.clone();
        println!("Stubmail node for {user} is running. Mail-client settings:");
        println!("  Outgoing (SMTP): server {}  port {}  no encryption  user {user}  password {} (not needed on loopback)",
            smtp_addr.ip(), smtp_addr.port(), config.smtp.password.as_deref().unwrap_or(""));
        println!("  Incoming (POP3): server {}  port {}  no encryption  user {user}  password {}",
            pop3_addr.ip(), pop3_addr.port(), config.poll.pop3.password.as_deref().unwrap_or(""));
        println!("  Your outbox:     {} (served here on {outbox_addr})", config.identity.outbox);
        println!("  Your key:        stubmail keys export   (give it to your contacts)");
        println!("Press Ctrl-C to stop.");
        println!("stubmail up listening on smtp={smtp_addr} pop3={pop3_addr} outbox={outbox_addr}");
        std::io::stdout().flush()?;

        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            stubmail::signals::shutdown_signal().await;
            s.cancel();
        });
        let settings = post_manager::handler::Settings::default();
        let outbox = tokio::spawn(post_manager::serve(outbox_l, store, settings, Default::default(), shutdown.clone()));
        let home2 = home.clone();
        let config2 = config.clone();
        let sd = shutdown.clone();
        let smtp = tokio::spawn(async move { smtp2stub::serve_home(&home2, &config2, smtp_l, sd).await });
        let poller = Arc::new(http2mbox::poller_for(home, &config, false)?);
        let interval = config.poll.interval_secs.max(1);
        let poll = http2mbox::daemon(home, &config, poller, interval, Some(pop3_l), shutdown.clone());
        let result = poll.await;
        // Whichever part stops, stop them all, then wait for each to finish
        // its work in hand (a message in DATA is spooled or refused, never lost).
        shutdown.cancel();
        let (o, s) = (outbox.await, smtp.await);
        result?;
        o??;
        s??;
        println!("stubmail: stopped");
        Ok(())
    })
}

fn save_config(home: &Home, config: &Config) -> anyhow::Result<()> {
    let text = format!("# Stubmail configuration. See README.md.\n{}", toml::to_string_pretty(config)?);
    fsutil::write_atomic(&home.config_file(), text.as_bytes(), 0o600)?;
    Ok(())
}
