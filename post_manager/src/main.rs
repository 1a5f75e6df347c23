//! `post_manager`: thin binary over the library. Parses arguments, binds,
//! and runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use post_manager::{handler::Settings, store::Store};

#[derive(Parser)]
#[command(version, about = "Stubmail outbox: stores senders' mail until recipients fetch it")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the outbox as a standalone HTTP server.
    #[command(after_help = "Example:\n  post_manager serve --listen 127.0.0.1:8080 --data /var/lib/stubmail-outbox")]
    Serve {
        /// Address to listen on (loopback by default; put a TLS proxy in front for the Internet).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        data: DataDir,
        /// Path prefix the outbox is served under.
        #[arg(long, default_value = "/")]
        prefix: String,
        /// Largest message accepted, in bytes.
        #[arg(long, default_value_t = 256 * 1024 * 1024)]
        max_message_size: u64,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Connections held per client address (slowloris defence); behind a
        /// reverse proxy all come from the proxy, so raise it there.
        #[arg(long, default_value_t = 32)]
        max_connections_per_ip: usize,
        /// A base URL clients reach this outbox by, besides those its
        /// accounts' certificates bind (repeatable). Signed requests are
        /// bound to the outbox URL they were made for.
        #[arg(long = "public-url", value_name = "URL")]
        public_urls: Vec<String>,
        /// The mail address of this outbox's abuse desk (RFC 2142 `abuse@`
        /// your domain, typically): every recipient whose complaint is taken
        /// is told it, and mails it a signed ARF report too.
        #[arg(long, value_name = "ADDRESS")]
        abuse_contact: Option<String>,
        /// UDP poll and notification service: `auto` (the HTTP address and
        /// port number), `off`, or IP:PORT.
        #[arg(long, default_value = "auto")]
        udp: String,
        #[command(flatten)]
        udp_limits: UdpArgs,
    },
    /// Run only the UDP poll and notification service, next to a CGI outbox
    /// sharing the data directory (see contrib/systemd).
    #[command(after_help = "Example:\n  post_manager udp --listen 0.0.0.0:8080 --data /var/lib/stubmail-outbox")]
    Udp {
        /// UDP address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        udp_limits: UdpArgs,
    },
    /// Apply the retention policy once (for cron, with CGI setups; `serve`
    /// does this every hour by itself).
    #[command(after_help = "Example:\n  post_manager expire --data /var/lib/stubmail-outbox --retention-days 30")]
    Expire {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Copy an outbox from a data directory into a PostgreSQL database
    /// (idempotent and resumable: run it again after an interruption), then
    /// check every message is there and every stored one's bytes hash to
    /// its id. Stop the outbox first, or run it again after the switch.
    #[command(after_help = "Example:\n  post_manager migrate --from /var/lib/stubmail-outbox --to postgres://outbox@db.example/outbox")]
    Migrate {
        /// The data directory.
        #[arg(long)]
        from: PathBuf,
        /// The database (postgres://USER:PASSWORD@HOST:PORT/DB).
        #[arg(long)]
        to: String,
    },
    /// Manage the local users allowed to upload.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
}

/// Retention policy (docs/OPERATING.md).
#[derive(clap::Args, Clone, Copy)]
struct RetentionArgs {
    /// Days a message waits for its recipients before it expires.
    #[arg(long, default_value_t = 30)]
    retention_days: u32,
    /// Days the bytes are kept once no recipient is waiting any more.
    #[arg(long, default_value_t = 7)]
    keep_days: u32,
    /// Days the delivery status is kept after that.
    #[arg(long, default_value_t = 90)]
    status_days: u32,
}

/// Limits of the UDP service.
#[derive(clap::Args, Clone, Copy)]
struct UdpArgs {
    /// Port announced to pollers, when a NAT or port forward puts the
    /// service on another port than the one bound.
    #[arg(long)]
    udp_advertise_port: Option<u16>,
    /// UDP datagrams per second accepted from one source address.
    #[arg(long, default_value_t = 50.0)]
    udp_rate: f64,
    /// Burst above that rate.
    #[arg(long, default_value_t = 100.0)]
    udp_burst: f64,
}

impl UdpArgs {
    fn settings(self) -> post_manager::udp::UdpSettings {
        post_manager::udp::UdpSettings { advertise_port: self.udp_advertise_port, rate_per_source: self.udp_rate, burst_per_source: self.udp_burst }
    }
}

impl RetentionArgs {
    fn policy(self) -> post_manager::store::Retention {
        let d = |n: u32| n as i64 * 86400;
        post_manager::store::Retention { pending_secs: d(self.retention_days), keep_secs: d(self.keep_days), status_secs: d(self.status_days) }
    }
}

