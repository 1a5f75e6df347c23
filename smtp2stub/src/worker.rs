//! Moves accepted messages from the spool to the sender's outbox: plans the
//! copies (one for the visible recipients, one per Bcc recipient), signs and
//! encrypts each durably, uploads with retries and backoff.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use stubmail::client::OutboxClient;
use stubmail::keyring::Keyring;
use stubmail::Identity;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use stubmail::config::RelayConfig;
use stubmail::maildir::Maildir;

use crate::spool::{Envelope, Job, JobKind, JobState, Rcpt, Route, Spool};

/// Messages moved to the outbox at once.
const CONCURRENCY: usize = 8;

/// Largest header block read into memory when planning a message.
pub(crate) const MAX_HEADER: usize = 1024 * 1024;

pub struct Worker {
    pub spool: Spool,
    pub keyring: Keyring,
    pub me: Arc<Identity>,
    pub outbox: OutboxClient,
    /// The smarthost for recipients without a Stubmail key.
    pub relay: Option<RelayConfig>,
    /// The user's own mailbox, where failure notices go.
    pub notices: Option<Maildir>,
    /// Told when a message's copies are in the outbox (its limits count
    /// them from then on).
    pub unstored: Arc<crate::Unstored>,
    /// Stubs waiting to be handed to the outbox (see [`Worker::notify`]).
    pub stubs: StubBatcher,
    /// Certificates of recipients who are no contacts: a list robot
    /// writes to those asking to join (`list/strangers`).
    pub others: Option<Keyring>,
}

/// Stubs of messages uploaded at about the same time, handed to the outbox
/// in one signed request: whoever gets to send takes everything waiting
/// (group commit, as the spool does), so an idle worker sends at once and
/// a busy one sends one request for many messages.
#[derive(Default)]
pub struct StubBatcher {
    waiting: std::sync::Mutex<Vec<stubmail::protocol::NotifyMessage>>,
    sending: tokio::sync::Mutex<()>,
}

/// Outcome of one delivery attempt.
enum Attempt {
    Done(JobState),
    Retry(String),
    Fail(String),
}

/// Retry delay after `attempts` failures: 5 s doubling to at most an hour.
pub fn backoff(attempts: u32) -> i64 {
    (5i64 << attempts.min(10)).min(3600)
}

