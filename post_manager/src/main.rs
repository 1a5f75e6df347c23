//! `post_manager`: thin binary over the library. Parses arguments, binds,
//! and runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use post_manager::{handler::Settings, server, store::Store};

#[derive(Parser)]
#[command(version, about = "Stubmail outbox: stores senders' mail until recipients fetch it")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the outbox as a standalone HTTP server.
    ///
    /// Example: post_manager serve --listen 127.0.0.1:8080 --data /var/lib/stubmail-outbox
    Serve {
        /// Address to listen on (loopback by default; put a TLS proxy in front for the Internet).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Data directory.
        #[arg(long, env = "POST_MANAGER_DATA")]
        data: PathBuf,
        /// Path prefix the outbox is served under.
        #[arg(long, default_value = "/")]
        prefix: String,
        /// Largest message accepted, in bytes.
        #[arg(long, default_value_t = 256 * 1024 * 1024)]
        max_message_size: u64,
    },
    /// Manage the local users allowed to upload.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Register a user by their certificate (`stubmail keys export > alice.asc`).
    ///
    /// Example: post_manager account add --data /var/lib/stubmail-outbox --key alice.asc
    Add {
        #[arg(long, env = "POST_MANAGER_DATA")]
        data: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// List registered users.
    List {
        #[arg(long, env = "POST_MANAGER_DATA")]
        data: PathBuf,
    },
    /// Remove a user by full fingerprint.
    Remove {
        #[arg(long, env = "POST_MANAGER_DATA")]
        data: PathBuf,
        fingerprint: String,
    },
}

fn main() -> anyhow::Result<()> {
    stubmail::logging::init("info");
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { listen, data, prefix, max_message_size } => {
            let store = Store::open(&data).with_context(|| format!("opening data directory {}", data.display()))?;
            let mut prefix = prefix;
            if !prefix.starts_with('/') {
                prefix.insert(0, '/');
            }
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            let settings = Settings { prefix, max_message_size };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
                let addr = listener.local_addr()?;
                println!("post_manager listening on {addr}");
                let shutdown = tokio_util::sync::CancellationToken::new();
                tokio::spawn(stubmail_signals(shutdown.clone()));
                server::run(listener, store, settings, shutdown).await?;
                anyhow::Ok(())
            })
        }
        Cmd::Account { cmd } => account(cmd),
    }
}

fn account(cmd: AccountCmd) -> anyhow::Result<()> {
    match cmd {
        AccountCmd::Add { data, key } => {
            let store = Store::open(&data)?;
            let bytes = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let certs = stubmail::pgp::parse_certs(&bytes).with_context(|| format!("{}", key.display()))?;
            for c in certs {
                let c = c.strip_secret_key_material();
                let f = store.add_account(&c)?;
                println!("added account {f} {}", stubmail::pgp::emails_of(&c).join(", "));
            }
        }
        AccountCmd::List { data } => {
            for c in Store::open(&data)?.accounts()? {
                println!("{} {}", stubmail::pgp::fpr_of(&c), stubmail::pgp::emails_of(&c).join(", "));
            }
        }
        AccountCmd::Remove { data, fingerprint } => {
            let f = stubmail::protocol::Fpr::parse(&fingerprint)?;
            if !Store::open(&data)?.remove_account(&f)? {
                anyhow::bail!("no account {f}; `post_manager account list` shows them");
            }
            println!("removed account {f}");
        }
    }
    Ok(())
}

async fn stubmail_signals(token: tokio_util::sync::CancellationToken) {
    stubmail::signals::shutdown_signal().await;
    token.cancel();
}
