//! `http2mbox`: thin binary. `--once` for cron; otherwise poll every
//! interval (with jitter) and serve POP3, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use stubmail::Home;

#[derive(Parser)]
#[command(version, about = "Stubmail's poller: fetches mail from your contacts' outboxes into your mailbox, and serves it over POP3",
    after_help = "Examples:\n  http2mbox --once           # one poll (check now, or from cron)\n  http2mbox --interval 60    # poll every minute, serve POP3")]
struct Cli {
    /// The user's Stubmail directory (default: XDG config and data dirs).
    #[arg(long, env = stubmail::config::HOME_ENV)]
    home: Option<PathBuf>,
    /// Poll once and exit: status 0 when every announced message was taken
    /// (or there was none), 75 (EX_TEMPFAIL) when some could not be (a fetch
    /// cut off; they wait for the next poll). Unreachable outboxes are
    /// reported, not an error: a contact's outbox may be down.
    #[arg(long)]
    once: bool,
    /// Seconds between polls (overrides the config).
    #[arg(long)]
    interval: Option<u64>,
    /// POP3 listen address (overrides the config).
    #[arg(long)]
    pop3_listen: Option<SocketAddr>,
    /// IMAP listen address (overrides the config).
    #[arg(long)]
    imap_listen: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    // The mailbox and state are the user's alone, whatever the umask.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    stubmail::logging::init("info");
    let cli = Cli::parse();
    let home = Home::resolve(cli.home.as_deref())?;
    let config = home.load_config()?;
    let interval = cli.interval.unwrap_or(config.poll.interval_secs).max(1);
    let mut poller = http2mbox::poller_for(&home, &config, cli.once)?;
    poller.http_every = std::time::Duration::from_secs(interval);
    let poller = Arc::new(poller);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        if cli.once {
            let r = poller.poll_once().await?;
            println!(
                "http2mbox: polled {} outbox(es), delivered {}, rejected {}, incomplete {}, unreachable {}",
                r.outboxes, r.delivered, r.rejected, r.incomplete, r.failed_outboxes
            );
            if r.incomplete > 0 {
                eprintln!("http2mbox: {} message(s) could not be taken this time; they wait in their outboxes for the next poll", r.incomplete);
                std::process::exit(75);
            }
            return anyhow::Ok(());
        }
        // One polling daemon per home; `--once` ("check now") needs none.
        let mut lock = stubmail::node::hold(&home.state_dir(), "http2mbox", "http2mbox")?;
        if let Some(n) = config.notify.listen {
            lock.listening("notify", n)?;
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        stubmail::signals::cancel_on_signal(&shutdown);
        let pop3 = match config.poll.pop3.password {
            Some(_) => {
                let listen = cli.pop3_listen.unwrap_or(config.poll.pop3.listen);
                let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding POP3 on {listen}"))?;
                println!("http2mbox POP3 listening on {}", l.local_addr()?);
                lock.listening("pop3", l.local_addr()?)?;
                Some(l)
            }
            None => {
                tracing::info!("POP3 is off: set poll.pop3.password to serve the mailbox");
                None
            }
        };
        // IMAP serves a Maildir (with mbox or an MDA there are no folders
        // to serve; POP3 still serves an mbox).
        let maildir = config.poll.deliver == stubmail::config::Delivery::Maildir;
        let imap = match (&config.poll.pop3.password, config.poll.imap.enabled && maildir) {
            (Some(_), true) => {
                let listen = cli.imap_listen.unwrap_or(config.poll.imap.listen);
                let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding IMAP on {listen}"))?;
                println!("http2mbox IMAP listening on {}", l.local_addr()?);
                lock.listening("imap", l.local_addr()?)?;
                Some(l)
            }
            _ => None,
        };
        let notify = http2mbox::bind_notify(&config).await?;
        if let Some(s) = &notify {
            println!("http2mbox notify listening on {}", s.local_addr()?);
        }
        println!("http2mbox polling every {interval} s");
        http2mbox::daemon(&home, &config, poller, interval, http2mbox::Listeners { pop3, imap, notify }, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_example_in_help_parses() {
        stubmail::help::check_examples(super::Cli::command(), "http2mbox", &|w| {
            super::Cli::try_parse_from(w).map(|_| ()).map_err(|e| e.to_string())
        });
    }
}