impl Worker {
    /// Work the queue until shutdown; wake on `kick` or every few seconds.
    pub async fn run(self, kick: Arc<Notify>, shutdown: CancellationToken) {
        // A (re)started smtp2stub tries its whole queue at once: whatever
        // failed before may work now (the outbox is back, the user fixed
        // the config), and the user restarted to see it go.
        let mut everything = true;
        loop {
            let pass = self.pass(everything).await;
            everything = false;
            if let Err(e) = pass {
                tracing::error!("queue pass failed: {e:#}");
            }
            tokio::select! {
                _ = kick.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass over the queue: the jobs that are due, or all of them.
    pub async fn pass(&self, everything: bool) -> anyhow::Result<()> {
        let spool = self.spool.clone();
        let queued = tokio::task::spawn_blocking(move || spool.queued()).await??;
        // Several messages at once: each one waits mostly on the outbox
        // (a signed upload), so one at a time left both ends idle.
        use futures_util::StreamExt;
        futures_util::stream::iter(queued)
            .for_each_concurrent(CONCURRENCY, |env| async move {
                let qid = env.qid.clone();
                if let Err(e) = self.process(env, everything).await {
                    tracing::error!(qid, "{e:#}");
                }
            })
            .await;
        Ok(())
    }

    async fn process(&self, env: Envelope, everything: bool) -> anyhow::Result<()> {
        // Held for the whole envelope; read anew under the lock, so what
        // `stubmail unsend` withdrew meanwhile is seen (and never sent).
        let spool = self.spool.clone();
        let qid = env.qid.clone();
        let withdrawn = env.qid.clone();
        let (_lock, env) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let lock = spool.lock(&qid)?;
            Ok((lock, spool.load(&qid)?))
        })
        .await??;
        let Some(mut env) = env else {
            self.unstored.stored(&withdrawn);
            return Ok(());
        };
        if env.jobs.is_empty() {
            // Saved with the first job's progress (a stub copy's id is saved
            // before its upload): a plan lost in a crash is made again, as
            // nothing of it has left yet.
            env.jobs = self.plan(&env)?;
            env.subject = spool_header(&self.spool.msg_path(&env.qid)).ok().and_then(|h| subject_of(&h));
        }
        let now = stubmail::time::unix_now();
        for i in 0..env.jobs.len() {
            let j = &env.jobs[i];
            // A retry time further ahead than the job's own backoff was set
            // by a clock that has since gone back (it was wrong, or fixed):
            // retry now rather than wait for the wrong clock's future.
            let due = everything || j.next_try <= now || j.next_try > now + backoff(j.attempts);
            if j.state != JobState::Queued || !due {
                continue;
            }
            let attempt = match env.jobs[i].kind {
                JobKind::Stub => self.stub(&mut env, i).await?,
                JobKind::Relay | JobKind::Pgp => self.relay(&env, i).await,
            };
            let job = &mut env.jobs[i];
            match attempt {
                Attempt::Done(state) => {
                    tracing::info!(qid = env.qid, id = job.id, recipients = job.rcpts.len(), ?state, "delivered to next hop");
                    job.state = state;
                    job.last_error = None;
                }
                Attempt::Retry(e) => {
                    // 5 s after the first failure, then doubling (README).
                    job.next_try = now + backoff(job.attempts);
                    job.attempts += 1;
                    tracing::warn!(qid = env.qid, attempts = job.attempts, "will retry: {e}");
                    job.last_error = Some(e);
                }
                Attempt::Fail(e) => {
                    tracing::error!(qid = env.qid, "gave up: {e}");
                    job.state = JobState::Failed;
                    job.last_error = Some(e);
                    let job = job.clone();
                    if let Err(e) = self.failure_notice(&env, &job) {
                        tracing::error!(qid = env.qid, "cannot write the failure notice: {e:#}");
                    }
                }
            }
            // When nothing is left to do, `finish` records the final state.
            if env.jobs.iter().any(|j| j.state == JobState::Queued) {
                self.spool.save(&env)?;
            }
        }
        if !env.jobs.iter().any(|j| j.kind == JobKind::Stub && j.state == JobState::Queued) {
            self.unstored.stored(&env.qid);
        }
        if env.jobs.iter().all(|j| j.state != JobState::Queued) {
            self.spool.finish(&env)?;
        }
        Ok(())
    }

    /// Encrypt (once, durably) and upload one stub copy.
    async fn stub(&self, env: &mut Envelope, i: usize) -> anyhow::Result<Attempt> {
        if env.jobs[i].id.is_none() {
            match self.encrypt(env, &env.jobs[i]).await {
                Ok(id) => env.jobs[i].id = Some(id),
                // A local I/O failure (disk full) passes; try again later.
                Err(e) if e.chain().any(|c| c.downcast_ref::<io::Error>().is_some()) => {
                    return Ok(Attempt::Retry(format!("cannot write the encrypted copy: {e:#}")));
                }
                // Permanent: the key is gone or unusable.
                Err(e) => return Ok(Attempt::Fail(format!("cannot encrypt: {e:#}"))),
            }
            // The id is durable before the upload: a retry after a crash
            // uploads these same bytes, so the outbox stores one copy.
            self.spool.save(env)?;
        }
        let job = &env.jobs[i];
        let id = job.id.clone().unwrap_or_default();
        // Once each: two addresses of one contact are one recipient.
        let mut fprs: Vec<_> = Vec::with_capacity(job.rcpts.len());
        let mut seen = std::collections::HashSet::new();
        for r in &job.rcpts {
            if let Route::Stub { fpr } = &r.route
                && seen.insert(fpr)
            {
                fprs.push(fpr.clone());
            }
        }
        // One upload names at most a thousand recipients; the same bytes
        // uploaded again add the next thousand to the one stored copy (a
        // list's account may be allowed that many). Each upload of them is
        // idempotent, so a retry sends them all again.
        let mut size = 0;
        for chunk in fprs.chunks(stubmail::protocol::MAX_RECIPIENTS) {
            match self.outbox.upload(&id, chunk, &self.spool.out_path(&id)).await {
                Ok(up) => size = up.size,
                Err(e) if e.is_temporary() => return Ok(Attempt::Retry(e.to_string())),
                Err(e) => return Ok(Attempt::Fail(format!("the outbox refused the message: {e}"))),
            }
        }
        self.notify(&id, size, &fprs).await;
        Ok(Attempt::Done(JobState::Uploaded))
    }

    /// Hand the outbox a signed notification stub for each recipient whose
    /// certificate binds a notify endpoint. Best effort: stubs only make
    /// delivery faster; the recipients' polls find the mail regardless.
    async fn notify(&self, id: &str, size: u64, recipients: &[stubmail::protocol::Fpr]) {
        use base64::Engine as _;
        use stubmail::protocol::{udp::Stub, NotifyRequest, NotifyStub};
        let made = stubmail::time::unix_now();
        let mut req = NotifyRequest::default();
        for r in recipients {
            let Ok(Some(cert)) = self.cert_of(r) else { continue };
            let endpoints = stubmail::pgp::notify_all(&cert);
            if endpoints.is_empty() {
                continue;
            }
            let stub = Stub { sender: self.me.fpr(), recipient: r.clone(), id: id.to_string(), size, made, outbox: self.outbox.base().to_string() };
            let made = (|| -> anyhow::Result<(NotifyStub, Vec<u8>)> {
                let sig = self.me.sign_detached(&stub.signed_part()?)?;
                let datagram = stub.encode(&sig)?;
                Ok((NotifyStub { cert: stubmail::pgp::armored(&cert)?, stub: base64::engine::general_purpose::STANDARD.encode(&datagram) }, datagram))
            })();
            match made {
                Ok((n, datagram)) => {
                    // A list has never polled a would-be member's outbox,
                    // which therefore sends it no stubs: the request to
                    // join (or a non-member's post) is announced to the
                    // list's robot from here (docs/PROTOCOL.md §10).
                    // It carries our certificate, cut short: the robot
                    // acts on it unasked, so it must be able to tell our
                    // stub from one forged in our name (PROTOCOL §10.3).
                    if stubmail::pgp::list_of(&cert).is_some() {
                        let carried = stubmail::pgp::minimal(&self.me.cert())
                            .and_then(|c| stubmail::pgp::binary(&c))
                            .map_err(anyhow::Error::from)
                            .and_then(|c| Ok(stubmail::protocol::udp::encode_with_cert(&datagram, &c)?));
                        match carried {
                            Ok(d) => {
                                tokio::spawn(direct_stubs(endpoints, d));
                            }
                            Err(e) => tracing::warn!(
                                id,
                                list = %r,
                                "no stub to the list's robot: our certificate does not fit a datagram ({e:#}); \
                                 the list's owner can add us (`stubmail list add`)"
                            ),
                        }
                    }
                    req.stubs.push(n);
                }
                Err(e) => tracing::warn!(id, recipient = %r, "no stub: {e:#}"),
            }
        }
        if req.stubs.is_empty() {
            return;
        }
        self.stubs.waiting.lock().expect("not poisoned").push(stubmail::protocol::NotifyMessage { id: id.to_string(), stubs: req.stubs });
        let _turn = self.stubs.sending.lock().await;
        let waiting = std::mem::take(&mut *self.stubs.waiting.lock().expect("not poisoned"));
        // Empty: another task sent these stubs with its own while this one waited.
        for batch in notify_batches(waiting) {
            let n = batch.messages.len();
            match self.outbox.notify_many(&batch).await {
                Ok(r) => tracing::debug!(messages = n, accepted = r.accepted, "stubs handed to the outbox"),
                Err(e) => tracing::info!(messages = n, "the outbox took no stubs (recipients will find the mail by polling): {e}"),
            }
        }
    }

    /// Send a relay job over ordinary SMTP through the configured relay.
    async fn relay(&self, env: &Envelope, i: usize) -> Attempt {
        let job = &env.jobs[i];
        let Some(cfg) = &self.relay else {
            return Attempt::Fail("no SMTP relay is configured any more".into());
        };
        use lettre::AsyncTransport;
        let transport = match stubmail::relay::transport(cfg) {
            Ok(t) => t,
            Err(e) => return Attempt::Fail(e),
        };
        let from = env.from.parse().map_err(|e| format!("sender {}: {e}", env.from));
        let to: Result<Vec<lettre::Address>, String> =
            job.rcpts.iter().map(|r| r.addr.parse().map_err(|e| format!("recipient {}: {e}", r.addr))).collect();
        let envelope = match (from, to) {
            (Ok(f), Ok(t)) => lettre::address::Envelope::new(Some(f), t),
            (Err(e), _) | (_, Err(e)) => return Attempt::Fail(e),
        };
        let envelope = match envelope {
            Ok(e) => e,
            Err(e) => return Attempt::Fail(e.to_string()),
        };
        // Off the async threads: it may encrypt a large message.
        let (spool, keyring, me, env2) = (self.spool.clone(), self.keyring.clone(), self.me.clone(), env.clone());
        let made = tokio::task::spawn_blocking(move || relay_copy(&spool, &keyring, &me, &env2, i)).await;
        let message = match made.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(m) => m,
            // A recipient key that cannot be used (expired meanwhile) is
            // permanent; the disk is not.
            Err(e) if e.chain().any(|c| c.downcast_ref::<io::Error>().is_some()) => {
                return Attempt::Retry(format!("writing the relayed copy: {e:#}"));
            }
            Err(e) => return Attempt::Fail(format!("cannot encrypt for the relay: {e:#}")),
        };
        match transport.send_raw(&envelope, message.as_ref()).await {
            Ok(_) => Attempt::Done(JobState::Relayed),
            Err(e) if e.is_permanent() => Attempt::Fail(format!("the relay refused the message: {e}")),
            Err(e) => Attempt::Retry(format!("relay {}:{}: {e}", cfg.host, cfg.port)),
        }
    }

}

