//! http2mbox: the recipient's side. It polls the outboxes of the people in
//! the keyring (the address book and the whitelist), verifies and decrypts
//! what it finds, delivers it into the local Maildir, and only then confirms
//! retrieval to the sender's outbox.

pub mod deliver;
pub mod forward;
pub mod mbox;
pub mod notify;
pub mod poller;
pub mod imap;
pub mod pop3;
pub mod report;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deliver::Target;
use poller::Poller;
use stubmail::config::Delivery;
use stubmail::maildir::{Journal, Maildir};

/// The poller of one user's home, as its config describes.
pub fn poller_for(home: &stubmail::Home, config: &stubmail::Config, once: bool) -> anyhow::Result<Poller> {
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
    Ok(Poller {
        me,
        keyring: home.keyring(),
        http: stubmail::client::http_client_with_timeout(Duration::from_secs(config.poll.timeout_secs.max(1)))?,
        target,
        work: state.join("work"),
        journal: Journal::open(&state.join("delivered"))?,
        staging: state.join("fetch"),
        max_size: config.poll.max_message_size,
        deadline: Duration::from_secs(config.poll.timeout_secs.max(1)),
        max_plain: config.poll.max_decrypted_size,
        hostname: config.poll.hostname.clone().unwrap_or_else(this_host),
        set_aside: poller::SetAside::new(state.join("rejected")),
        device: poller::device_id(&state)?,
        overrides: config
            .poll
            .outboxes
            .iter()
            .map(|(f, u)| Ok((stubmail::protocol::Fpr::parse(f)?, u.clone())))
            .collect::<anyhow::Result<_>>()
            .context("poll.outboxes")?,
        failing: Default::default(),
        use_backoff: !once,
        lock_path: state.join("poll.lock"),
        udp: poller::UdpState::new(!once && config.poll.udp, Duration::from_millis(config.poll.udp_timeout_ms.max(1))),
        http_every: Duration::from_secs(config.poll.interval_secs.max(1)),
        last_http: Default::default(),
        contact_cache: Default::default(),
        claims: Default::default(),
        refreshed: state.join("refreshed"),
        cert_refresh: Duration::from_secs(config.poll.cert_refresh_secs.max(1)),
        blocks: Arc::new(stubmail::blocklist::BlockCache::new(&home.data_dir)),
        delivered: tokio::sync::watch::Sender::new(0),
        forward: match &config.forward {
            Some(f) => Some(Arc::new(forward::Forward {
                config: f.clone(),
                me: config.identity.email.to_ascii_lowercase(),
                spool: stubmail::spool::Spool::open(&home.spool_dir()).context("opening the spool for forwarding")?,
                keyring: home.keyring(),
                relay: config.relay.is_some(),
                seen: state.join("forwarded"),
            })),
            None => None,
        },
    })
}

/// The notify listener `notify.listen` asks for, if any (bound before
/// anything says "listening").
pub async fn bind_notify(config: &stubmail::Config) -> anyhow::Result<Option<tokio::net::UdpSocket>> {
    let Some(addr) = config.notify.listen else { return Ok(None) };
    Ok(Some(tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("binding the notify listener {addr}"))?))
}

/// After a poll that delivered mail, the contact is polled again this
/// soon; after each that finds nothing new, four times later, until past
/// `FOLLOW_LAST` (20, 80, 320, 1,280 ms: four polls after a burst ends).
const FOLLOW_FIRST: Duration = Duration::from_millis(20);
const FOLLOW_LAST: Duration = Duration::from_millis(1500);

/// What the daemon serves besides polling, each bound by the caller.
#[derive(Default)]
pub struct Listeners {
    pub pop3: Option<tokio::net::TcpListener>,
    pub imap: Option<tokio::net::TcpListener>,
    /// Notification stubs (UDP).
    pub notify: Option<tokio::net::UdpSocket>,
}

