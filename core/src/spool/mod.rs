//! The durable spool. A message is on disk (fsync'd) before smtp2stub says
//! `250`, and every later step records its progress durably *before* acting,
//! so a crash at any point neither loses nor duplicates a message:
//!
//! ```text
//! spool/tmp/<qid>.eml        DATA being received
//! spool/msg/<qid>.eml        accepted message (as received, CRLF)
//! spool/queue/<qid>.json     its Envelope: what is left to do
//! spool/queue/.<qid>.json.new  the first Envelope, written and fsync'd by
//!                            the session, moved in by the group commit
//! spool/out/<id>.pgp         a signed+encrypted copy; its id is recorded in
//!                            the Envelope before the upload starts, so a
//!                            retry uploads the same bytes (idempotent)
//! spool/out/<qid>.<n>.eml    job n as the relay gets it (PGP/MIME for an
//!                            OpenPGP recipient), made once
//! spool/queue/<qid>.lock     held (flock) by whoever works on the envelope:
//!                            the worker, or `stubmail unsend` withdrawing it
//! spool/sent/<qid>.json      finished envelopes: the local half of
//!                            `stubmail status`
//! ```

mod commit;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use crate::fsutil::{self, fsync_dir};
use crate::protocol::Fpr;

/// One accepted message and what remains to be done with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Queue id, also in the `Received:` header and the 250 reply.
    pub qid: String,
    /// MAIL FROM (one of the user's own addresses).
    pub from: String,
    /// RCPT TO, in order.
    pub rcpts: Vec<Rcpt>,
    /// Unix time of the 250.
    pub received: i64,
    /// EHLO/HELO name the client gave.
    pub helo: String,
    /// Client address.
    pub peer: String,
    /// The copies to make and upload. Empty until planned.
    #[serde(default)]
    pub jobs: Vec<Job>,
    /// The message's Subject, for `stubmail status` (kept when the
    /// message itself is gone). Set when the copies are planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// A mailing list's post (queued by the list robot): its members share
    /// one copy however few of them the header names.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rcpt {
    pub addr: String,
    /// How this recipient is reached, decided at RCPT time.
    pub route: Route,
}

/// How one recipient is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// A Stubmail user: encrypt to this certificate, store in our outbox.
    Stub { fpr: Fpr },
    /// Anyone else: ordinary SMTP through the configured relay.
    Relay,
    /// An OpenPGP user without an outbox (their key is in the keyring):
    /// ordinary SMTP through the relay, as PGP/MIME (RFC 3156) signed and
    /// encrypted to this certificate.
    Pgp { fpr: Fpr },
}

/// One delivery to make. A stub job is a ciphertext for a group of
/// recipients (visible recipients share one; each Bcc recipient gets their
/// own); a relay job is one SMTP transaction to the relay.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub kind: JobKind,
    pub rcpts: Vec<Rcpt>,
    /// SHA-256 of the ciphertext in `out/`, once made.
    #[serde(default)]
    pub id: Option<String>,
    pub state: JobState,
    #[serde(default)]
    pub attempts: u32,
    /// Unix time before which no retry is made.
    #[serde(default)]
    pub next_try: i64,
    /// Last error, for `stubmail status`.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Stub,
    Relay,
    /// One PGP/MIME copy through the relay, for one recipient.
    Pgp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be encrypted or uploaded.
    Queued,
    /// Stored in the sender's outbox.
    Uploaded,
    /// Handed to the SMTP relay, which accepted it.
    Relayed,
    /// Given up (permanent error); see `last_error`.
    Failed,
    /// Withdrawn by the user (`stubmail unsend`) before it left: never
    /// uploaded or relayed.
    Unsent,
}

/// A message's data while it arrives: in memory while small (most mail
/// is, and every write to a file is a trip through the blocking pool),
/// spilled to `tmp/<qid>.eml` once it passes `SPILL` bytes.
pub enum Data {
    Memory(Vec<u8>),
    File(tokio::fs::File),
}

/// Bytes of message data kept in memory per session before it goes to a
/// file (sessions are limited in number, so this bounds the memory too).
const SPILL: usize = 256 * 1024;

