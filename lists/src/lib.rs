//! Mailing lists (issue #18): the robot that runs a list.
//!
//! A list is a Stubmail identity whose keyring is its member list
//! (`stubmail list create`). The robot is three parts of a node in one
//! process:
//!
//! * http2mbox's poller, polling every member's outbox as any node polls
//!   its contacts, delivering into the list's *intake* (`list/intake`, a
//!   Maildir): each message as its author signed it, with their signature
//!   (`http2mbox::deliver::Target::Intake`). It acks only once the message
//!   is there, durably.
//! * the processor here: for each message in the intake, `decide` what it
//!   asks for, commit what follows from it to the list's spool, then
//!   remove it from the intake. A post is queued under a queue id derived
//!   from its intake file, so a crash between the two never queues it twice.
//! * smtp2stub's worker, which signs with the list's key, encrypts once to
//!   every member (`Envelope::list`: one stored copy per post, not one per
//!   member), uploads to the list's outbox and sends the members' stubs.

pub mod decide;
pub mod notices;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use decide::Decision;
use sha2::Digest;
use smtp2stub::spool::{Data, Envelope, Rcpt, Route, Spool};
use stubmail::config::{NonMembers, Subscription};
use stubmail::keyring::Keyring;
use stubmail::list::Addresses;
use stubmail::maildir::Maildir;
use stubmail::openpgp::Cert;
use stubmail::protocol::Fpr;
use stubmail::{pgp, Config, Home};
use tokio_util::sync::CancellationToken;

/// A request to join waits this long for its confirmation.
const CONFIRM_WITHIN: i64 = 7 * 86400;
/// A stranger's certificate (a would-be member, a non-member who posted)
/// is kept this long after their last message, for the robot's answers.
const STRANGER_KEPT: Duration = Duration::from_secs(7 * 86400);
/// Time for a stranger's certificate (an unauthenticated stub named the
/// outbox), and for the whole introduction: the certificate and a poll of
/// their outbox, which fetches what they sent.
const INTRO_DEADLINE: Duration = Duration::from_secs(10);
const INTRO_TOTAL: Duration = Duration::from_secs(30);
/// Introductions taken at once. Each mostly waits on a stranger's outbox
/// (a socket and a little memory), and a real request waits behind at
/// most a full quarantine of slow ones divided by this many, times
/// [`INTRO_TOTAL`].
const INTROS_AT_ONCE: usize = 64;
/// Of those, unproven ones at most.
const UNPROVEN_AT_ONCE: usize = 4;

/// Introductions in progress: their senders, and the free slots.
pub struct Running {
    busy: std::sync::Mutex<std::collections::HashSet<Fpr>>,
    slots: Arc<tokio::sync::Semaphore>,
    unproven: Arc<tokio::sync::Semaphore>,
}

impl Default for Running {
    fn default() -> Running {
        Running {
            busy: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(INTROS_AT_ONCE)),
            unproven: Arc::new(tokio::sync::Semaphore::new(UNPROVEN_AT_ONCE)),
        }
    }
}

/// The robot's files, under the list's data directory:
///
/// ```text
/// list/intake/       a Maildir: what members and strangers sent, each as
///                    its author signed it, after its intake line
/// list/strangers/    certificates of senders who are no members (a keyring)
/// list/pending/<FPR> the token a request to join waits for, and when
/// list/held/<qid>    non-members' posts held for the owner (intake files)
/// list/approved/<qid> held posts the owner approved, to publish
/// list/told/<id>     senders of messages set aside (too large …) told so
/// list/archive-out/<qid> a public list's posts, to archive at its outbox
/// ```
pub fn list_dir(home: &Home) -> PathBuf {
    home.data_dir.join("list")
}