/// Where the outbox keeps its data: `--data DIR`, `<home>/outbox` for a
/// personal outbox living in a user's Stubmail home, or `--store URL` for
/// a PostgreSQL database shared by several instances.
#[derive(clap::Args)]
struct DataDir {
    /// Data directory of the outbox.
    #[arg(long, env = "POST_MANAGER_DATA", required_unless_present_any = ["home", "store"], conflicts_with = "store")]
    data: Option<PathBuf>,
    /// A PostgreSQL database instead of a data directory
    /// (postgres://USER:PASSWORD@HOST:PORT/DB; docs/OPERATING.md, "A
    /// provider's outbox"). Several instances may share one.
    #[arg(long, env = "POST_MANAGER_STORE", value_name = "URL")]
    store: Option<String>,
    /// A user's Stubmail home; the data directory is then <home>/outbox.
    #[arg(long, env = stubmail::config::HOME_ENV)]
    home: Option<PathBuf>,
}

impl DataDir {
    /// Open the store: the database if `--store` names one, else the data
    /// directory.
    fn open(&self) -> anyhow::Result<Store> {
        match &self.store {
            Some(url) => Store::open_spec(url),
            None => {
                let data = self.path()?;
                Store::open(&data).with_context(|| format!("opening data directory {}", data.display()))
            }
        }
    }

    /// The data directory. Run as root on a directory another user owns
    /// (a CGI setup's www-data), this process becomes that user first: the
    /// files it makes are private (0600) and must be the server's, or the
    /// outbox could not read them.
    fn path(&self) -> anyhow::Result<PathBuf> {
        let p = self
            .data
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join("outbox")))
            .ok_or_else(|| anyhow::anyhow!("pass --data DIR (or --home DIR for a personal outbox)"))?;
        become_owner_of(&p)?;
        Ok(p)
    }
}

/// As root, take the uid and gid of the owner of `dir` (if it exists and
/// is not root's).
fn become_owner_of(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let Ok(m) = std::fs::metadata(dir) else { return Ok(()) };
    if m.uid() == 0 {
        return Ok(());
    }
    // SAFETY: plain system calls on this process's credentials; group
    // first, while still allowed to change it.
    let ok = unsafe { libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(m.gid()) == 0 && libc::setuid(m.uid()) == 0 };
    if !ok {
        anyhow::bail!("cannot become uid {} (the owner of {}): {}", m.uid(), dir.display(), std::io::Error::last_os_error());
    }
    tracing::debug!(uid = m.uid(), "running as the owner of the data directory");
    Ok(())
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Register a user by their certificate (`stubmail keys export > alice.asc`).
    #[command(after_help = "Examples:\n  post_manager account add --data /var/lib/stubmail-outbox --key alice.asc\n  post_manager account add --data /var/lib/stubmail-outbox --key bob.asc --max-bytes 2000000000")]
    Add {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        key: PathBuf,
        /// Bytes the account may keep stored (default 1 GiB).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Messages the account may keep stored (default 10000).
        #[arg(long)]
        max_messages: Option<u64>,
        /// Distinct recipients per UTC day (default 1000).
        #[arg(long)]
        max_recipients_per_day: Option<u64>,
        /// Recipients of one message, all uploads of it together (default
        /// 1000, what one upload may name; more for a list robot).
        #[arg(long)]
        max_recipients_per_message: Option<u64>,
        /// Uploads per minute (default 300); a burst beyond waits, it is
        /// not lost (smtp2stub retries).
        #[arg(long)]
        max_uploads_per_minute: Option<u64>,
        /// Bytes of new messages per minute (default 1 GiB).
        #[arg(long)]
        max_upload_bytes_per_minute: Option<u64>,
        /// Verified complaints by recipients in one UTC day that suspend
        /// the account from uploading (default 10).
        #[arg(long)]
        max_complaints_per_day: Option<u64>,
        /// The certificate binds an outbox URL this outbox is not known by
        /// yet: take it as another name of this outbox (signed requests
        /// made for it become valid here).
        #[arg(long)]
        new_url: bool,
    },
    /// List registered users.
    #[command(after_help = "Example:\n  post_manager account list --data /var/lib/stubmail-outbox")]
    List {
        #[command(flatten)]
        data: DataDir,
    },
    /// An account's limits, usage, complaints and suspension.
    #[command(after_help = "Example:\n  post_manager account show --data /var/lib/stubmail-outbox 0123456789ABCDEF0123456789ABCDEF01234567")]
    Show {
        #[command(flatten)]
        data: DataDir,
        fingerprint: String,
    },
    /// Stop an account's uploads; its stored mail stays fetchable by its
    /// recipients, and it can still see its delivery status and unsend.
    #[command(after_help = "Example:\n  post_manager account suspend --data /var/lib/stubmail-outbox 0123456789ABCDEF0123456789ABCDEF01234567 --reason complaints")]
    Suspend {
        #[command(flatten)]
        data: DataDir,
        fingerprint: String,
        /// Why (shown to the account in its refused uploads).
        #[arg(long, default_value = "suspended by the operator")]
        reason: String,
    },
    /// Let a suspended account upload again.
    #[command(after_help = "Example:\n  post_manager account resume --data /var/lib/stubmail-outbox 0123456789ABCDEF0123456789ABCDEF01234567")]
    Resume {
        #[command(flatten)]
        data: DataDir,
        fingerprint: String,
    },
    /// Remove a user by full fingerprint.
    #[command(after_help = "Example:\n  post_manager account remove --data /var/lib/stubmail-outbox 0123456789ABCDEF0123456789ABCDEF01234567")]
    Remove {
        #[command(flatten)]
        data: DataDir,
        fingerprint: String,
    },
}