impl Data {
    /// Add `chunk`; `tmp` is where the data goes if it spills.
    pub async fn write_all(&mut self, chunk: &[u8], tmp: &Path) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            Data::Memory(b) if b.len() + chunk.len() <= SPILL => {
                b.extend_from_slice(chunk);
                Ok(())
            }
            Data::Memory(b) => {
                let mut f = tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp).await?;
                f.write_all(b).await?;
                f.write_all(chunk).await?;
                *self = Data::File(f);
                Ok(())
            }
            Data::File(f) => f.write_all(chunk).await,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spool {
    root: PathBuf,
    /// The group-commit thread, started by the first commit (only
    /// smtp2stub commits; the CLI opens the spool to read it).
    commits: Arc<OnceLock<commit::Committer>>,
}

impl Spool {
    pub fn open(root: &Path) -> io::Result<Spool> {
        for d in ["tmp", "msg", "queue", "out", "sent"] {
            fsutil::ensure_private_dir(&root.join(d))?;
        }
        Ok(Spool { root: root.to_path_buf(), commits: Default::default() })
    }

    pub fn new_qid() -> String {
        use rand::Rng;
        let r: u64 = rand::rng().random();
        format!("{:x}{r:016x}", crate::time::unix_now())
    }

    /// Free bytes on the spool's filesystem (for unprivileged users).
    pub fn free_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.root.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a zeroed statvfs is a valid out-parameter; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    pub fn tmp_path(&self, qid: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{qid}.eml"))
    }
    pub fn msg_path(&self, qid: &str) -> PathBuf {
        self.root.join("msg").join(format!("{qid}.eml"))
    }
    pub fn out_path(&self, id: &str) -> PathBuf {
        self.root.join("out").join(format!("{id}.pgp"))
    }
    /// The copy of job `n` as the relay gets it.
    pub fn relay_path(&self, qid: &str, n: usize) -> PathBuf {
        self.root.join("out").join(format!("{qid}.{n}.eml"))
    }
    pub fn out_dir(&self) -> PathBuf {
        self.root.join("out")
    }
    fn queue_path(&self, qid: &str) -> PathBuf {
        self.root.join("queue").join(format!("{qid}.json"))
    }
    fn new_envelope_path(&self, qid: &str) -> PathBuf {
        self.root.join("queue").join(format!(".{qid}.json.new"))
    }