/// What the robot needs to act on one message.
pub struct Robot {
    pub addrs: Addresses,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub non_members: NonMembers,
    pub subscription: Subscription,
    /// Archive each post at the outbox (a public list).
    pub public: bool,
    /// Largest post taken (`list.max_post_size`), said in notices.
    pub max_post_size: u64,
    pub spool: Spool,
    /// The members.
    pub keyring: Keyring,
    /// Senders who are no members (see [`list_dir`]).
    pub strangers: Keyring,
    pub intake: Maildir,
    dir: PathBuf,
    /// Told when something was queued, so the worker goes at once.
    pub kick: Arc<tokio::sync::Notify>,
    /// The set-aside directory's mtime when last answered: it is read
    /// again only when it changed (it holds up to 10,000 records).
    set_aside_seen: std::sync::Mutex<Option<std::time::SystemTime>>,
}

/// What one message led to, for the log and the tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Published { qid: String, members: usize },
    Unsubscribed(String),
    /// A request to join, answered with a confirmation.
    AskedToConfirm(String),
    Joined(String),
    /// A non-member's post, held for the owner.
    Held(String),
    /// A confirmed request to join, waiting for the owner.
    AwaitingOwner(String),
    Refused(String),
    Ignored(String),
}

/// A pending request to join: `list/pending/<FPR>`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    token: String,
    made: i64,
}

impl Robot {
    pub fn new(home: &Home, config: &Config) -> anyhow::Result<Robot> {
        let list = config.list.as_ref().context("this home is not a list's (no [list] in config.toml): `stubmail list create` makes one")?;
        let mut addrs = Addresses::of(&list.address).with_context(|| format!("list.address {:?} is not a plain address", list.address))?;
        if list.public {
            // RFC 2369's List-Archive: the feed the outbox serves (§10.5).
            let me = home.load_identity()?;
            addrs.archive = Some(format!("{}/v1/archive/{}/feed", config.identity.outbox.trim_end_matches('/'), me.fpr()));
        }
        let dir = list_dir(home);
        for d in ["pending", "held", "approved", "strangers", "archive-out"] {
            stubmail::fsutil::ensure_private_dir(&dir.join(d))?;
        }
        Ok(Robot {
            addrs,
            description: list.description.clone(),
            owner: list.owner.clone(),
            non_members: list.non_members,
            subscription: list.subscription,
            public: list.public,
            max_post_size: list.max_post_size,
            spool: Spool::open(&home.spool_dir()).context("opening the list's spool")?,
            keyring: home.keyring(),
            strangers: Keyring::new(dir.join("strangers")),
            intake: Maildir::open(&dir.join("intake")).context("opening the list's intake")?,
            dir,
            kick: Arc::new(tokio::sync::Notify::new()),
            set_aside_seen: std::sync::Mutex::new(None),
        })
    }