/// The message as job `n`'s relay gets it, written once into the spool
/// (`out/<qid>.<n>.eml`: a retry sends the same bytes) and mapped into
/// memory, so memory does not grow with the message: the submitted header
/// (no Bcc:, with Date: and Message-ID:) with the sender's key in an
/// `Autocrypt:` header, and for a `Pgp` job the whole message signed and
/// encrypted to the recipient as PGP/MIME (RFC 3156). Blocking: run it off
/// the async threads.
/// Requests of at most [`stubmail::protocol::MAX_NOTIFY_BATCH`] messages,
/// [`stubmail::protocol::MAX_RECIPIENTS`] stubs and [`NOTIFY_BATCH_BYTES`]
/// of stubs and certificates each, in order. (A single message over the
/// byte bound goes alone, as it would without batches.)
fn notify_batches(messages: Vec<stubmail::protocol::NotifyMessage>) -> Vec<stubmail::protocol::NotifyBatchRequest> {
    use stubmail::protocol::{NotifyBatchRequest, MAX_NOTIFY_BATCH, MAX_RECIPIENTS};
    let weight = |m: &stubmail::protocol::NotifyMessage| m.stubs.iter().map(|s| s.cert.len() + s.stub.len() + 32).sum::<usize>() + 96;
    let mut out: Vec<NotifyBatchRequest> = Vec::new();
    let (mut stubs, mut bytes) = (0, 0);
    for m in messages {
        let w = weight(&m);
        let full = out.last().is_none_or(|b| {
            b.messages.len() >= MAX_NOTIFY_BATCH || stubs + m.stubs.len() > MAX_RECIPIENTS || bytes + w > NOTIFY_BATCH_BYTES
        });
        if full {
            out.push(NotifyBatchRequest::default());
            (stubs, bytes) = (0, 0);
        }
        stubs += m.stubs.len();
        bytes += w;
        out.last_mut().expect("pushed").messages.push(m);
    }
    out
}

