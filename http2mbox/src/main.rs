//! `http2mbox`: thin binary. `--once` for cron; otherwise poll every
//! interval (with jitter) until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http2mbox::deliver::Target;
use stubmail::config::Delivery;
use stubmail::maildir::{Journal, Maildir};
use http2mbox::poller::Poller;
use stubmail::{client, Home};

#[derive(Parser)]
#[command(version, about = "Stubmail's poller: fetches mail from your contacts' outboxes into your Maildir",
    after_help = "Examples:\n  http2mbox --home ~/.stubmail --once        # one poll, for cron\n  http2mbox --home ~/.stubmail --interval 60  # poll every minute")]
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
    let poller = Poller {
        me,
        keyring: home.keyring(),
        http: client::http_client_with_timeout(std::time::Duration::from_secs(config.poll.timeout_secs.max(1)))?,
        target,
        work: home.state_dir().join("work"),
        journal: Journal::open(&home.state_dir().join("delivered"))?,
        staging: home.state_dir().join("fetch"),
        max_size: config.poll.max_message_size,
        hostname: "localhost".into(),
        device: http2mbox::poller::device_id(&home.state_dir())?,
        overrides: config
            .poll
            .outboxes
            .iter()
            .map(|(f, u)| Ok((stubmail::protocol::Fpr::parse(f)?, u.clone())))
            .collect::<anyhow::Result<_>>()
            .context("poll.outboxes")?,
        failing: Default::default(),
        use_backoff: !cli.once,
    };
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
        println!("http2mbox polling every {interval} s");
        let stop = stubmail::signals::shutdown_signal();
        tokio::pin!(stop);
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
                _ = &mut stop => return Ok(()),
            }
        }
    })
}
