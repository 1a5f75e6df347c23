//! `stubmail up`: a whole personal node in one process — the user's own
//! outbox (post_manager), smtp2stub, and http2mbox with POP3 and IMAP — on
//! loopback.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use stubmail::{Config, Home};
use tokio::net::TcpListener;

pub struct Args {
    pub email: Option<String>,
    pub name: Option<String>,
    /// Listen addresses from the command line: they override config.toml
    /// for this run (and, on the first run, are written to it).
    pub smtp: Option<SocketAddr>,
    pub pop3: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub outbox_listen: Option<SocketAddr>,
    pub outbox_url: Option<String>,
}

/// Where a new node listens unless told otherwise.
const DEFAULT_SMTP: &str = "127.0.0.1:2525";
const DEFAULT_POP3: &str = "127.0.0.1:1110";
const DEFAULT_IMAP: &str = "127.0.0.1:1143";
const DEFAULT_OUTBOX: &str = "127.0.0.1:8080";

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

/// A node started in this process.
pub struct Running {
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    /// None when IMAP is off (`poll.imap.enabled = false`, or delivery
    /// to an mbox or an MDA: IMAP serves a Maildir).
    pub imap: Option<SocketAddr>,
    pub outbox: SocketAddr,
    pub notify: Option<SocketAddr>,
    pub config: Config,
    pub shutdown: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// This home's roles, held while the node runs (one node per home).
    _locks: Vec<stubmail::node::RoleLock>,
}

impl Running {
    /// Stop (if not already asked to) and wait for every part to finish
    /// its work in hand (a message in DATA is spooled or refused, never lost).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            t.await??;
        }
        Ok(())
    }
}

/// A node dropped without `stop` (an error on the way) is still told to
/// stop, so the process can end instead of waiting on its listeners.
impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The outbox address an older home's certificate implies: its own URL,
/// when that names a loopback IP and port (homes made by `up` before it
/// wrote `[outbox] listen`).
fn outbox_from_url(url: &str) -> Option<SocketAddr> {
    let u = reqwest::Url::parse(url).ok()?;
    let ip: std::net::IpAddr = u.host_str()?.trim_matches(['[', ']']).parse().ok()?;
    (ip.is_loopback() && u.scheme() == "http").then(|| SocketAddr::new(ip, u.port_or_known_default().unwrap_or(80)))
}

/// A free loopback UDP port for the notify endpoint of a new node.
fn free_udp_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0").context("finding a UDP port for notification stubs")?.local_addr()?)
}

/// Bind and start a node for `home` (creating its identity if needed).
/// Addresses come from the command line, else config.toml, else the
/// defaults; the first run writes them to config.toml, so later runs (and
/// the systemd unit) keep the addresses the certificate binds.
pub async fn start(home: &Home, a: &Args) -> anyhow::Result<Running> {
    // One node per home, before anything binds: a second `up` names the first.
    let state = home.state_dir();
    let mut locks = vec![
        stubmail::node::hold(&state, "smtp2stub", "stubmail up")?,
        stubmail::node::hold(&state, "http2mbox", "stubmail up")?,
    ];
    let first = !home.secret_key().exists();
    let known = if first { None } else { Some(home.load_config()?) };
    let parse = |s: &str| -> SocketAddr { s.parse().expect("a valid default") };
    let outbox_listen = a
        .outbox_listen
        .or(known.as_ref().and_then(|c| c.outbox.listen))
        .or(known.as_ref().and_then(|c| outbox_from_url(&c.identity.outbox)))
        .unwrap_or_else(|| parse(DEFAULT_OUTBOX));
    let smtp = a.smtp.or(known.as_ref().map(|c| c.smtp.listen)).unwrap_or_else(|| parse(DEFAULT_SMTP));
    let pop3 = a.pop3.or(known.as_ref().map(|c| c.poll.pop3.listen)).unwrap_or_else(|| parse(DEFAULT_POP3));
    let imap = a.imap.or(known.as_ref().map(|c| c.poll.imap.listen)).unwrap_or_else(|| parse(DEFAULT_IMAP));
    let outbox_l = TcpListener::bind(outbox_listen).await.with_context(|| format!("binding the outbox on {outbox_listen}"))?;
    let outbox_addr = outbox_l.local_addr()?;
    if first {
        let email = match a.email.clone() {
            Some(e) => e,
            None => ask_email()?,
        };
        let url = a.outbox_url.clone().unwrap_or_else(|| format!("http://{outbox_addr}/"));
        // A node on loopback gets a notify endpoint there: contacts on this
        // machine deliver within seconds, not at the next poll.
        let notify = if outbox_addr.ip().is_loopback() { Some(format!("udp://{}", free_udp_port()?)) } else { None };
        super::init::run(home, &email, &url, a.name.as_deref(), notify.as_deref(), false)?;
    } else {
        add_notify_endpoint(home, outbox_addr)?;
    }
    // Passwords for the mail client, made once and kept in config.toml (0600).
    let mut config = home.load_config_with_passwords(true)?;
    // The user's own outbox, with the user as its account (updated when the
    // key changed: a new address, a notify endpoint).
    let me = home.load_identity()?;
    let store = post_manager::store::Store::open(&home.data_dir.join("outbox")).context("opening the outbox")?;
    if store.account(&me.fpr())?.is_none_or(|c| c != me.cert()) {
        store.add_account(&me.cert())?;
    }
    let smtp_l = TcpListener::bind(smtp).await.with_context(|| format!("binding SMTP on {smtp}"))?;
    let pop3_l = TcpListener::bind(pop3).await.with_context(|| format!("binding POP3 on {pop3}"))?;
    let imap_l = if config.poll.imap.enabled && config.poll.deliver == stubmail::config::Delivery::Maildir {
        Some(TcpListener::bind(imap).await.with_context(|| format!("binding IMAP on {imap} (another IMAP server there? `stubmail up --imap 127.0.0.1:1144` takes another port)"))?)
    } else {
        None
    };
    let imap_addr = imap_l.as_ref().map(|l| l.local_addr()).transpose()?;
    let notify_s = http2mbox::bind_notify(&config).await?;
    let (smtp_addr, pop3_addr) = (smtp_l.local_addr()?, pop3_l.local_addr()?);
    // This run's addresses (a flag may override the file for one run); the
    // first run's are the node's from now on.
    config.smtp.listen = smtp_addr;
    config.poll.pop3.listen = pop3_addr;
    if let Some(a) = imap_addr {
        config.poll.imap.listen = a;
    }
    if first {
        config.outbox.listen = Some(outbox_addr);
        home.save_config(&config)?;
    }
    locks[0].listening("smtp", smtp_addr)?;
    locks[0].listening("outbox", outbox_addr)?;
    locks[1].listening("pop3", pop3_addr)?;
    if let Some(a) = imap_addr {
        locks[1].listening("imap", a)?;
    }
    if let Some(n) = config.notify.listen {
        locks[1].listening("notify", n)?;
    }
    tracing::info!(smtp = %smtp_addr, pop3 = %pop3_addr, imap = ?imap_addr, outbox = %outbox_addr, notify = ?config.notify.listen, "listening");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = post_manager::handler::Settings::default();
    let sd = shutdown.clone();
    let udp = post_manager::bind_udp("auto", outbox_l.local_addr()?)?.map(|u| (u, Default::default()));
    let outbox = tokio::spawn(async move { Ok(post_manager::serve(outbox_l, udp, store, settings, Default::default(), sd).await?) });
    let (home2, config2, sd) = (home.clone(), config.clone(), shutdown.clone());
    let smtp = tokio::spawn(async move { smtp2stub::serve_home(&home2, &config2, smtp_l, sd).await });
    let poller = Arc::new(http2mbox::poller_for(home, &config, false)?);
    let interval = config.poll.interval_secs.max(1);
    let (home3, config3, sd) = (home.clone(), config.clone(), shutdown.clone());
    let poll = tokio::spawn(async move { http2mbox::daemon(&home3, &config3, poller, interval, http2mbox::Listeners { pop3: Some(pop3_l), imap: imap_l, notify: notify_s }, sd).await });
    Ok(Running {
        smtp: smtp_addr,
        pop3: pop3_addr,
        imap: imap_addr,
        outbox: outbox_addr,
        notify: config.notify.listen,
        config,
        shutdown,
        tasks: vec![outbox, smtp, poll],
        _locks: locks,
    })
}