/// Bytes of stubs in one notify request: well inside the outbox's 1 MiB
/// limit on a JSON body.
const NOTIFY_BATCH_BYTES: usize = 512 * 1024;

fn relay_copy(spool: &Spool, keyring: &Keyring, me: &Identity, env: &Envelope, n: usize) -> anyhow::Result<memmap2::Mmap> {
    let job = &env.jobs[n];
    let path = spool.relay_path(&env.qid, n);
    if !path.exists() {
        let mut src = io::BufReader::new(File::open(spool.msg_path(&env.qid))?);
        let header = stubmail::mail::read_header(&mut src, MAX_HEADER)?;
        let mut header = submitted_header(&header, env);
        // Autocrypt speaks for the From: address only (clients ignore it
        // otherwise, and another address of the key stays unnamed).
        let from = stubmail::mail::addresses(&header, &["From"]).into_iter().next();
        if let Some(ac) = from.and_then(|f| stubmail::pgp::autocrypt_header(&me.cert(), &f)) {
            let end = header.len() - if header.ends_with(b"\r\n\r\n") { 2 } else { 0 };
            header.splice(end..end, ac.bytes());
        }
        let tmp = spool.out_dir().join(stubmail::fsutil::unique_name(".relay."));
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        let written = match job.kind {
            JobKind::Pgp => {
                let certs = job
                    .rcpts
                    .iter()
                    .filter_map(|r| match &r.route {
                        Route::Pgp { fpr } => Some(fpr),
                        _ => None,
                    })
                    .map(|f| keyring.get(f)?.ok_or_else(|| anyhow::anyhow!("the key {f} is no longer in the keyring")))
                    .collect::<anyhow::Result<Vec<_>>>();
                certs.and_then(|certs| pgp_mime(me, &certs, &header, &mut src, &mut out))
            }
            _ => {
                out.write_all(&header)?;
                io::copy(&mut src, &mut out)?;
                Ok(())
            }
        };
        if let Err(e) = written.and_then(|()| Ok(out.into_inner().map_err(|e| e.into_error())?.sync_all()?)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path)?;
        stubmail::fsutil::fsync_dir(&spool.out_dir())?;
    }
    let f = File::open(&path)?;
    // SAFETY: the file is complete (renamed into place) and never
    // modified afterwards.
    Ok(unsafe { memmap2::Mmap::map(&f)? })
}