    /// Make an accepted message durable: its data (written to
    /// `tmp/<qid>.eml` through `data`) and its envelope are fsync'd, then
    /// moved into `msg/` and `queue/` together with whatever other
    /// sessions are committing (see `commit`). Only after this returns
    /// may the server say 250. On error nothing of the message is left
    /// in the queue.
    pub async fn commit(&self, env: &Envelope, data: Data) -> io::Result<()> {
        let b = serde_json::to_vec_pretty(env).expect("serialisable");
        let path = self.new_envelope_path(&env.qid);
        // The two fsyncs run side by side (the device takes both at once).
        let sync_data = match data {
            Data::Memory(bytes) => {
                let tmp = self.tmp_path(&env.qid);
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                    f.write_all(&bytes)?;
                    f.sync_all()
                })
            }
            Data::File(mut f) => {
                // A write tokio made in the background may have failed; only
                // flush reports it (sync_all and into_std do not).
                use tokio::io::AsyncWriteExt;
                f.flush().await?;
                let f = f.into_std().await;
                tokio::task::spawn_blocking(move || f.sync_all())
            }
        };
        let write_env = tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            f.write_all(&b)?;
            f.sync_all()
        });
        let (a, b) = tokio::join!(sync_data, write_env);
        let durable = a.map_err(io::Error::other)?.and(b.map_err(io::Error::other)?);
        let committed = match durable {
            Ok(()) => {
                let committer = match self.commits.get() {
                    Some(c) => c,
                    None => {
                        let started = commit::Committer::start(self.clone())?;
                        let _ = self.commits.set(started);
                        self.commits.get().expect("just set")
                    }
                };
                committer.commit(&env.qid).await
            }
            Err(e) => Err(e),
        };
        if committed.is_err() {
            let _ = std::fs::remove_file(self.new_envelope_path(&env.qid));
        }
        committed
    }

    /// Remove what a crash left of messages no `250` was given for: data
    /// still in `tmp/`, first envelopes never moved in, and messages in
    /// `msg/` without an envelope. Only for the one smtp2stub of a home
    /// (the role lock), before it accepts anything.
    pub fn sweep(&self) -> io::Result<usize> {
        let mut removed = 0;
        let mut rm = |p: &Path| {
            if std::fs::remove_file(p).is_ok() {
                removed += 1;
            }
        };
        for e in std::fs::read_dir(self.root.join("tmp"))?.flatten() {
            rm(&e.path());
        }
        for e in std::fs::read_dir(self.root.join("queue"))?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // Leftovers of a commit, and of write_atomic's temporary files.
            if name.starts_with('.') && (name.ends_with(".json.new") || name.starts_with(".tmp.")) {
                rm(&e.path());
            }
        }
        for e in std::fs::read_dir(self.root.join("msg"))?.flatten() {
            let name = e.file_name();
            if let Some(qid) = name.to_str().and_then(|n| n.strip_suffix(".eml"))
                && !self.queue_path(qid).exists()
            {
                rm(&e.path());
            }
        }
        Ok(removed)
    }

    /// Hold the envelope `qid` (blocking until whoever holds it is done):
    /// the worker holds it while it works on the envelope, `stubmail
    /// unsend` while it withdraws it, so a message withdrawn while queued
    /// is never uploaded afterwards. Released when the file is dropped.
    pub fn lock(&self, qid: &str) -> io::Result<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("queue").join(format!("{qid}.lock")))?;
        f.lock()?;
        Ok(f)
    }

    /// The queued envelope `qid`, if it is still queued.
    pub fn load(&self, qid: &str) -> io::Result<Option<Envelope>> {
        match std::fs::read(self.queue_path(qid)) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Durably record an envelope's progress.
    pub fn save(&self, env: &Envelope) -> io::Result<()> {
        let b = serde_json::to_vec_pretty(env).expect("serialisable");
        fsutil::write_atomic(&self.queue_path(&env.qid), &b, 0o600)
    }

    /// Every queued envelope (unreadable ones are logged and left alone).
    pub fn queued(&self) -> io::Result<Vec<Envelope>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.root.join("queue"))? {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice(&b)?)) {
                Ok(env) => v.push(env),
                Err(e) => tracing::error!("unreadable queue entry {}: {e:#}", p.display()),
            }
        }
        v.sort_by(|a: &Envelope, b| a.received.cmp(&b.received).then(a.qid.cmp(&b.qid)));
        Ok(v)
    }

    /// All work on an envelope is done: move it to `sent/` and remove the
    /// plaintext and ciphertexts.
    pub fn finish(&self, env: &Envelope) -> io::Result<()> {
        let b = serde_json::to_vec_pretty(env).expect("serialisable");
        fsutil::write_atomic(&self.root.join("sent").join(format!("{}.json", env.qid)), &b, 0o600)?;
        std::fs::remove_file(self.queue_path(&env.qid))?;
        let _ = std::fs::remove_file(self.root.join("queue").join(format!("{}.lock", env.qid)));
        fsync_dir(&self.root.join("queue"))?;
        let _ = std::fs::remove_file(self.msg_path(&env.qid));
        for (n, j) in env.jobs.iter().enumerate() {
            if let Some(id) = &j.id {
                let _ = std::fs::remove_file(self.out_path(id));
            }
            let _ = std::fs::remove_file(self.relay_path(&env.qid, n));
        }
        Ok(())
    }

    /// Whether a message with this queue id was committed (queued or sent):
    /// a list robot names its posts by what they came from, so a post
    /// committed before a crash is not committed again after it.
    pub fn known(&self, qid: &str) -> bool {
        self.queue_path(qid).exists() || self.root.join("sent").join(format!("{qid}.json")).exists()
    }

    /// Finished envelopes, for status.
    pub fn sent(&self) -> io::Result<Vec<Envelope>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.root.join("sent"))? {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            if let Ok(env) = std::fs::read(&p).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice(&b)?)) {
                v.push(env);
            }
        }
        v.sort_by(|a: &Envelope, b| a.received.cmp(&b.received).then(a.qid.cmp(&b.qid)));
        Ok(v)
    }
}
