//! The durable spool. A message is on disk (fsync'd) before smtp2stub says
//! `250`, and every later step records its progress durably *before* acting,
//! so a crash at any point neither loses nor duplicates a message:
//!
//! ```text
//! spool/tmp/<qid>.eml        DATA being received
//! spool/msg/<qid>.eml        accepted message (as received, CRLF)
//! spool/queue/<qid>.json     its Envelope: what is left to do
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

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stubmail::fsutil::{self, fsync_dir};
use stubmail::protocol::Fpr;

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

#[derive(Clone, Debug)]
pub struct Spool {
    root: PathBuf,
}

impl Spool {
    pub fn open(root: &Path) -> io::Result<Spool> {
        for d in ["tmp", "msg", "queue", "out", "sent"] {
            fsutil::ensure_private_dir(&root.join(d))?;
        }
        Ok(Spool { root: root.to_path_buf() })
    }

    pub fn new_qid() -> String {
        use rand::Rng;
        let r: u64 = rand::rng().random();
        format!("{:x}{r:016x}", stubmail::time::unix_now())
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

    /// Make an accepted message durable: the (already fsync'd) tmp file is
    /// moved into `msg/`, then the envelope is written into `queue/`.
    /// Only after this returns may the server say 250.
    pub fn commit(&self, env: &Envelope) -> io::Result<()> {
        std::fs::rename(self.tmp_path(&env.qid), self.msg_path(&env.qid))?;
        fsync_dir(&self.root.join("msg"))?;
        fsync_dir(&self.root.join("tmp"))?;
        self.save(env)
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