impl Worker {
    /// The one place a bounce still makes sense: tell the user, in their
    /// own mailbox, that a message could not be delivered.
    fn failure_notice(&self, env: &Envelope, job: &Job) -> anyhow::Result<()> {
        let Some(md) = &self.notices else { return Ok(()) };
        let header = spool_header(&self.spool.msg_path(&env.qid)).unwrap_or_default();
        let subject = subject_of(&header).unwrap_or_default();
        let rcpts: Vec<&str> = job.rcpts.iter().map(|r| r.addr.as_str()).collect();
        let now = stubmail::time::unix_now();
        let text = format!(
            "From: Mail Delivery System <MAILER-DAEMON@localhost>\n\
             To: <{from}>\n\
             Subject: Undelivered Mail: {subject}\n\
             Date: {date}\n\
             Message-ID: <{qid}.{now}.failure@smtp2stub>\n\
             Auto-Submitted: auto-replied\n\
             MIME-Version: 1.0\n\
             Content-Type: text/plain; charset=utf-8\n\n\
             Your message could not be delivered to: {rcpts}\n\n\
             Reason: {reason}\n\
             Queue id: {qid}\n\n\
             The headers of your message follow.\n\n{headers}",
            from = env.from,
            date = stubmail::time::rfc5322(now),
            qid = env.qid,
            rcpts = rcpts.join(", "),
            reason = job.last_error.as_deref().unwrap_or("unknown"),
            headers = String::from_utf8_lossy(&header).replace("\r\n", "\n"),
        );
        let (name, mut f) = md.create_tmp()?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        md.commit(&name)?;
        Ok(())
    }