    /// Process every message waiting in the intake and every post the
    /// owner approved, oldest first.
    pub async fn process_all(&self) -> anyhow::Result<Vec<Outcome>> {
        let mut done = Vec::new();
        for (dir, approved) in [(self.intake.root().join("new"), false), (self.dir.join("approved"), true)] {
            let mut names: Vec<String> =
                std::fs::read_dir(&dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect();
            names.sort();
            for name in names {
                match self.process(&dir, &name, approved).await {
                    Ok(o) => {
                        tracing::info!(file = name, "list: {o:?}");
                        done.push(o);
                    }
                    // Left where it is, tried again on the next round.
                    Err(e) => tracing::warn!(file = name, "list: not processed yet: {e:#}"),
                }
            }
        }
        Ok(done)
    }

    async fn process(&self, dir: &std::path::Path, name: &str, approved: bool) -> anyhow::Result<Outcome> {
        let path = dir.join(name);
        let file = std::fs::read(&path)?;
        // Everything queued for it is named after its file, so a crash
        // after a commit and before the removal does not queue it again.
        let qid = format!("l{}", &hex::encode(sha2::Sha256::digest(format!("{approved}/{name}").as_bytes()))[..24]);
        let outcome = self.act(&file, &qid, approved).await?;
        std::fs::remove_file(&path)?;
        stubmail::fsutil::fsync_dir(dir)?;
        Ok(outcome)
    }

    async fn act(&self, file: &[u8], qid: &str, approved: bool) -> anyhow::Result<Outcome> {
        let Some((author, sig, at)) = stubmail::list::parse_intake(file) else {
            return Ok(Outcome::Ignored("an intake file without its intake line".into()));
        };
        let raw = &file[at..];
        let (cert, member) = match (self.keyring.get(&author)?, self.strangers.get(&author)?) {
            (Some(c), _) => (c, true),
            (None, Some(c)) => (c, false),
            (None, None) => return Ok(Outcome::Ignored(format!("{author} is neither a member nor a known stranger"))),
        };
        // The addresses of its valid User IDs only: a revoked one is no longer theirs.
        let emails = pgp::emails_of(&cert);
        let first = emails.first().cloned().unwrap_or_default();
        let header = &raw[..stubmail::mail::header_len(raw).unwrap_or(raw.len().min(64 * 1024))];
        let to_author = |body| (vec![Rcpt { addr: first.clone(), route: Route::Stub { fpr: author.clone() } }], body);
        match decide::decide(raw, &author, &sig, &emails, &self.addrs, self.description.as_deref()) {
            Decision::Publish(post) if member || approved || self.non_members == NonMembers::Accept => {
                let rcpts = self.members()?;
                let members = rcpts.len();
                if self.public {
                    // Archived once published (see `send_archive`).
                    stubmail::fsutil::write_atomic(&self.dir.join("archive-out").join(qid), &post, 0o600)?;
                }
                self.queue(qid, rcpts, post, true).await?;
                Ok(Outcome::Published { qid: qid.to_string(), members })
            }
            Decision::Publish(_) => {
                let held = (self.non_members == NonMembers::Hold).then_some(qid);
                if let Some(id) = held {
                    stubmail::fsutil::write_atomic(&self.dir.join("held").join(id), file, 0o600)?;
                } else {
                    let (r, b) = to_author(notices::not_a_member(&self.addrs, &first, header, qid));
                    self.queue(qid, r, b, false).await?;
                }
                if let Some((owner, fpr)) = self.owner()? {
                    let n = notices::to_owner(&self.addrs, &owner, &first, author.as_str(), header, held, &format!("{qid}o"));
                    self.queue(&format!("{qid}o"), vec![Rcpt { addr: owner, route: Route::Stub { fpr } }], n, false).await?;
                }
                Ok(if held.is_some() { Outcome::Held(first) } else { Outcome::Refused(format!("{first} is not a member")) })
            }
            Decision::Unsubscribe if member => {
                // Told they left: the notice is queued first, their key kept
                // among the strangers for the worker to encrypt it to.
                self.keep_stranger(&author, &cert)?;
                let (r, b) = to_author(notices::goodbye(&self.addrs, &first, header, qid));
                self.queue(qid, r, b, false).await?;
                match self.keyring.remove(author.as_str()) {
                    Ok(_) | Err(stubmail::keyring::KeyringError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(Outcome::Unsubscribed(first))
            }
            Decision::Unsubscribe => Ok(Outcome::Ignored(format!("{first} asked to leave and is no member"))),
            Decision::Subscribe if member => Ok(Outcome::Ignored(format!("{first} asked to join and is a member"))),
            Decision::Subscribe if self.subscription == Subscription::Closed => {
                let (r, b) = to_author(notices::refusal(&self.addrs, &first, header, "members are added by the list's owner only", qid));
                self.queue(qid, r, b, false).await?;
                Ok(Outcome::Refused(format!("{first}: subscription is closed")))
            }
            Decision::Subscribe => self.subscribe(&author, cert, &first, header, qid).await,
            Decision::Refuse(reason) => {
                let (r, b) = to_author(notices::refusal(&self.addrs, &first, header, &reason, qid));
                self.queue(qid, r, b, false).await?;
                Ok(Outcome::Refused(reason))
            }
        }
    }

    /// A stranger's request to join: the first is answered with a token
    /// to confirm; a reply carrying it (signed by the same key, as every
    /// message is) makes them a member.
    async fn subscribe(&self, author: &Fpr, cert: Cert, first: &str, header: &[u8], qid: &str) -> anyhow::Result<Outcome> {
        let pending_file = self.dir.join("pending").join(author.as_str());
        let pending: Option<Pending> = std::fs::read(&pending_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let now = stubmail::time::unix_now();
        let confirmed = pending.as_ref().is_some_and(|p| now - p.made <= CONFIRM_WITHIN && notices::token_in(header).as_deref() == Some(&p.token));
        let rcpt = vec![Rcpt { addr: first.to_string(), route: Route::Stub { fpr: author.clone() } }];
        if confirmed && self.subscription == Subscription::Approve {
            // Confirmed: now the owner decides (`stubmail list admit`).
            let _ = std::fs::remove_file(&pending_file);
            let (owner_qid, asked) = (format!("{qid}o"), self.owner()?);
            if let Some((owner, fpr)) = asked {
                let n = notices::to_owner_join(&self.addrs, &owner, first, author.as_str(), &owner_qid);
                self.queue(&owner_qid, vec![Rcpt { addr: owner, route: Route::Stub { fpr } }], n, false).await?;
            }
            self.queue(qid, rcpt, notices::waiting(&self.addrs, first, qid), false).await?;
            return Ok(Outcome::AwaitingOwner(first.to_string()));
        }
        if confirmed {
            // The welcome first: the worker encrypts it to the certificate
            // wherever it is (strangers, then members).
            self.queue(qid, rcpt, notices::welcome(&self.addrs, first, qid), false).await?;
            let cert = pgp::reduced(&cert)?;
            match self.keyring.import(vec![cert]) {
                Ok(_) => {}
                Err(e @ stubmail::keyring::KeyringError::AddressTaken { .. }) => {
                    tracing::warn!("list: {first} confirmed but cannot join: {e}");
                    return Ok(Outcome::Refused(format!("{first}: {e}")));
                }
                Err(e) => return Err(e.into()),
            }
            let _ = std::fs::remove_file(&pending_file);
            return Ok(Outcome::Joined(first.to_string()));
        }
        // A request asked again (or a wrong token) is answered with the
        // token still pending, so any of the questions sent can be
        // answered. A new one is made from the request's own queue id
        // (secret: it comes from the intake file's random name), so the
        // same request processed again asks with the same token.
        let token = match pending.filter(|p| now - p.made <= CONFIRM_WITHIN) {
            Some(p) => p.token,
            None => {
                let token = hex::encode(&sha2::Sha256::digest(format!("confirm {qid} {author}").as_bytes())[..16]);
                let p = serde_json::to_vec(&Pending { token: token.clone(), made: now })?;
                stubmail::fsutil::write_atomic(&pending_file, &p, 0o600)?;
                token
            }
        };
        self.queue(qid, rcpt, notices::confirm(&self.addrs, first, header, &token, qid), false).await?;
        Ok(Outcome::AskedToConfirm(first.to_string()))
    }

    /// Every usable member, as recipients.
    fn members(&self) -> anyhow::Result<Vec<Rcpt>> {
        let mut rcpts = Vec::new();
        for c in self.keyring.all()? {
            if pgp::check_contact(&c).is_err() {
                continue;
            }
            let addr = pgp::emails_of(&c).into_iter().next().unwrap_or_default();
            rcpts.push(Rcpt { addr, route: Route::Stub { fpr: pgp::fpr_of(&c) } });
        }
        Ok(rcpts)
    }

    /// The owner's address and key, if the owner is a member.
    fn owner(&self) -> anyhow::Result<Option<(String, Fpr)>> {
        let Some(o) = &self.owner else { return Ok(None) };
        Ok(self.keyring.by_email(o)?.first().map(|c| (o.clone(), pgp::fpr_of(c))))
    }

    /// Commit one message from the list to the spool, unless a message
    /// with this queue id was committed before (a crash between the commit
    /// and the removal of what it came from).
    /// Tell the senders of messages the list's poller set aside (too large
    /// once decrypted, a signature that did not verify …: `stubmail
    /// status` of the list shows them), once each: otherwise a member's
    /// oversized post would vanish without a word. Only a member or a
    /// known stranger is told; `list/told/<id>` marks who was.
    pub async fn answer_set_aside(&self, set_aside: &http2mbox::poller::SetAside) -> anyhow::Result<usize> {
        let told = self.dir.join("told");
        let stamp = std::fs::metadata(set_aside.dir()).and_then(|m| m.modified()).ok();
        if stamp.is_none() || *self.set_aside_seen.lock().expect("not poisoned") == stamp {
            return Ok(0);
        }
        let mut n = 0;
        for r in set_aside.list()?.into_iter().filter(|r| r.attempts >= http2mbox::poller::SetAside::TRIES) {
            if !stubmail::protocol::is_valid_id(&r.id) || told.join(&r.id).exists() {
                continue;
            }
            let cert = match (self.keyring.get(&r.sender)?, self.strangers.get(&r.sender)?) {
                (Some(c), _) | (None, Some(c)) => Some(c),
                (None, None) => None,
            };
            if let Some(to) = cert.as_ref().and_then(|c| pgp::emails_of(c).into_iter().next()) {
                let qid = format!("t{}", &hex::encode(sha2::Sha256::digest(r.id.as_bytes()))[..24]);
                let body = notices::not_taken(&self.addrs, &to, &r.id, &r.reason, self.max_post_size, &qid);
                self.queue(&qid, vec![Rcpt { addr: to, route: Route::Stub { fpr: r.sender.clone() } }], body, false).await?;
                n += 1;
            }
            stubmail::fsutil::ensure_private_dir(&told)?;
            stubmail::fsutil::write_atomic(&told.join(&r.id), b"", 0o600)?;
        }
        *self.set_aside_seen.lock().expect("not poisoned") = stamp;
        Ok(n)
    }

    async fn queue(&self, qid: &str, rcpts: Vec<Rcpt>, bytes: Vec<u8>, list: bool) -> anyhow::Result<()> {
        if self.spool.known(qid) {
            return Ok(());
        }
        let env = Envelope {
            qid: qid.to_string(),
            from: self.addrs.post.clone(),
            rcpts,
            received: stubmail::time::unix_now(),
            helo: "list".into(),
            peer: "list robot".into(),
            jobs: vec![],
            subject: None,
            list,
        };
        self.spool.commit(&env, Data::Memory(bytes)).await?;
        self.kick.notify_one();
        Ok(())
    }

    /// Strangers whose stubs wait in the quarantine (a request to join, a
    /// non-member's post): their certificate is checked as `stubmail intro
    /// accept` does, kept among the strangers, and their outbox polled for
    /// what they sent the list, which lands in the intake like a member's
    /// mail. Nothing makes them a member.
    ///
    /// Each introduction runs on a task of its own that members' posts
    /// never wait for, [`INTROS_AT_ONCE`] at a time, started as soon as a
    /// slot is free (a slow one holds up only its own slot), within
    /// [`INTRO_TOTAL`]. Proven introductions (the stub carried a
    /// certificate that verified it) come first, oldest first; unproven
    /// ones (anyone can send those, naming any outbox) take at most
    /// [`UNPROVEN_AT_ONCE`] slots, and their certificate gets
    /// [`INTRO_DEADLINE`]. One that fails is forgotten, so forged stubs do
    /// not keep the quarantine full. Returns how many were started.
    pub fn start_introductions(self: &Arc<Self>, q: &http2mbox::notify::Quarantine, poller: &Arc<http2mbox::poller::Poller>, http: &reqwest::Client, running: &Arc<Running>) -> anyhow::Result<usize> {
        let blocks = poller.blocks.get().map_err(|e| anyhow::anyhow!("the blocklist: {e}"))?;
        let (proven, unproven): (Vec<_>, Vec<_>) = q.list()?.into_iter().partition(|i| i.cert.is_some());
        let mut started = 0;
        for intro in proven.into_iter().chain(unproven) {
            let f = intro.sender.clone();
            if running.busy.lock().expect("not poisoned").contains(&f) {
                continue;
            }
            if let Some(why) = blocks.check(&stubmail::blocklist::Who { sender: &f, outbox: Some(&intro.outbox), emails: &[] }) {
                tracing::info!(stranger = %f, "list: not introduced, {why}");
                let _ = q.reject(&f);
                continue;
            }
            let unproven_slot = match intro.cert {
                Some(_) => None,
                None => match running.unproven.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => continue,
                },
            };
            let Ok(slot) = running.slots.clone().try_acquire_owned() else { break };
            running.busy.lock().expect("not poisoned").insert(f.clone());
            started += 1;
            let (robot, q, poller, http, running) = (self.clone(), q.clone(), poller.clone(), http.clone(), running.clone());
            tokio::spawn(async move {
                let _slots = (slot, unproven_slot);
                robot.introduce(&q, &poller, &http, &intro).await;
                running.busy.lock().expect("not poisoned").remove(&intro.sender);
            });
        }
        self.prune_strangers();
        Ok(started)
    }

    /// Take one introduction (see [`Robot::start_introductions`]).
    async fn introduce(&self, q: &http2mbox::notify::Quarantine, poller: &http2mbox::poller::Poller, http: &reqwest::Client, intro: &http2mbox::notify::Intro) {
        let f = &intro.sender;
        let taken = tokio::time::timeout(INTRO_TOTAL, async {
            // The certificate the stub carried, checked again (nothing to
            // fetch); else the one the outbox serves.
            let cert = match intro.proven_by() {
                Some(c) => http2mbox::notify::check_introduced(intro, &c).map(|()| c)?,
                None => http2mbox::notify::introduced_cert(http, intro, INTRO_DEADLINE).await?,
            };
            let cert = pgp::reduced(&cert)?;
            if self.keyring.get(f)?.is_none() {
                self.keep_stranger(f, &cert)?;
            }
            poller.poll_strangers(&intro.outbox, vec![cert]).await
        })
        .await;
        // Taken or not, the introduction is done with: a stranger whose
        // outbox failed sends again (the direct stubs come three times; a
        // new message, three more). Unless a proven stub replaced it
        // meanwhile: that one is still to take.
        if q.get(f).is_some_and(|now| now.cert == intro.cert && now.outbox == intro.outbox) {
            let _ = q.remove(f);
        }
        match taken {
            Ok(Ok(r)) => tracing::info!(stranger = %f, delivered = r.delivered, "list: a stranger's messages fetched"),
            Ok(Err(e)) => tracing::warn!(stranger = %f, outbox = intro.outbox, "list: introduction not taken: {e:#}"),
            Err(_) => tracing::warn!(stranger = %f, outbox = intro.outbox, "list: introduction not taken: not done within {INTRO_TOTAL:?}"),
        }
    }

    /// Keep a stranger's certificate among the strangers (not a member's).
    fn keep_stranger(&self, f: &Fpr, cert: &Cert) -> anyhow::Result<()> {
        // A stranger's key may claim any address; among strangers it only
        // names whom the robot answers.
        let _ = self.strangers.remove(f.as_str());
        self.strangers.import(vec![cert.clone()]).or_else(|e| match e {
            stubmail::keyring::KeyringError::AddressTaken { old, .. } => {
                self.strangers.remove(old.as_str())?;
                self.strangers.import(vec![cert.clone()])
            }
            e => Err(e),
        })?;
        Ok(())
    }

    /// Archive a public list's published posts at its outbox, signed by
    /// the list's key; each is kept here until the outbox has it.
    pub async fn send_archive(&self, me: &stubmail::Identity, outbox: &stubmail::client::OutboxClient) -> anyhow::Result<usize> {
        let dir = self.dir.join("archive-out");
        let mut names: Vec<String> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect();
        names.sort();
        let mut sent = 0;
        for name in names {
            let post = std::fs::read(dir.join(&name))?;
            let sig = me.sign_detached(&post)?;
            match outbox.archive(post, &sig).await {
                Ok(()) => sent += 1,
                Err(e) if e.is_temporary() => {
                    tracing::warn!(post = name, "list: not archived yet: {e}");
                    break;
                }
                Err(e) => tracing::error!(post = name, "list: the outbox refused to archive a post: {e}"),
            }
            std::fs::remove_file(dir.join(&name))?;
        }
        Ok(sent)
    }

    /// Forget strangers not heard from for [`STRANGER_KEPT`].
    fn prune_strangers(&self) {
        let Ok(rd) = std::fs::read_dir(self.strangers.dir()) else { return };
        for e in rd.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a > STRANGER_KEPT);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Run a list's robot until `shutdown`: poll the members, publish their
/// posts, act on their requests. `notify`: the bound stub listener, if any.
pub async fn run(home: &Home, config: &Config, notify: Option<tokio::net::UdpSocket>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let robot = Arc::new(Robot::new(home, config)?);
    let list = config.list.as_ref().expect("checked by Robot::new");
    let me = Arc::new(home.load_identity()?);
    // What a crash left of messages never committed (we hold the role).
    if let Err(e) = robot.spool.sweep() {
        tracing::warn!("cannot sweep the list's spool: {e}");
    }
    let outbox = stubmail::client::OutboxClient::new(stubmail::client::http_client()?, &config.identity.outbox, me.clone())?;
    let archive = (outbox.clone(), me.clone());
    let worker = smtp2stub::worker::Worker {
        spool: robot.spool.clone(),
        keyring: robot.keyring.clone(),
        me,
        outbox,
        relay: None,
        notices: None,
        unstored: Default::default(),
        stubs: Default::default(),
        others: Some(robot.strangers.clone()),
    };
    let work = tokio::spawn(worker.run(robot.kick.clone(), shutdown.clone()));
    let mut poller = http2mbox::poller_for(home, config, false)?;
    poller.target = http2mbox::deliver::Target::Intake(robot.intake.clone());
    poller.max_plain = list.max_post_size;
    let poller = Arc::new(poller);
    let mut delivered = poller.delivered.subscribe();
    let interval = config.poll.interval_secs.max(1);
    let (h, c, sd, p) = (home.clone(), config.clone(), shutdown.clone(), poller.clone());
    let poll = tokio::spawn(async move {
        http2mbox::daemon(&h, &c, p, interval, http2mbox::Listeners { notify, ..Default::default() }, sd).await
    });
    // Strangers' introductions on a task of their own: a stranger's outbox
    // that answers slowly (or never) holds up no member's post.
    let intros = if config.notify.first_contact {
        let (robot, poller, shutdown) = (robot.clone(), poller.clone(), shutdown.clone());
        let http = stubmail::client::http_client_with_timeout(INTRO_DEADLINE)?;
        let q = http2mbox::notify::Quarantine::open(&home.state_dir(), config.notify.max_per_sender, config.notify.max_senders)?;
        let running = Arc::new(Running::default());
        Some(tokio::spawn(async move {
            loop {
                if let Err(e) = robot.start_introductions(&q, &poller, &http, &running) {
                    tracing::warn!("list: introductions: {e:#}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }))
    } else {
        None
    };
    loop {
        if let Err(e) = robot.process_all().await {
            tracing::warn!("list: {e:#}");
        }
        if let Err(e) = robot.send_archive(&archive.1, &archive.0).await {
            tracing::warn!("list: archive: {e:#}");
        }
        if let Err(e) = robot.answer_set_aside(&poller.set_aside).await {
            tracing::warn!("list: telling senders of messages not taken: {e:#}");
        }
        tokio::select! {
            _ = delivered.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    poll.await??;
    if let Some(t) = intros {
        let _ = t.await;
    }
    let _ = work.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list's home with Alice as its one member, and a robot on it.
    fn robot(dir: &std::path::Path) -> (Robot, stubmail::Identity) {
        let home = Home::single(dir);
        let mut config = Config::new("team@example.org", "http://127.0.0.1:9/");
        config.list = Some(stubmail::config::ListConfig::new("team@example.org"));
        home.save_config(&config).unwrap();
        let alice = stubmail::Identity::generate(None, "alice@example.org", "http://127.0.0.1:9/").unwrap();
        home.keyring().import(vec![alice.cert()]).unwrap();
        (Robot::new(&home, &config).unwrap(), alice)
    }

    fn intake(r: &Robot, name: &str, author: &Fpr, raw: &[u8]) -> PathBuf {
        let mut file = stubmail::list::intake_line(author, b"sig");
        file.extend_from_slice(raw);
        let p = r.intake.root().join("new").join(name);
        std::fs::write(&p, &file).unwrap();
        p
    }

    /// A crash after a post was queued and before its intake file was
    /// removed: processed again, it is not queued again (kill -9 anywhere
    /// duplicates nothing); a post that was never queued is.
    #[tokio::test]
    async fn a_post_processed_again_after_a_crash_is_queued_once() {
        let d = tempfile::tempdir().unwrap();
        let (r, alice) = robot(d.path());
        let raw = b"From: alice@example.org\r\nTo: team@example.org\r\nSubject: once\r\n\r\nhi\r\n";
        let p = intake(&r, "1.R1.host", &alice.fpr(), raw);
        let saved = std::fs::read(&p).unwrap();
        let first = r.process_all().await.unwrap();
        assert!(matches!(first.as_slice(), [Outcome::Published { members: 1, .. }]), "{first:?}");
        assert!(!p.exists(), "taken out of the intake");
        // As if the removal had not happened.
        std::fs::write(&p, &saved).unwrap();
        let again = r.process_all().await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(r.spool.queued().unwrap().len(), 1, "queued once");
        // Another message (another intake file) is another post.
        intake(&r, "2.R2.host", &alice.fpr(), raw);
        r.process_all().await.unwrap();
        assert_eq!(r.spool.queued().unwrap().len(), 2);
        let q = r.spool.queued().unwrap();
        assert!(q.iter().all(|e| e.list && e.from == "team@example.org"), "{q:?}");
    }

    /// What a member asks, and what the robot does about a stranger's or a
    /// former member's message, without the network.
    #[tokio::test]
    async fn members_leave_strangers_are_asked_and_the_unknown_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let (r, alice) = robot(d.path());
        let bob = stubmail::Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap();
        r.strangers.import(vec![bob.cert()]).unwrap();
        intake(&r, "1.a", &bob.fpr(), b"From: bob@example.net\r\nTo: team-subscribe@example.org\r\nSubject: join\r\n\r\n");
        intake(&r, "2.a", &bob.fpr(), b"From: bob@example.net\r\nTo: team@example.org\r\nSubject: hi\r\n\r\n");
        intake(&r, "3.a", &alice.fpr(), b"From: alice@example.org\r\nTo: team-unsubscribe@example.org\r\n\r\n");
        let carol = stubmail::Identity::generate(None, "carol@example.com", "http://127.0.0.1:9/").unwrap();
        intake(&r, "4.a", &carol.fpr(), b"From: carol@example.com\r\nTo: team@example.org\r\n\r\n");
        std::fs::write(r.intake.root().join("new").join("5.a"), b"no intake line\r\n\r\n").unwrap();
        let done = r.process_all().await.unwrap();
        assert!(matches!(&done[0], Outcome::AskedToConfirm(a) if a == "bob@example.net"), "{done:?}");
        assert!(matches!(&done[1], Outcome::Refused(_)), "{done:?}");
        assert!(matches!(&done[2], Outcome::Unsubscribed(a) if a == "alice@example.org"), "{done:?}");
        assert!(matches!(&done[3], Outcome::Ignored(_)) && matches!(&done[4], Outcome::Ignored(_)), "{done:?}");
        assert!(r.keyring.all().unwrap().is_empty(), "Alice left");
        assert!(r.strangers.get(&alice.fpr()).unwrap().is_some(), "her key kept for the goodbye");
        let goodbye = r.spool.queued().unwrap().into_iter().filter(|e| e.rcpts.iter().any(|x| x.route == Route::Stub { fpr: alice.fpr() })).count();
        assert_eq!(goodbye, 1, "told she left");
        assert!(r.dir.join("pending").join(bob.fpr().as_str()).exists());
        assert!(std::fs::read_dir(r.intake.root().join("new")).unwrap().next().is_none(), "the intake is empty");
    }
}