/// A node on loopback whose key binds no notify endpoint (made before
/// `up` gave one by default) gets one now: the key is bound anew, and
/// config.toml says where to listen. Contacts learn it from the outbox's
/// `/v1/certs` when they next fetch mail.
fn add_notify_endpoint(home: &Home, outbox_addr: SocketAddr) -> anyhow::Result<()> {
    let mut config = home.load_config()?;
    if !outbox_addr.ip().is_loopback() || config.notify.listen.is_some() {
        return Ok(());
    }
    let mut me = home.load_identity()?;
    if stubmail::pgp::notify_of(&me.cert()).is_some() {
        return Ok(());
    }
    let Some(outbox) = stubmail::pgp::outbox_of(&me.cert()) else { return Ok(()) };
    let notify = free_udp_port()?;
    me.rebind(&outbox, Some(&format!("udp://{notify}")))?;
    stubmail::fsutil::write_atomic(&home.secret_key(), &me.to_armored_secret()?, 0o600).context("writing the secret key")?;
    config.notify.listen = Some(notify);
    home.save_config(&config)?;
    tracing::info!(%notify, "your key now binds a notify endpoint: contacts on this machine deliver at once");
    Ok(())
}

pub fn run(home: &Home, a: Args) -> anyhow::Result<()> {
    // A list's home: its node is the list's robot.
    if home.secret_key().exists() && home.load_config()?.list.is_some() {
        return super::list::run_robot(home);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let node = start(home, &a).await?;
        let (c, smtp_addr, pop3_addr, imap_addr, outbox_addr) = (&node.config, node.smtp, node.pop3, node.imap, node.outbox);
        let notify = node.notify.map_or("none (contacts find your mail by polling)".to_string(), |n| format!("udp://{n}"));
        let user = c.identity.email.clone();
        println!("Stubmail node for {user} is running. Mail-client settings:");
        print!("{}", super::identity::client_settings(c, smtp_addr, pop3_addr, imap_addr));
        println!("  Your outbox:     {} (served here on {outbox_addr})", c.identity.outbox);
        println!("  Notify endpoint: {notify}");
        println!("  Your key:        stubmail keys export   (give it to your contacts)");
        println!("Press Ctrl-C to stop.");
        let imap = imap_addr.map(|a| format!(" imap={a}")).unwrap_or_default();
        println!("stubmail up listening on smtp={smtp_addr} pop3={pop3_addr} outbox={outbox_addr}{imap}");
        std::io::stdout().flush()?;
        stubmail::signals::cancel_on_signal(&node.shutdown);
        node.shutdown.cancelled().await;
        node.stop().await?;
        println!("stubmail: stopped");
        Ok(())
    })
}