    /// Visible recipients (in To/Cc) share one copy; every other (Bcc)
    /// recipient gets a copy of their own, so no recipient learns of a Bcc
    /// from the headers or from the encryption layer's recipient list.
    fn plan(&self, env: &Envelope) -> anyhow::Result<Vec<Job>> {
        let header = spool_header(&self.spool.msg_path(&env.qid))?;
        let visible = stubmail::mail::addresses(&header, &["To", "Cc"]);
        let (stub, others): (Vec<_>, Vec<_>) = env.rcpts.iter().cloned().partition(|r| matches!(r.route, Route::Stub { .. }));
        let (pgp, relay): (Vec<_>, Vec<_>) = others.into_iter().partition(|r| matches!(r.route, Route::Pgp { .. }));
        let job = |kind, rcpts| Job { kind, rcpts, id: None, state: JobState::Queued, attempts: 0, next_try: 0, last_error: None };
        let mut jobs = Vec::new();
        // A list's post: one copy for all its members, stored once however
        // many members there are (uploaded again for each further thousand,
        // see `stub`).
        let (shown, hidden) = if env.list {
            if !stub.is_empty() {
                jobs.push(job(JobKind::Stub, stub));
            }
            (vec![], vec![])
        } else {
            split_shown(&visible, stub)
        };
        if !shown.is_empty() {
            jobs.push(job(JobKind::Stub, shown));
        }
        jobs.extend(hidden.into_iter().map(|r| job(JobKind::Stub, vec![r])));
        // The relay's own SMTP envelope keeps Bcc recipients invisible.
        if !relay.is_empty() {
            jobs.push(job(JobKind::Relay, relay));
        }
        // Each OpenPGP recipient gets a copy encrypted to them alone (the
        // encryption layer names its recipients; a Bcc must stay hidden).
        jobs.extend(pgp.into_iter().map(|r| job(JobKind::Pgp, vec![r])));
        Ok(jobs)
    }

    /// A recipient's certificate: a contact's from the keyring, or the
    /// user's own (mail to oneself).
    fn cert_of(&self, fpr: &stubmail::protocol::Fpr) -> anyhow::Result<Option<stubmail::openpgp::Cert>> {
        if *fpr == self.me.fpr() {
            return Ok(Some(self.me.cert()));
        }
        match (self.keyring.get(fpr)?, &self.others) {
            (None, Some(others)) => Ok(others.get(fpr)?),
            (c, _) => Ok(c),
        }
    }

    /// Sign and encrypt one copy into `out/<id>.pgp`, durably; return its id.
    async fn encrypt(&self, env: &Envelope, job: &Job) -> anyhow::Result<String> {
        let mut certs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in &job.rcpts {
            let Route::Stub { fpr } = &r.route else { continue };
            if !seen.insert(fpr.clone()) {
                continue;
            }
            let c = self
                .cert_of(fpr)?
                .ok_or_else(|| anyhow::anyhow!("the key of {} ({fpr}) is no longer in the keyring", r.addr))?;
            certs.push(c);
        }
        let me = self.me.clone();
        let env = env.clone();
        let src = self.spool.msg_path(&env.qid);
        let out_dir = self.spool.out_dir();
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut f = io::BufReader::new(File::open(&src)?);
            let header = stubmail::mail::read_header(&mut f, MAX_HEADER)?;
            let header = submitted_header(&header, &env);
            let mut plain = io::Cursor::new(header).chain(f);
            let tmp = out_dir.join(stubmail::fsutil::unique_name(".enc."));
            let mut w = HashWriter { inner: File::create(&tmp)?, hasher: Sha256::new() };
            let r = stubmail::pgp::sign_encrypt(&me, &certs, &mut plain, &mut w);
            if let Err(e) = r {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            w.inner.sync_all()?;
            let id = hex::encode(w.hasher.finalize());
            std::fs::rename(&tmp, spool.out_path(&id))?;
            stubmail::fsutil::fsync_dir(&out_dir)?;
            Ok(id)
        })
        .await?
    }
}

