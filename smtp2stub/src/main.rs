//! `smtp2stub`: thin binary. Loads the user's home, binds, runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use smtp2stub::session::{Credentials, Ctx, SessionConfig};
use smtp2stub::spool::Spool;
use smtp2stub::worker::Worker;
use smtp2stub::{Discovery, Router};
use stubmail::config::AuthPolicy;
use stubmail::{client, Home};

#[derive(Parser)]
#[command(version, about = "Stubmail's local SMTP server: point your mail client's outgoing server here",
    after_help = "Example:\n  smtp2stub --home ~/.stubmail --listen 127.0.0.1:2525")]
struct Cli {
    /// The user's Stubmail directory (default: XDG config and data dirs).
    #[arg(long, env = stubmail::config::HOME_ENV)]
    home: Option<PathBuf>,
    /// Listen address (overrides the config; loopback by default).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    stubmail::logging::init("info");
    let cli = Cli::parse();
    let home = Home::resolve(cli.home.as_deref())?;
    let config = home.load_config()?;
    let me = Arc::new(home.load_identity()?);
    let listen = cli.listen.unwrap_or(config.smtp.listen);
    let auth_required = config.smtp.auth == AuthPolicy::Required || !listen.ip().is_loopback();
    let tls = match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(c), Some(k)) => Some(stubmail::tls::acceptor(&home.path(c), &home.path(k))?),
        (None, None) => None,
        _ => anyhow::bail!("set both smtp.tls_cert and smtp.tls_key, or neither"),
    };
    let credentials = config.smtp.password.clone().map(|password| Credentials {
        username: config.smtp.username.clone().unwrap_or_else(|| config.identity.email.clone()),
        password,
    });
    if auth_required && (tls.is_none() || credentials.is_none()) {
        anyhow::bail!(
            "{listen} needs AUTH (it is not loopback, or smtp.auth = \"required\"): \
             set smtp.password, smtp.tls_cert and smtp.tls_key in {}",
            home.config_file().display()
        );
    }
    let spool = Spool::open(&home.spool_dir()).context("opening the spool")?;
    let keyring = home.keyring();
    let outbox = client::OutboxClient::new(client::http_client()?, &config.identity.outbox, me.clone())?;
    let relay = config.relay.clone();
    let http = client::http_client()?;
    let discovery = config.discovery.wkd.then(|| Discovery {
        http: http.clone(),
        timeout: std::time::Duration::from_secs(config.discovery.timeout_secs.max(1)),
        servers: config.discovery.wkd_servers.clone(),
    });
    let kick = Arc::new(tokio::sync::Notify::new());
    let ctx = Arc::new(Ctx {
        config: SessionConfig {
            max_size: config.smtp.max_message_size,
            tls,
            credentials,
            auth_required,
            ..SessionConfig::default()
        },
        policy: Router {
            own: config.own_addresses(),
            keyring: keyring.clone(),
            discovery,
            relay: config.relay.is_some(),
            outbox: Some(outbox.clone()),
        },
        spool: spool.clone(),
        accepted: kick.clone(),
    });
    let notices = stubmail::maildir::Maildir::open(&home.path(&config.poll.maildir)).ok();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        println!("smtp2stub listening on {}", listener.local_addr()?);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let worker = Worker { spool, keyring, me, outbox, relay, notices };
        let w = tokio::spawn(worker.run(kick, shutdown.clone()));
        let s = shutdown.clone();
        tokio::spawn(async move {
            stubmail::signals::shutdown_signal().await;
            s.cancel();
        });
        smtp2stub::run(listener, ctx, shutdown).await?;
        let _ = w.await;
        anyhow::Ok(())
    })
}
