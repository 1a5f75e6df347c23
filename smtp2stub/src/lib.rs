//! smtp2stub: the local SMTP server mail clients send through. Each accepted
//! message is fsync'd into the spool before `250`; a worker then signs and
//! encrypts it for its Stubmail recipients and stores it in the sender's own
//! outbox.

pub mod session;
pub use stubmail::spool;
pub mod worker;

use std::sync::Arc;

use stubmail::keyring::Keyring;
use stubmail::protocol::Fpr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use session::{Ctx, Policy, Reply};
use spool::Route;

/// The submission rules of one user.
pub struct Router {
    /// The user's own addresses, lower-cased: the only allowed MAIL FROM.
    pub own: Vec<String>,
    /// The user's own fingerprint: mail to an own address is a Stubmail
    /// message to oneself, stored in one's own outbox like any other, so
    /// every device of the identity fetches it.
    pub me: Option<Fpr>,
    pub keyring: Keyring,
    /// Look unknown recipients up by WKD (None: discovery off).
    pub discovery: Option<Discovery>,
    /// A relay is configured for everyone else.
    pub relay: bool,
    /// The user's own outbox, asked about its limits before `250`.
    pub outbox: Option<stubmail::client::OutboxClient>,
    /// Its last answer, reused for a moment (see `Limits`).
    pub limits: tokio::sync::Mutex<Option<Limits>>,
    /// Messages accepted that the outbox may not know of yet.
    pub unstored: Arc<Unstored>,
}

/// Messages accepted for stub recipients and not yet stored in the outbox
/// (or stored after its last answer about its limits was asked for): the
/// outbox's answer does not count them, so smtp2stub does. Kept in memory:
/// after a restart the queue's messages are counted by the outbox only as
/// they are stored (it refuses what is over its limits; the sender then
/// gets a failure notice).
/// Every operation is O(1) (amortised): the worker may be thousands of
/// messages behind.
#[derive(Default)]
pub struct Unstored(std::sync::Mutex<UnstoredInner>);

#[derive(Default)]
pub struct UnstoredInner {
    /// (bytes, messages, stub recipients) of each accepted message not yet
    /// stored.
    waiting: std::collections::HashMap<String, (u64, u64, Vec<Fpr>)>,
    /// Their sum.
    waiting_sum: (u64, u64),
    /// Stored ones, in the order they were stored, until an answer asked
    /// for after their storing counts them.
    recent: std::collections::VecDeque<(std::time::Instant, u64, u64, Vec<Fpr>)>,
    /// Their sum.
    recent_sum: (u64, u64),
    /// The recipients of all of these, each with the number of messages
    /// naming it: the answer's list of today's recipients may not have them.
    rcpts: std::collections::HashMap<Fpr, usize>,
}

impl UnstoredInner {
    fn drop_rcpts(&mut self, rs: &[Fpr]) {
        for r in rs {
            if let Some(n) = self.rcpts.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    self.rcpts.remove(r);
                }
            }
        }
    }
}

/// What an answer about the limits does not count.
pub struct Uncounted {
    pub bytes: u64,
    pub messages: u64,
    /// Recipients of messages it does not count.
    pub rcpts: std::collections::HashSet<Fpr>,
}

impl Unstored {
    fn add(&self, qid: &str, bytes: u64, messages: u64, rcpts: Vec<Fpr>) {
        let mut u = self.0.lock().unwrap();
        for r in &rcpts {
            *u.rcpts.entry(r.clone()).or_default() += 1;
        }
        if let Some((b, m, old)) = u.waiting.insert(qid.to_string(), (bytes, messages, rcpts)) {
            u.waiting_sum.0 -= b;
            u.waiting_sum.1 -= m;
            u.drop_rcpts(&old);
        }
        u.waiting_sum.0 += bytes;
        u.waiting_sum.1 += messages;
    }

