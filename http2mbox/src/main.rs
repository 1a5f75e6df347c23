//! `http2mbox`: thin binary. `--once` for cron; otherwise poll every
//! interval (with jitter) and serve POP3, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http2mbox::deliver::Target;
use http2mbox::poller::Poller;
use http2mbox::pop3;
use stubmail::config::Delivery;
use stubmail::maildir::{Journal, Maildir};
use stubmail::{client, Home};

#[derive(Parser)]
#[command(version, about = "Stubmail's poller: fetches mail from your contacts' outboxes into your mailbox, and serves it over POP3",
    after_help = "Examples:\n  http2mbox --home ~/.stubmail --once        # one poll, for cron\n  http2mbox --home ~/.stubmail --interval 60  # poll every minute, serve POP3")]
struct Cli {
    /// The user's Stubmail directory (default: XDG config and data dirs).
    #[arg(long, env = stubmail::config::HOME_ENV)]
    home: Option<PathBuf>,
    /// Poll once and exit (exit status 0 even when there is no mail).
    #[arg(long)]
    once: bool,
    /// Seconds between polls (overrides the config).
    #[arg(long)]
    interval: Option<u64>,
    /// POP3 listen address (overrides the config).
    #[arg(long)]
    pop3_listen: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    stubmail::logging::init("info");
    let cli = Cli::parse();
    let home = Home::resolve(cli.home.as_deref())?;
    let config = home.load_config()?;
    let me = Arc::new(home.load_identity()?);
    let maildir_path = home.path(&config.poll.maildir);
    let target = match config.poll.deliver {
        Delivery::Maildir => Target::Maildir(
            Maildir::open(&maildir_path).with_context(|| format!("opening Maildir {}", maildir_path.display()))?,
        ),
        Delivery::Mbox => Target::Mbox(
            config.poll.mbox.as_ref().map(|p| home.path(p)).context("deliver = \"mbox\" needs poll.mbox = PATH")?,
        ),
        Delivery::Mda => Target::Mda(config.poll.mda.clone().context("deliver = \"mda\" needs poll.mda = COMMAND")?),
    };
    let state = home.state_dir();
    stubmail::fsutil::ensure_private_dir(&state)?;
    let poller = Arc::new(Poller {
        me,
        keyring: home.keyring(),
        http: client::http_client_with_timeout(Duration::from_secs(config.poll.timeout_secs.max(1)))?,
        target: target.clone(),
        work: state.join("work"),
        journal: Journal::open(&state.join("delivered"))?,
        staging: state.join("fetch"),
        max_size: config.poll.max_message_size,
        hostname: "localhost".into(),
        device: http2mbox::poller::device_id(&state)?,
        overrides: config
            .poll
            .outboxes
            .iter()
            .map(|(f, u)| Ok((stubmail::protocol::Fpr::parse(f)?, u.clone())))
            .collect::<anyhow::Result<_>>()
            .context("poll.outboxes")?,
        failing: Default::default(),
        use_backoff: !cli.once,
        lock_path: state.join("poll.lock"),
    });
    let interval = cli.interval.unwrap_or(config.poll.interval_secs).max(1);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        if cli.once {
            let r = poller.poll_once().await?;
            println!(
                "http2mbox: polled {} outbox(es), delivered {}, rejected {}, unreachable {}",
                r.outboxes, r.delivered, r.rejected, r.failed_outboxes
            );
            return anyhow::Ok(());
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            stubmail::signals::shutdown_signal().await;
            s.cancel();
        });
        let pop3_task = match start_pop3(&home, &config, cli.pop3_listen, &target, poller.clone(), shutdown.clone()).await? {
            Some(t) => Some(t),
            None => {
                tracing::info!("POP3 is off: set poll.pop3.password to serve the mailbox");
                None
            }
        };
        println!("http2mbox polling every {interval} s");
        loop {
            match poller.poll_once().await {
                Ok(r) if r.delivered > 0 => tracing::info!(delivered = r.delivered, "poll"),
                Ok(_) => {}
                Err(e) => tracing::error!("poll failed: {e:#}"),
            }
            // Jitter (±10%) so many pollers don't hit one outbox in step.
            let jitter = rand::random::<f64>() * 0.2 - 0.1;
            let wait = Duration::from_secs_f64(interval as f64 * (1.0 + jitter));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(t) = pop3_task {
            let _ = t.await;
        }
        Ok(())
    })
}

/// Start the POP3 server if a password is configured.
async fn start_pop3(
    home: &Home,
    config: &stubmail::Config,
    listen: Option<SocketAddr>,
    target: &Target,
    poller: Arc<Poller>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let p = &config.poll.pop3;
    let Some(password) = p.password.clone() else { return Ok(None) };
    let store = match target {
        Target::Maildir(md) => pop3::Store::Maildir(md.root().to_path_buf()),
        Target::Mbox(path) => pop3::Store::Mbox(path.clone()),
        Target::Mda(_) => anyhow::bail!("POP3 serves a Maildir or an mbox; with deliver = \"mda\" there is no mailbox to serve"),
    };
    let tls = match (&p.tls_cert, &p.tls_key) {
        (Some(c), Some(k)) => Some(stubmail::tls::acceptor(&home.path(c), &home.path(k))?),
        (None, None) => None,
        _ => anyhow::bail!("set both poll.pop3.tls_cert and poll.pop3.tls_key, or neither"),
    };
    let listen = listen.unwrap_or(p.listen);
    let require_tls = !listen.ip().is_loopback();
    if require_tls && tls.is_none() {
        anyhow::bail!("POP3 on {listen} (not loopback) needs poll.pop3.tls_cert and tls_key for STLS");
    }
    let on_login: pop3::LoginHook = Arc::new(move || {
            let poller = poller.clone();
            Box::pin(async move {
                // A quick poll so the client sees fresh mail; never a long wait.
                match tokio::time::timeout(Duration::from_secs(10), poller.poll_once()).await {
                    Ok(Err(e)) => tracing::warn!("poll at login failed: {e:#}"),
                    Err(_) => tracing::warn!("poll at login took too long; serving what is here"),
                    Ok(Ok(_)) => {}
                }
            })
        });
    let ctx = Arc::new(pop3::Ctx {
        store,
        username: p.username.clone().unwrap_or_else(|| config.identity.email.clone()),
        password,
        tls,
        require_tls,
        on_login: Some(on_login),
    });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding POP3 on {listen}"))?;
    println!("http2mbox POP3 listening on {}", listener.local_addr()?);
    Ok(Some(tokio::spawn(pop3::run(listener, ctx, shutdown))))
}