/// Send a stub straight to a list robot's notify endpoints (`HOST:PORT`
/// each), three times over a few seconds: datagrams get lost, and the
/// robot takes a repeated stub once.
async fn direct_stubs(endpoints: Vec<String>, datagram: Vec<u8>) {
    for wait in [0u64, 1, 3] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        for e in &endpoints {
            // A name that does not resolve promptly is given up: this task
            // must end.
            let found = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(e.as_str())).await;
            let Ok(Ok(Some(to))) = found.map(|r| r.map(|mut a| a.next())) else { continue };
            let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            if let Ok(s) = tokio::net::UdpSocket::bind(bind).await {
                let _ = s.send_to(&datagram, to).await;
            }
        }
    }
}

/// Write `header` + `body` as a PGP/MIME message (RFC 3156 §4, signed and
/// encrypted in one OpenPGP message, §6.2): outside, the header without
/// its MIME fields and a `multipart/encrypted` body; inside, the original
/// MIME entity with protected copies of the addressing fields and Subject
/// (`protected-headers="v1"`), so the recipient's client shows the real ones.
fn pgp_mime(me: &Identity, to: &[stubmail::openpgp::Cert], header: &[u8], body: &mut dyn io::Read, out: &mut (dyn Write + Send + Sync)) -> anyhow::Result<()> {
    let is_mime = |n: &[u8]| n.eq_ignore_ascii_case(b"MIME-Version") || n.len() > 8 && n[..8].eq_ignore_ascii_case(b"Content-");
    let outer = stubmail::mail::remove_fields_where(header, |n, _| is_mime(n));
    let outer_end = outer.len() - if outer.ends_with(b"\r\n\r\n") { 2 } else { 0 };
    let boundary = format!("stubmail-{:016x}", rand::random::<u64>());
    out.write_all(&outer[..outer_end])?;
    write!(
        out,
        "MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n boundary=\"{boundary}\"\r\n\r\n\
         This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n\
         --{boundary}\r\nContent-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n\
         --{boundary}\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
         Content-Description: OpenPGP encrypted message\r\nContent-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"
    )?;
    // The inner entity: the message's own MIME fields (text/plain if it has
    // none) marked as carrying protected headers, then those headers.
    let mut inner = Vec::new();
    let mut has_type = false;
    let kept = stubmail::mail::remove_fields_where(header, |n, v| {
        if n.eq_ignore_ascii_case(b"Content-Type") {
            has_type = true;
            let v = String::from_utf8_lossy(v);
            inner.extend_from_slice(format!("Content-Type: {}; protected-headers=\"v1\"\r\n", v.trim().trim_end_matches(';')).as_bytes());
        } else if is_mime(n) && !n.eq_ignore_ascii_case(b"MIME-Version") {
            inner.extend_from_slice(format!("{}:{}", String::from_utf8_lossy(n), String::from_utf8_lossy(v)).as_bytes());
        }
        false
    });
    drop(kept);
    if !has_type {
        inner.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii; protected-headers=\"v1\"\r\n");
    }
    let protected = stubmail::mail::remove_fields_where(header, |n, _| {
        !["From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID"].iter().any(|p| n.eq_ignore_ascii_case(p.as_bytes()))
    });
    inner.extend_from_slice(&protected[..protected.len() - if protected.ends_with(b"\r\n\r\n") { 2 } else { 0 }]);
    inner.extend_from_slice(b"\r\n");
    let mut plain = io::Cursor::new(inner).chain(body);
    stubmail::pgp::sign_encrypt_armored(me, to, &mut plain, &mut *out)?;
    write!(out, "\r\n--{boundary}--\r\n")?;
    Ok(())
}