fn main() -> anyhow::Result<()> {
    stubmail::logging::init("info");
    // The data directory holds who mails whom, UDP cookie keys and nonces:
    // everything post_manager creates is private to the user it runs as
    // (0700 directories, 0600 files). Under a web server that is the
    // server's user, for the CGI and its UDP companion alike (OPERATING.md).
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    // Started by a web server: answer one request. Nothing is parsed or
    // scanned before the request needs it, so start-up stays cheap.
    if post_manager::cgi::is_cgi() {
        return Ok(post_manager::cgi::run()?);
    }
    let cli = Cli::parse();
    // A one-shot command printing into a closed pipe (`post_manager account
    // list | head`) ends quietly, like any Unix tool, instead of panicking
    // on the failed print. Not the servers: for them a peer hanging up is
    // an error to handle, not a signal.
    if !matches!(cli.cmd, Cmd::Serve { .. } | Cmd::Udp { .. }) {
        // SAFETY: restores the default action of one signal, before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.cmd {
        Cmd::Expire { data, retention } => {
            let store = data.open()?;
            let e = store.expire(stubmail::time::unix_now(), retention.policy())?;
            println!(
                "expired {} recipient(s), deleted {} message(s), dropped {} status(es)",
                e.recipients_expired, e.messages_deleted, e.statuses_dropped
            );
            Ok(())
        }
        Cmd::Udp { listen, data, udp_limits } => {
            let store = data.open()?;
            store.check_ready()?;
            let socket = std::net::UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
            println!("post_manager udp listening on {}", socket.local_addr()?);
            let shutdown = tokio_util::sync::CancellationToken::new();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let sd = shutdown.clone();
            rt.spawn(async move { stubmail::signals::cancel_on_signal(&sd) });
            Ok(post_manager::udp::run(socket, store, udp_limits.settings(), shutdown)?)
        }
        Cmd::Serve { listen, data, prefix, max_message_size, retention, max_connections_per_ip, public_urls, abuse_contact, udp, udp_limits } => {
            let store = data.open()?;
            store.check_ready()?;
            let mut prefix = prefix;
            if !prefix.starts_with('/') {
                prefix.insert(0, '/');
            }
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            let public_urls = public_urls
                .iter()
                .map(|u| stubmail::protocol::outbox_id(u).with_context(|| format!("--public-url {u:?} is not an http(s) URL")))
                .collect::<anyhow::Result<_>>()?;
            if let Some(a) = &abuse_contact {
                anyhow::ensure!(post_manager::valid_abuse_contact(a), "--abuse-contact {a:?} is not a mail address (say abuse@your.domain)");
            }
            let settings = Settings { prefix, max_message_size, max_connections_per_ip, public_urls, abuse_contact };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
                let addr = listener.local_addr()?;
                let udp = post_manager::bind_udp(&udp, addr)?;
                if let Some(u) = &udp {
                    println!("post_manager udp on {}", u.local_addr()?);
                }
                println!("post_manager listening on {addr}");
                let shutdown = tokio_util::sync::CancellationToken::new();
                stubmail::signals::cancel_on_signal(&shutdown);
                let udp = udp.map(|u| (u, udp_limits.settings()));
                post_manager::serve(listener, udp, store, settings, retention.policy(), shutdown).await?;
                anyhow::Ok(())
            })
        }
        Cmd::Migrate { from, to } => {
            become_owner_of(&from)?;
            let files = post_manager::store::Files::open(&from).with_context(|| format!("opening data directory {}", from.display()))?;
            let pg = post_manager::store::Pg::connect(&to)?;
            let m = post_manager::store::migrate::migrate(&files, &pg, &mut std::io::stderr())?;
            println!(
                "migrated {} account(s), {} certificate(s), {} message(s) ({} with their bytes; {} copied by this run); \
                 every message is in the database and the bytes of {} read back match their ids",
                m.accounts, m.certs, m.messages, m.with_bytes, m.copied, m.verified
            );
            Ok(())
        }
        Cmd::Account { cmd } => account(cmd),
    }
}

