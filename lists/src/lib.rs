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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use decide::Decision;
use sha2::Digest;
use smtp2stub::spool::{Data, Envelope, Rcpt, Route, Spool};
use stubmail::list::Addresses;
use stubmail::maildir::Maildir;
use stubmail::{pgp, Config, Home};
use tokio_util::sync::CancellationToken;

/// Where the robot keeps what members sent, until it is processed.
pub fn intake_dir(home: &Home) -> std::path::PathBuf {
    home.data_dir.join("list").join("intake")
}

/// The robot's state shared by its processing steps.
pub struct Robot {
    pub addrs: Addresses,
    pub description: Option<String>,
    pub spool: Spool,
    pub keyring: stubmail::keyring::Keyring,
    pub intake: Maildir,
    /// Told when something was queued, so the worker goes at once.
    pub kick: Arc<tokio::sync::Notify>,
}

/// What one intake file led to, for the log and the tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Published { qid: String, members: usize },
    Unsubscribed(String),
    Refused(String),
    Ignored(String),
}

impl Robot {
    pub fn new(home: &Home, config: &Config) -> anyhow::Result<Robot> {
        let list = config.list.as_ref().context("this home is not a list's (no [list] in config.toml): `stubmail list create` makes one")?;
        let addrs = Addresses::of(&list.address).with_context(|| format!("list.address {:?} is not a plain address", list.address))?;
        Ok(Robot {
            addrs,
            description: list.description.clone(),
            spool: Spool::open(&home.spool_dir()).context("opening the list's spool")?,
            keyring: home.keyring(),
            intake: Maildir::open(&intake_dir(home)).context("opening the list's intake")?,
            kick: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Process every message waiting in the intake, oldest first.
    pub async fn process_all(&self) -> anyhow::Result<Vec<Outcome>> {
        let new = self.intake.root().join("new");
        let mut names: Vec<String> = std::fs::read_dir(&new)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let mut done = Vec::new();
        for name in names {
            match self.process(&name).await {
                Ok(o) => {
                    tracing::info!(file = name, "list: {o:?}");
                    done.push(o);
                }
                // Left in the intake, tried again on the next round.
                Err(e) => tracing::warn!(file = name, "list: not processed yet: {e:#}"),
            }
        }
        Ok(done)
    }

    async fn process(&self, name: &str) -> anyhow::Result<Outcome> {
        let path = self.intake.root().join("new").join(name);
        let file = std::fs::read(&path)?;
        // Named by its intake file, so a crash after the commit below and
        // before the removal does not queue it again.
        let qid = format!("l{}", &hex::encode(sha2::Sha256::digest(name.as_bytes()))[..24]);
        let outcome = if self.spool.known(&qid) {
            Outcome::Ignored("queued before".into())
        } else {
            self.act(&file, &qid).await?
        };
        std::fs::remove_file(&path)?;
        stubmail::fsutil::fsync_dir(&self.intake.root().join("new"))?;
        Ok(outcome)
    }

    async fn act(&self, file: &[u8], qid: &str) -> anyhow::Result<Outcome> {
        let Some((author, sig, at)) = stubmail::list::parse_intake(file) else {
            return Ok(Outcome::Ignored("an intake file without its intake line".into()));
        };
        let raw = &file[at..];
        let Some(cert) = self.keyring.get(&author)? else {
            return Ok(Outcome::Ignored(format!("{author} is no longer a member")));
        };
        let emails = pgp::all_emails_of(&cert);
        let first = pgp::emails_of(&cert).into_iter().next().unwrap_or_default();
        match decide::decide(raw, &author, &sig, &emails, &self.addrs, self.description.as_deref()) {
            Decision::Publish(post) => {
                let mut rcpts = Vec::new();
                for c in self.keyring.all()? {
                    if pgp::check_contact(&c).is_err() {
                        continue;
                    }
                    let addr = pgp::emails_of(&c).into_iter().next().unwrap_or_default();
                    rcpts.push(Rcpt { addr, route: Route::Stub { fpr: pgp::fpr_of(&c) } });
                }
                let members = rcpts.len();
                self.queue(qid, rcpts, post, true).await?;
                Ok(Outcome::Published { qid: qid.to_string(), members })
            }
            Decision::Unsubscribe => {
                match self.keyring.remove(author.as_str()) {
                    Ok(_) | Err(stubmail::keyring::KeyringError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(Outcome::Unsubscribed(first))
            }
            Decision::AlreadyMember => Ok(Outcome::Ignored(format!("{first} asked to subscribe and is a member"))),
            Decision::Refuse(reason) => {
                let header_end = stubmail::mail::header_len(raw).unwrap_or(raw.len().min(64 * 1024));
                let notice = decide::refusal_notice(&self.addrs, &first, &raw[..header_end], &reason, qid);
                self.queue(qid, vec![Rcpt { addr: first.clone(), route: Route::Stub { fpr: author } }], notice, false).await?;
                Ok(Outcome::Refused(reason))
            }
        }
    }

    async fn queue(&self, qid: &str, rcpts: Vec<Rcpt>, bytes: Vec<u8>, list: bool) -> anyhow::Result<()> {
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
    let worker = smtp2stub::worker::Worker {
        spool: robot.spool.clone(),
        keyring: robot.keyring.clone(),
        me,
        outbox,
        relay: None,
        notices: None,
        unstored: Default::default(),
        stubs: Default::default(),
    };
    let work = tokio::spawn(worker.run(robot.kick.clone(), shutdown.clone()));
    let mut poller = http2mbox::poller_for(home, config, false)?;
    poller.target = http2mbox::deliver::Target::Intake(robot.intake.clone());
    poller.max_plain = list.max_post_size;
    let poller = Arc::new(poller);
    let mut delivered = poller.delivered.subscribe();
    let interval = config.poll.interval_secs.max(1);
    let (h, c, sd) = (home.clone(), config.clone(), shutdown.clone());
    let poll = tokio::spawn(async move {
        http2mbox::daemon(&h, &c, poller, interval, http2mbox::Listeners { notify, ..Default::default() }, sd).await
    });
    loop {
        if let Err(e) = robot.process_all().await {
            tracing::warn!("list: {e:#}");
        }
        tokio::select! {
            _ = delivered.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    poll.await??;
    let _ = work.await;
    Ok(())
}