/// The header as it leaves: without Bcc:, and with the Date: and
/// Message-ID: a client left out (RFC 6409 §8). Both come from the
/// envelope, so every copy and every retry carries the same ones.
fn submitted_header(header: &[u8], env: &Envelope) -> Vec<u8> {
    let stripped = stubmail::mail::remove_fields(header, &["Bcc"]);
    let domain = env.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let date = stubmail::time::rfc5322(env.received);
    let id = format!("<{}@{domain}>", env.qid);
    stubmail::mail::add_missing_fields(&stripped, &[("Date", &date), ("Message-ID", &id)])
}

/// A header block's Subject, decoded (RFC 2047).
pub fn subject_of(header: &[u8]) -> Option<String> {
    mail_parser::MessageParser::default().parse_headers(header).and_then(|m| m.subject().map(str::to_string))
}

/// The header block of a spooled message.
/// Stub recipients the header shows (To, Cc) and those it hides (Bcc):
/// the shown share one copy, each hidden one gets its own.
fn split_shown(visible: &[String], stub: Vec<Rcpt>) -> (Vec<Rcpt>, Vec<Rcpt>) {
    stub.into_iter().partition(|r| visible.contains(&r.addr.to_ascii_lowercase()))
}

/// How many copies the worker will store in the outbox for `rcpts`.
pub(crate) fn stub_copies(header: &[u8], rcpts: &[Rcpt]) -> u64 {
    let visible = stubmail::mail::addresses(header, &["To", "Cc"]);
    let stub: Vec<Rcpt> = rcpts.iter().filter(|r| matches!(r.route, Route::Stub { .. })).cloned().collect();
    let (shown, hidden) = split_shown(&visible, stub);
    (!shown.is_empty()) as u64 + hidden.len() as u64
}

pub fn spool_header(path: &std::path::Path) -> io::Result<Vec<u8>> {
    stubmail::mail::read_header(&mut io::BufReader::new(File::open(path)?), MAX_HEADER)
}


struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hasher.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stub_batches_keep_to_both_bounds_and_the_order() {
        use stubmail::protocol::{NotifyMessage, NotifyStub, MAX_NOTIFY_BATCH, MAX_RECIPIENTS};
        let msg = |i: usize, n: usize| NotifyMessage {
            id: format!("{i:064x}"),
            stubs: vec![NotifyStub { cert: String::new(), stub: String::new() }; n],
        };
        assert!(super::notify_batches(vec![]).is_empty());
        // 250 messages of one stub: 100 + 100 + 50.
        let b = super::notify_batches((0..250).map(|i| msg(i, 1)).collect());
        assert_eq!(b.iter().map(|r| r.messages.len()).collect::<Vec<_>>(), vec![MAX_NOTIFY_BATCH, MAX_NOTIFY_BATCH, 50]);
        // Stubs bound a batch too: 600 + 600 do not fit in one.
        let b = super::notify_batches(vec![msg(0, 600), msg(1, 600), msg(2, MAX_RECIPIENTS)]);
        assert_eq!(b.iter().map(|r| r.messages.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
        let ids: Vec<String> = b.iter().flat_map(|r| r.messages.iter().map(|m| m.id.clone())).collect();
        assert_eq!(ids, (0..3).map(|i| format!("{i:064x}")).collect::<Vec<_>>(), "in order");
        // And bytes: ten messages with 100 KiB of certificates each.
        let heavy = |i: usize| NotifyMessage { id: format!("{i:064x}"), stubs: vec![NotifyStub { cert: "x".repeat(100 * 1024), stub: String::new() }] };
        let b = super::notify_batches((0..10).map(heavy).collect());
        assert_eq!(b.iter().map(|r| r.messages.len()).collect::<Vec<_>>(), vec![5, 5], "five of 100 KiB in 512 KiB");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(super::backoff(0), 5);
        assert_eq!(super::backoff(1), 10);
        assert_eq!(super::backoff(30), 3600);
    }
}