    /// The worker is done with `qid`'s copies for the outbox (stored, given
    /// up or withdrawn).
    pub fn stored(&self, qid: &str) {
        let mut u = self.0.lock().unwrap();
        if let Some((b, m, rs)) = u.waiting.remove(qid) {
            u.waiting_sum.0 -= b;
            u.waiting_sum.1 -= m;
            u.recent.push_back((std::time::Instant::now(), b, m, rs));
            u.recent_sum.0 += b;
            u.recent_sum.1 += m;
        }
    }

    /// `qid` was not accepted after all.
    fn forget(&self, qid: &str) {
        let mut u = self.0.lock().unwrap();
        if let Some((b, m, rs)) = u.waiting.remove(qid) {
            u.waiting_sum.0 -= b;
            u.waiting_sum.1 -= m;
            u.drop_rcpts(&rs);
        }
    }

    /// What an answer asked for at `asked` does not count; what it counts
    /// is forgotten.
    fn since(&self, asked: std::time::Instant) -> Uncounted {
        let mut u = self.0.lock().unwrap();
        while u.recent.front().is_some_and(|r| r.0 <= asked) {
            let (_, b, m, rs) = u.recent.pop_front().expect("checked");
            u.recent_sum.0 -= b;
            u.recent_sum.1 -= m;
            u.drop_rcpts(&rs);
        }
        Uncounted {
            bytes: u.waiting_sum.0 + u.recent_sum.0,
            messages: u.waiting_sum.1 + u.recent_sum.1,
            rcpts: u.rcpts.keys().cloned().collect(),
        }
    }
}

/// How long an answer about the outbox's limits is reused. A signed round
/// trip per message was the largest cost of accepting mail; within this
/// window what was accepted since is counted here, and a refusal is always
/// confirmed by a fresh answer.
const LIMITS_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// The outbox's answer about its limits, and when it was asked for.
pub struct Limits {
    at: std::time::Instant,
    status: stubmail::protocol::AccountStatus,
}

impl Limits {
    /// Whether `copies` more stored messages of `size` bytes each for the
    /// stub recipients `rcpts` fit, besides what the answer does not count:
    /// the reply to give if not. Each recipient counts once a day and each
    /// stored copy once, as the outbox counts them.
    fn judge(&self, unc: &Uncounted, size: u64, copies: u64, rcpts: &[&Fpr]) -> Result<(), Reply> {
        let st = &self.status;
        let (bytes, messages) = (st.bytes + unc.bytes, st.messages + unc.messages);
        if bytes + size * copies > st.max_bytes || messages + copies > st.max_messages {
            return Err(Reply::new(
                552,
                format!(
                    "5.2.2 Your outbox is over its quota ({bytes} of {} bytes, {messages} of {} messages); \
                     unsend old messages or wait until recipients fetch them",
                    st.max_bytes, st.max_messages
                ),
            ));
        }
        // An outbox that does not list today's recipients: every recipient
        // not known to be counted is counted again (the safe side).
        let counted: std::collections::HashSet<&Fpr> = st.today.iter().collect();
        let pending = unc.rcpts.iter().filter(|r| !counted.contains(r)).count() as u64;
        let new = rcpts.iter().filter(|r| !counted.contains(**r) && !unc.rcpts.contains(**r)).count() as u64;
        if st.recipients_today + pending + new > st.max_recipients_per_day {
            return Err(Reply::new(
                452,
                format!("4.5.3 Your outbox's limit of {} recipients a day is reached; try again tomorrow", st.max_recipients_per_day),
            ));
        }
        Ok(())
    }
}

/// Key discovery settings.
pub struct Discovery {
    pub http: reqwest::Client,
    pub timeout: std::time::Duration,
    /// Explicit WKD servers per domain.
    pub servers: std::collections::BTreeMap<String, String>,
}