fn account(cmd: AccountCmd) -> anyhow::Result<()> {
    match cmd {
        AccountCmd::Add {
            data,
            key,
            max_bytes,
            max_messages,
            max_recipients_per_day,
            max_recipients_per_message,
            max_uploads_per_minute,
            max_upload_bytes_per_minute,
            max_complaints_per_day,
            new_url,
        } => {
            // Read before becoming the data directory's owner (who may not
            // be able to read the administrator's file).
            let bytes = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let store = data.open()?;
            let certs = stubmail::pgp::parse_certs(&bytes).with_context(|| format!("{}", key.display()))?;
            for c in certs {
                let c = c.strip_secret_key_material();
                let f = if new_url { store.add_account_new_url(&c)? } else { store.add_account(&c)? };
                let d = post_manager::store::Limits::default();
                let limits = post_manager::store::Limits {
                    max_bytes: max_bytes.unwrap_or(d.max_bytes),
                    max_messages: max_messages.unwrap_or(d.max_messages),
                    max_recipients_per_day: max_recipients_per_day.unwrap_or(d.max_recipients_per_day),
                    max_recipients_per_message: max_recipients_per_message.unwrap_or(d.max_recipients_per_message),
                    max_uploads_per_minute: max_uploads_per_minute.unwrap_or(d.max_uploads_per_minute),
                    max_upload_bytes_per_minute: max_upload_bytes_per_minute.unwrap_or(d.max_upload_bytes_per_minute),
                    max_complaints_per_day: max_complaints_per_day.unwrap_or(d.max_complaints_per_day),
                };
                store.set_limits(&f, &limits)?;
                println!("added account {f} {}", stubmail::pgp::emails_of(&c).join(", "));
            }
        }
        AccountCmd::List { data } => {
            for c in data.open()?.accounts()? {
                println!("{} {}", stubmail::pgp::fpr_of(&c), stubmail::pgp::emails_of(&c).join(", "));
            }
        }
        AccountCmd::Show { data, fingerprint } => {
            let f = stubmail::protocol::Fpr::parse(&fingerprint)?;
            let store = data.open()?;
            let cert = store.account(&f)?.with_context(|| format!("no account {f} here"))?;
            let now = stubmail::time::unix_now();
            let st = store.account_status(&f, now)?;
            let l = store.limits(&f);
            let (today, total) = store.complaint_counts(&f, now, store.resumed_at(&f)?)?;
            println!("account {f} {}", stubmail::pgp::emails_of(&cert).join(", "));
            match store.suspension(&f)? {
                Some(s) => println!("SUSPENDED since {}: {}", stubmail::time::rfc3339(s.since), s.reason),
                None => println!("active"),
            }
            println!("stored: {} bytes of {}, {} messages of {}", st.bytes, l.max_bytes, st.messages, l.max_messages);
            println!("today: {} distinct recipients of {}", st.recipients_today, l.max_recipients_per_day);
            println!(
                "uploads: at most {} a minute, {} bytes a minute; {} recipients a message",
                l.max_uploads_per_minute, l.max_upload_bytes_per_minute, l.max_recipients_per_message
            );
            println!("complaints: {today} recipient(s) today (suspended at {}), {total} complaint(s) in all", l.max_complaints_per_day);
            for c in store.recent_complaints(&f, 10)? {
                println!("  {}  message {} by {}", stubmail::time::rfc3339(c.at), c.id, c.by);
            }
        }
        AccountCmd::Suspend { data, fingerprint, reason } => {
            let f = stubmail::protocol::Fpr::parse(&fingerprint)?;
            let store = data.open()?;
            store.account(&f)?.with_context(|| format!("no account {f} here"))?;
            let now = stubmail::time::unix_now();
            store.set_suspension(&f, Some(&post_manager::store::Suspension { since: now, reason }), now)?;
            println!("suspended {f}: its uploads are refused; what it stored stays fetchable");
        }
        AccountCmd::Resume { data, fingerprint } => {
            let f = stubmail::protocol::Fpr::parse(&fingerprint)?;
            let store = data.open()?;
            if store.suspension(&f)?.is_none() {
                anyhow::bail!("{f} is not suspended");
            }
            store.set_suspension(&f, None, stubmail::time::unix_now())?;
            println!("resumed {f}: it may upload again (today's complaints so far no longer count)");
        }
        AccountCmd::Remove { data, fingerprint } => {
            let f = stubmail::protocol::Fpr::parse(&fingerprint)?;
            if !data.open()?.remove_account(&f)? {
                anyhow::bail!("no account {f}; `post_manager account list` shows them");
            }
            println!("removed account {f}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_example_in_help_parses() {
        stubmail::help::check_examples(super::Cli::command(), "post_manager", &|w| {
            super::Cli::try_parse_from(w).map(|_| ()).map_err(|e| e.to_string())
        });
    }
}
