//! `smtp2stub`: thin binary. Loads the user's home, binds, runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use anyhow::Context;
use clap::Parser;
use stubmail::Home;

#[derive(Parser)]
#[command(version, about = "Stubmail's local SMTP server: point your mail client's outgoing server here",
    after_help = "Example:\n  smtp2stub --listen 127.0.0.1:2525")]
struct Cli {
    /// The user's Stubmail directory (default: XDG config and data dirs).
    #[arg(long, env = stubmail::config::HOME_ENV)]
    home: Option<PathBuf>,
    /// Listen address (overrides the config; loopback by default).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    // The spool holds mail in clear: private, whatever the caller's umask.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    stubmail::logging::init("info");
    let cli = Cli::parse();
    let home = Home::resolve(cli.home.as_deref())?;
    // A home from before AUTH was required everywhere gets its password now.
    let config = home.load_config_with_passwords(false)?;
    let listen = cli.listen.unwrap_or(config.smtp.listen);
    // One smtp2stub per home (one spool, one worker): a second one names
    // the first and stops.
    let mut lock = stubmail::node::hold(&home.state_dir(), "smtp2stub", "smtp2stub")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        lock.listening("smtp", listener.local_addr()?)?;
        // A config that cannot serve this address fails before "listening".
        let tls = config.smtp.tls_cert.is_some() && config.smtp.tls_key.is_some();
        smtp2stub::auth_policy(&home, &config, listener.local_addr()?, tls)?;
        println!("smtp2stub listening on {}", listener.local_addr()?);
        let shutdown = tokio_util::sync::CancellationToken::new();
        stubmail::signals::cancel_on_signal(&shutdown);
        smtp2stub::serve_home(&home, &config, listener, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_example_in_help_parses() {
        stubmail::help::check_examples(super::Cli::command(), "smtp2stub", &|w| {
            super::Cli::try_parse_from(w).map(|_| ()).map_err(|e| e.to_string())
        });
    }
}