impl Router {
    /// The keyring's usable certificates for `addr`; a keyring that cannot
    /// be read is a temporary error.
    fn usable_certs(&self, addr: &str) -> Result<Vec<stubmail::openpgp::Cert>, Reply> {
        self.keyring.by_email(addr).map_err(|e| {
            tracing::error!("keyring: {e}");
            Reply::new(451, "4.3.0 Cannot read the keyring; try again later")
        })
    }

    /// The one usable certificate with an outbox for `addr`. Never a pick
    /// between two by age: if two contacts claim the address (a keyring
    /// from before "one address, one contact"), the user must say which.
    fn stub_cert(&self, addr: &str) -> Result<Option<Fpr>, Reply> {
        let certs = self.usable_certs(addr)?;
        let stub: Vec<Fpr> = certs.iter().filter(|c| stubmail::pgp::outbox_of(c).is_some()).map(stubmail::pgp::fpr_of).collect();
        match stub.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            many => Err(Reply::new(
                550,
                format!(
                    "5.7.0 <{addr}> is claimed by several contacts ({}); keep one: `stubmail keys remove FINGERPRINT`",
                    many.iter().map(Fpr::as_str).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

impl Router {
    /// The one usable certificate without an outbox for `addr` (an
    /// ordinary OpenPGP user the user imported), if any.
    fn pgp_cert(&self, addr: &str) -> Result<Option<Fpr>, Reply> {
        let certs = self.usable_certs(addr)?;
        // Keys found by WKD are not vouched for; the relay path asks for
        // one the user imported.
        Ok(certs
            .iter()
            .filter(|c| stubmail::pgp::outbox_of(c).is_none())
            .map(stubmail::pgp::fpr_of)
            .find(|f| !self.keyring.is_discovered(f)))
    }
}

impl Policy for Router {
    fn sender(&self, addr: &str) -> Result<(), Reply> {
        if self.own.contains(&addr.to_ascii_lowercase()) {
            Ok(())
        } else {
            Err(Reply::new(
                550,
                format!("5.7.1 <{addr}> is not your address; this server only sends as {} (no relaying)", self.own.join(", ")),
            ))
        }
    }

    async fn recipient(&self, addr: &str) -> Result<Route, Reply> {
        if let Some(me) = &self.me {
            if self.own.contains(&addr.to_ascii_lowercase()) {
                return Ok(Route::Stub { fpr: me.clone() });
            }
        }
        if let Some(fpr) = self.stub_cert(addr)? {
            return Ok(Route::Stub { fpr });
        }
        if let Some(d) = &self.discovery {
            let base = stubmail::wkd::split(addr).and_then(|(_, dom)| d.servers.get(&dom).cloned());
            let found = stubmail::wkd::lookup(&d.http, addr, base.as_deref(), d.timeout).await;
            let with_outbox: Vec<_> = found.into_iter().filter(|c| stubmail::pgp::outbox_of(c).is_some()).collect();
            if !with_outbox.is_empty() {
                match self.keyring.import_discovered(with_outbox) {
                    Ok(certs) => tracing::info!(addr, certs = certs.len(), "discovered a Stubmail key by WKD"),
                    Err(e) => tracing::warn!(addr, "cannot import a discovered key: {e}"),
                }
                if let Some(fpr) = self.stub_cert(addr)? {
                    return Ok(Route::Stub { fpr });
                }
            }
        }
        if self.relay {
            // A GnuPG user in the address book (no outbox): encrypted mail.
            if let Some(fpr) = self.pgp_cert(addr)? {
                return Ok(Route::Pgp { fpr });
            }
            return Ok(Route::Relay);
        }
        Err(Reply::new(
            550,
            format!(
                "5.1.1 <{addr}>: no Stubmail key for this address and no SMTP relay configured; \
                 import their key with `stubmail keys import`, or configure [relay]"
            ),
        ))
    }

    fn not_accepted(&self, qid: &str) {
        self.unstored.forget(qid);
    }

    async fn check_outbox(&self, qid: &str, size: u64, copies: u64, stub_rcpts: &[&Fpr]) -> Result<(), Reply> {
        let Some(outbox) = &self.outbox else { return Ok(()) };
        // Held across the question, so sessions ending together ask once.
        let mut cached = self.limits.lock().await;
        let mut fresh = false;
        loop {
            if !fresh && cached.as_ref().is_none_or(|l| l.at.elapsed() > LIMITS_FRESH) {
                let asked = std::time::Instant::now();
                match tokio::time::timeout(std::time::Duration::from_secs(5), outbox.account()).await {
                    Ok(Ok(status)) => *cached = Some(Limits { at: asked, status }),
                    // Unreachable or slow: accept into the spool; uploads retry.
                    Ok(Err(e)) => {
                        tracing::debug!("cannot ask the outbox about its limits: {e}");
                        return Ok(());
                    }
                    Err(_) => return Ok(()),
                }
                fresh = true;
            }
            let limits = cached.as_ref().expect("set above");
            match limits.judge(&self.unstored.since(limits.at), size, copies, stub_rcpts) {
                Ok(()) => {
                    self.unstored.add(qid, size * copies, copies, stub_rcpts.iter().map(|r| (*r).clone()).collect());
                    return Ok(());
                }
                // Refused on a reused answer: ask again before saying no
                // (messages may have been fetched or unsent meanwhile).
                Err(_) if !fresh => *cached = None,
                Err(r) => return Err(r),
            }
        }
    }
}

/// Accept SMTP sessions until `shutdown`; then let open sessions finish.
pub async fn run<P: Policy + 'static>(listener: TcpListener, ctx: Arc<Ctx<P>>, shutdown: CancellationToken) -> std::io::Result<()> {
    const LIMITS: stubmail::server::ConnLimits =
        stubmail::server::ConnLimits::new(b"421 4.7.0 Too many connections from your address; try again later\r\n");
    stubmail::server::accept_loop(listener, shutdown, LIMITS, |stream, peer| {
        let ctx = ctx.clone();
        async move {
            if let Err(e) = session::serve(stream, peer.to_string(), &ctx).await {
                tracing::debug!(%peer, "session ended: {e}");
            }
        }
    })
    .await;
    Ok(())
}

/// Whether a listener on `listen` requires AUTH and allows it without TLS;
/// an error naming the fix when the config cannot serve it (no password,
/// or no TLS where AUTH needs it). Checked before anything says
/// "listening".
pub fn auth_policy(home: &stubmail::Home, config: &stubmail::Config, listen: std::net::SocketAddr, tls: bool) -> anyhow::Result<(bool, bool)> {
    use stubmail::config::AuthPolicy;
    let loopback = listen.ip().is_loopback();
    let (auth_required, auth_in_clear) = match config.smtp.auth {
        AuthPolicy::Always => (true, loopback),
        AuthPolicy::Tls => (true, false),
        AuthPolicy::LoopbackOpen => (!loopback, false),
    };
    if auth_required && config.smtp.password.is_none() {
        anyhow::bail!(
            "{listen} requires AUTH and smtp.password is not set in {}: run `stubmail identity show` (it makes one)",
            home.config_file().display()
        );
    }
    if auth_required && !auth_in_clear && !tls {
        anyhow::bail!(
            "{listen} accepts AUTH only after STARTTLS (it is not loopback, or smtp.auth = \"tls\"): \
             set smtp.tls_cert and smtp.tls_key in {}",
            home.config_file().display()
        );
    }
    Ok((auth_required, auth_in_clear))
}

/// Run smtp2stub for one user's home on `listener` until `shutdown`:
/// the SMTP sessions and the upload/relay worker.
pub async fn serve_home(
    home: &stubmail::Home,
    config: &stubmail::Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use stubmail::client;
    let me = Arc::new(home.load_identity()?);
    let listen = listener.local_addr()?;
    let tls = stubmail::tls::from_config(home, &config.smtp.tls_cert, &config.smtp.tls_key, "smtp")?;
    let credentials = config.smtp.password.as_ref().map(|p| session::Credentials {
        username: config.smtp_username(),
        password: p.expose().to_string(),
    });
    let (auth_required, auth_in_clear) = auth_policy(home, config, listen, tls.is_some())?;
    let spool = spool::Spool::open(&home.spool_dir()).context("opening the spool")?;
    // What a crash left of messages never acknowledged (we hold the role
    // lock: no other smtp2stub works on this spool).
    match spool.sweep() {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed what an interrupted run left of messages it never acknowledged"),
        Err(e) => tracing::warn!("cannot sweep the spool: {e}"),
    }
    let keyring = home.keyring();
    let outbox = client::OutboxClient::new(client::http_client()?, &config.identity.outbox, me.clone())?;
    let http = client::http_client()?;
    let discovery = config.discovery.wkd.then(|| Discovery {
        http,
        timeout: std::time::Duration::from_secs(config.discovery.timeout_secs.max(1)),
        servers: config.discovery.wkd_servers.clone(),
    });
    let kick = Arc::new(tokio::sync::Notify::new());
    let unstored = Arc::new(Unstored::default());
    let ctx = Arc::new(Ctx {
        config: session::SessionConfig {
            max_size: config.smtp.max_message_size,
            tls,
            credentials,
            auth_required,
            auth_in_clear,
            min_free_bytes: config.smtp.min_free_bytes,
            ..session::SessionConfig::default()
        },
        policy: Router {
            own: config.own_addresses(),
            me: Some(me.fpr()),
            keyring: keyring.clone(),
            discovery,
            relay: config.relay.is_some(),
            outbox: Some(outbox.clone()),
            limits: Default::default(),
            unstored: unstored.clone(),
        },
        spool: spool.clone(),
        accepted: kick.clone(),
    });
    let notices = stubmail::maildir::Maildir::open(&home.path(&config.poll.maildir)).ok();
    let worker = worker::Worker { spool, keyring, me, outbox, relay: config.relay.clone(), notices, unstored, stubs: Default::default(), others: None };
    let w = tokio::spawn(worker.run(kick, shutdown.clone()));
    run(listener, ctx, shutdown).await?;
    let _ = w.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Unstored;
    use std::time::{Duration, Instant};

    fn f(c: char) -> stubmail::protocol::Fpr {
        stubmail::protocol::Fpr::parse(&c.to_string().repeat(40)).unwrap()
    }

    /// (bytes, messages, recipients) an answer does not count.
    fn unc(u: &Unstored, asked: Instant) -> (u64, u64, Vec<char>) {
        let x = u.since(asked);
        let mut r: Vec<char> = x.rcpts.iter().map(|f| f.as_str().chars().next().unwrap()).collect();
        r.sort();
        (x.bytes, x.messages, r)
    }

    /// What an answer about the outbox's limits does not count: messages
    /// waiting, and those stored after it was asked for, with their
    /// recipients (each once, however many messages name it).
    #[test]
    fn unstored_counts_what_an_answer_cannot_know() {
        let u = Unstored::default();
        u.add("a", 100, 1, vec![f('A')]);
        u.add("b", 200, 2, vec![f('A'), f('B')]);
        u.add("c", 400, 1, vec![f('C')]);
        let before = Instant::now();
        assert_eq!(unc(&u, before), (700, 4, vec!['A', 'B', 'C']));
        u.stored("a");
        u.forget("c");
        // An answer asked for before "a" was stored does not count it.
        assert_eq!(unc(&u, before), (300, 3, vec!['A', 'B']));
        std::thread::sleep(Duration::from_millis(2));
        // One asked for after does; "b" still names A.
        assert_eq!(unc(&u, Instant::now()), (200, 2, vec!['A', 'B']));
        u.stored("b");
        u.stored("b");
        u.stored("unknown");
        assert_eq!(unc(&u, Instant::now() + Duration::from_secs(1)), (0, 0, vec![]));
    }
}