/// Poll every `interval` seconds (with jitter) and, given listeners,
/// serve POP3 and IMAP and take notification stubs, until `shutdown`.
pub async fn daemon(
    home: &stubmail::Home,
    config: &stubmail::Config,
    poller: Arc<Poller>,
    interval: u64,
    listeners: Listeners,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let Listeners { pop3: pop3_listener, imap: imap_listener, notify: notify_socket } = listeners;
    // One count of failed logins for both servers: they share the password.
    let throttle: Arc<stubmail::guard::LoginThrottle> = Default::default();
    let pop3_task = match pop3_listener {
        Some(l) => Some(start_pop3(home, config, l, poller.clone(), throttle.clone(), shutdown.clone())?),
        None => None,
    };
    let imap_task = match imap_listener {
        Some(_) if !matches!(poller.target, Target::Maildir(_)) => {
            tracing::info!("IMAP is off: it serves a Maildir, and delivery goes to an mbox or an MDA");
            None
        }
        Some(l) => Some(start_imap(home, config, l, poller.clone(), throttle, shutdown.clone())?),
        None => None,
    };
    // Stubs from contacts arrive here as "poll this sender now".
    let (stub_tx, mut stub_rx) = tokio::sync::mpsc::channel::<stubmail::protocol::Fpr>(1024);
    if let Some(socket) = notify_socket {
        let quarantine = if config.notify.first_contact {
            Some(notify::Quarantine::open(&home.state_dir(), config.notify.max_per_sender, config.notify.max_senders)?)
        } else {
            None
        };
        let mut judge = notify::Judge::new(poller.me.fpr(), poller.keyring.clone(), quarantine);
        judge.own = Some(poller.me.cert());
        judge.blocks = Some(poller.blocks.clone());
        judge.strangers_per_hour = config.notify.new_strangers_per_source_hour;
        judge.contact_spacing = std::time::Duration::from_millis(config.notify.contact_poll_spacing_ms).min(notify::MAX_CONTACT_SPACING);
        judge.stubs_per_minute = config.notify.stubs_per_source_minute;
        judge.evidence = Some(report::stubs_dir(home));
        tokio::spawn(notify::listen(socket, judge, stub_tx.clone(), shutdown.clone()));
    }
    // Shared blocklists the user subscribed to, refreshed when due
    // (`stubmail blocklist subscribe`); the poller reads them with the
    // user's own blocks through `blocks.json`.
    {
        let (data_dir, http, shutdown) = (home.data_dir.clone(), poller.http.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                match stubmail::blocklist::refresh(&data_dir, &http, stubmail::time::unix_now(), false).await {
                    Ok(done) => {
                        for (url, r) in done {
                            match r {
                                Ok(n) => tracing::info!(url, entries = n, "shared blocklist refreshed"),
                                Err(e) => tracing::warn!(url, "shared blocklist not refreshed: {e}; the entries held stay in force"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!("shared blocklists: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    // "This is spam" from a mail client: a message moved into the
    // Maildir's `.Junk` folder is reported to its outbox and its sender
    // blocked (`report.rs`).
    if let Target::Maildir(md) = &poller.target {
        let (home, root, me, http, shutdown) = (home.clone(), md.root().to_path_buf(), poller.me.clone(), poller.http.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut watch = report::JunkWatch::new(&root);
            let mut pruned = None::<tokio::time::Instant>;
            loop {
                if pruned.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                    let h = home.clone();
                    let _ = tokio::task::spawn_blocking(move || report::prune_stubs(&h)).await;
                    pruned = Some(tokio::time::Instant::now());
                }
                // File reads: off the runtime.
                let h = home.clone();
                let (w, found) = match tokio::task::spawn_blocking(move || {
                    let f = watch.scan(&h);
                    (watch, f)
                })
                .await
                {
                    Ok(x) => x,
                    Err(_) => return,
                };
                watch = w;
                for found in found {
                    match report::report(&home, me.clone(), http.clone(), &found, Some("moved to Junk by the recipient".into()), false).await {
                        Ok(r) => tracing::info!(id = found.id, sender = %found.sender, outbox = r.outbox, "reported as spam (moved to Junk); sender blocked"),
                        // Tried again at the next start (`stubmail report` now).
                        Err(e) => tracing::warn!(id = found.id, "moved to Junk, not reported: {e:#}"),
                    }
                    watch.done(&found);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    // Cycles come every `udp_interval_secs` while UDP polls are on (a
    // datagram per outbox that hands out cookies); signed HTTP polls of the
    // others keep to `interval` (Poller::http_every).
    let every = if poller.udp.enabled { interval.min(config.poll.udp_interval_secs.max(1)) } else { interval };
    // What the node does, at info: every cycle that found something or
    // failed, the first, and otherwise a summary once an hour.
    let mut said = None::<tokio::time::Instant>;
    // Contacts whose mail is flowing: when to poll them again, and the step.
    let mut follow: std::collections::HashMap<stubmail::protocol::Fpr, (tokio::time::Instant, Duration)> = Default::default();
    'cycles: loop {
        match poller.poll_scheduled().await {
            Ok(r) => {
                let hourly = said.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
                if r.delivered > 0 || r.rejected > 0 || r.failed_outboxes > 0 || hourly {
                    tracing::info!(
                        outboxes = r.outboxes, http = r.http_polls, udp = r.udp_datagrams, delivered = r.delivered,
                        rejected = r.rejected, unreachable = r.failed_outboxes, "polled"
                    );
                    said = Some(tokio::time::Instant::now());
                }
            }
            Err(e) => tracing::error!("poll failed: {e:#}"),
        }
        // Jitter (±10%) so many pollers don't hit one outbox in step.
        let jitter = rand::random::<f64>() * 0.2 - 0.1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(every as f64 * (1.0 + jitter));
        loop {
            // The next follow-up poll, if any is due before the cycle.
            let next_follow = follow.values().map(|(due, _)| *due).min().filter(|d| *d < deadline).unwrap_or(deadline);
            let senders = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break 'cycles,
                _ = tokio::time::sleep_until(next_follow), if next_follow < deadline => {
                    let now = tokio::time::Instant::now();
                    follow.iter().filter(|(_, (due, _))| *due <= now).map(|(f, _)| f.clone()).collect::<Vec<_>>()
                }
                Some(first) = stub_rx.recv() => {
                    // Stubs that came in meanwhile share this poll.
                    let mut senders = vec![first];
                    while let Ok(f) = stub_rx.try_recv() {
                        senders.push(f);
                    }
                    senders
                }
            };
            let mut senders = senders;
            senders.sort();
            senders.dedup();
            let flowing = match poller.poll_senders(&senders).await {
                Ok(r) if r.delivered > 0 => {
                    tracing::info!(delivered = r.delivered, "polled after a notification stub");
                    r.incomplete == 0 && r.rejected == 0
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::error!("poll failed: {e:#}");
                    false
                }
            };
            // Mail is flowing: ask again soon rather than wait for a stub (an
            // outbox spaces the stubs it sends one address, and stubs are
            // spaced here too); after a poll that finds nothing new, less
            // and less soon, then not (a few cheap polls after a burst).
            // Only polls that delivered authentic mail start this, so no
            // one else can set it going.
            let now = tokio::time::Instant::now();
            for f in senders {
                let step = match follow.get(&f) {
                    _ if flowing => Some(FOLLOW_FIRST),
                    Some((_, step)) => Some(*step * 4).filter(|s| *s <= FOLLOW_LAST),
                    None => None,
                };
                match step {
                    Some(step) => {
                        follow.insert(f, (now + step, step));
                    }
                    None => {
                        follow.remove(&f);
                    }
                }
            }
            // Bounds the polls replayed stubs can cause; stubs that arrive
            // meanwhile are served by the next poll.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(stub_tx);
    if let Some(t) = pop3_task {
        let _ = t.await;
    }
    if let Some(t) = imap_task {
        let _ = t.await;
    }
    Ok(())
}

/// A quick poll at login, so the client sees fresh mail; never a long wait.
fn poll_at_login(poller: Arc<Poller>) -> pop3::LoginHook {
    Arc::new(move || {
        let poller = poller.clone();
        Box::pin(async move {
            match tokio::time::timeout(Duration::from_secs(10), poller.poll_once()).await {
                Ok(Err(e)) => tracing::warn!("poll at login failed: {e:#}"),
                Err(_) => tracing::warn!("poll at login took too long; serving what is here"),
                Ok(Ok(_)) => {}
            }
        })
    })
}

/// Start the IMAP server on `listener` for the Maildir and its folders.
fn start_imap(
    home: &stubmail::Home,
    config: &stubmail::Config,
    listener: tokio::net::TcpListener,
    poller: Arc<Poller>,
    throttle: Arc<stubmail::guard::LoginThrottle>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let p = &config.poll.imap;
    let password = config.poll.pop3.password.as_ref().context("IMAP needs poll.pop3.password (IMAP and POP3 share the account)")?.expose().to_string();
    let root = match &poller.target {
        Target::Maildir(md) => md.root().to_path_buf(),
        _ => anyhow::bail!("IMAP serves a Maildir; with deliver = \"mbox\" or \"mda\" set poll.imap.enabled = false"),
    };
    let tls = stubmail::tls::from_config(home, &p.tls_cert, &p.tls_key, "poll.imap")?;
    let listen = listener.local_addr()?;
    let require_tls = !listen.ip().is_loopback();
    if require_tls && tls.is_none() {
        anyhow::bail!("IMAP on {listen} (not loopback) needs poll.imap.tls_cert and tls_key for STARTTLS");
    }
    let ctx = Arc::new(imap::Ctx {
        root,
        username: config.pop3_username(),
        password,
        tls,
        require_tls,
        on_login: Some(poll_at_login(poller.clone())),
        throttle,
        delivered: Some(poller.delivered.subscribe()),
        max_message: config.poll.max_decrypted_size.max(1 << 20),
        max_append: p.max_append,
    });
    Ok(tokio::spawn(imap::run(listener, ctx, shutdown)))
}

/// Start the POP3 server on `listener` for the configured mailbox.
fn start_pop3(
    home: &stubmail::Home,
    config: &stubmail::Config,
    listener: tokio::net::TcpListener,
    poller: Arc<Poller>,
    throttle: Arc<stubmail::guard::LoginThrottle>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let p = &config.poll.pop3;
    let password = p.password.as_ref().context("POP3 needs poll.pop3.password")?.expose().to_string();
    let store = match &poller.target {
        Target::Maildir(md) => pop3::Store::Maildir(md.root().to_path_buf()),
        Target::Mbox(path) => pop3::Store::Mbox(path.clone()),
        Target::Mda(_) => anyhow::bail!("POP3 serves a Maildir or an mbox; with deliver = \"mda\" there is no mailbox to serve"),
        Target::Intake(_) => anyhow::bail!("a list robot has no mailbox to serve"),
    };
    let tls = stubmail::tls::from_config(home, &p.tls_cert, &p.tls_key, "poll.pop3")?;
    let listen = listener.local_addr()?;
    let require_tls = !listen.ip().is_loopback();
    if require_tls && tls.is_none() {
        anyhow::bail!("POP3 on {listen} (not loopback) needs poll.pop3.tls_cert and tls_key for STLS");
    }
    let on_login = poll_at_login(poller);
    let ctx = Arc::new(pop3::Ctx {
        store,
        username: config.pop3_username(),
        password,
        tls,
        require_tls,
        on_login: Some(on_login),
        throttle,
    });
    Ok(tokio::spawn(pop3::run(listener, ctx, shutdown)))
}

/// This machine's name, for trace headers (`poll.hostname` overrides it).
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        .unwrap_or_else(|| "localhost".into())
}
