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

use crate::spool::{Envelope, Job, JobState, Spool};

/// Largest header block read into memory when planning a message.
const MAX_HEADER: usize = 1024 * 1024;

pub struct Worker {
    pub spool: Spool,
    pub keyring: Keyring,
    pub me: Arc<Identity>,
    pub outbox: OutboxClient,
}

/// Retry delay after `attempts` failures: 5 s doubling to at most an hour.
pub fn backoff(attempts: u32) -> i64 {
    (5i64 << attempts.min(10)).min(3600)
}

impl Worker {
    /// Work the queue until shutdown; wake on `kick` or every few seconds.
    pub async fn run(self, kick: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::error!("queue pass failed: {e:#}");
            }
            tokio::select! {
                _ = kick.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass over the queue.
    pub async fn pass(&self) -> anyhow::Result<()> {
        let spool = self.spool.clone();
        let queued = tokio::task::spawn_blocking(move || spool.queued()).await??;
        for env in queued {
            let qid = env.qid.clone();
            if let Err(e) = self.process(env).await {
                tracing::error!(qid, "{e:#}");
            }
        }
        Ok(())
    }

    async fn process(&self, mut env: Envelope) -> anyhow::Result<()> {
        if env.jobs.is_empty() {
            env.jobs = self.plan(&env)?;
            self.spool.save(&env)?;
        }
        let now = stubmail::time::unix_now();
        for i in 0..env.jobs.len() {
            if env.jobs[i].state != JobState::Queued || env.jobs[i].next_try > now {
                continue;
            }
            if env.jobs[i].id.is_none() {
                match self.encrypt(&env, &env.jobs[i]).await {
                    Ok(id) => env.jobs[i].id = Some(id),
                    Err(e) => {
                        // Permanent: the key is gone or unusable.
                        tracing::error!(qid = env.qid, "cannot encrypt: {e:#}");
                        env.jobs[i].state = JobState::Failed;
                        env.jobs[i].last_error = Some(format!("{e:#}"));
                    }
                }
                // The id is durable before the upload: a retry after a crash
                // uploads these same bytes, so the outbox stores one copy.
                self.spool.save(&env)?;
            }
            let job = &mut env.jobs[i];
            let Some(id) = job.id.clone() else { continue };
            let fprs: Vec<_> = job.rcpts.iter().map(|r| r.fpr.clone()).collect();
            match self.outbox.upload(&id, &fprs, &self.spool.out_path(&id)).await {
                Ok(_) => {
                    tracing::info!(qid = env.qid, id, recipients = fprs.len(), "uploaded");
                    job.state = JobState::Uploaded;
                    job.last_error = None;
                }
                Err(e) if e.is_temporary() => {
                    job.attempts += 1;
                    job.next_try = now + backoff(job.attempts);
                    job.last_error = Some(e.to_string());
                    tracing::warn!(qid = env.qid, id, attempts = job.attempts, "upload failed, will retry: {e}");
                }
                Err(e) => {
                    job.state = JobState::Failed;
                    job.last_error = Some(e.to_string());
                    tracing::error!(qid = env.qid, id, "upload refused: {e}");
                }
            }
            self.spool.save(&env)?;
        }
        if env.jobs.iter().all(|j| j.state != JobState::Queued) {
            self.spool.finish(&env)?;
        }
        Ok(())
    }

    /// Visible recipients (in To/Cc) share one copy; every other (Bcc)
    /// recipient gets a copy of their own, so no recipient learns of a Bcc
    /// from the headers or from the encryption layer's recipient list.
    fn plan(&self, env: &Envelope) -> anyhow::Result<Vec<Job>> {
        let header = read_header(&mut File::open(self.spool.msg_path(&env.qid))?)?;
        let visible = stubmail::mail::addresses(&header, &["To", "Cc"]);
        let (shown, hidden): (Vec<_>, Vec<_>) =
            env.rcpts.iter().cloned().partition(|r| visible.contains(&r.addr.to_ascii_lowercase()));
        let job = |rcpts| Job { rcpts, id: None, state: JobState::Queued, attempts: 0, next_try: 0, last_error: None };
        let mut jobs = Vec::new();
        if !shown.is_empty() {
            jobs.push(job(shown));
        }
        jobs.extend(hidden.into_iter().map(|r| job(vec![r])));
        Ok(jobs)
    }

    /// Sign and encrypt one copy into `out/<id>.pgp`, durably; return its id.
    async fn encrypt(&self, env: &Envelope, job: &Job) -> anyhow::Result<String> {
        let mut certs = Vec::new();
        for r in &job.rcpts {
            let c = self
                .keyring
                .get(&r.fpr)?
                .ok_or_else(|| anyhow::anyhow!("the key of {} ({}) is no longer in the keyring", r.addr, r.fpr))?;
            certs.push(c);
        }
        let me = self.me.clone();
        let src = self.spool.msg_path(&env.qid);
        let out_dir = self.spool.out_dir();
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut f = File::open(&src)?;
            let header = read_header(&mut f)?;
            let header = stubmail::mail::remove_fields(&header, &["Bcc"]);
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

/// Read the header block from the start of a file; the file is left
/// positioned right after it.
fn read_header(f: &mut File) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = f.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(len) = stubmail::mail::header_len(&buf) {
            f.seek(SeekFrom::Start(len as u64))?;
            buf.truncate(len);
            return Ok(buf);
        }
        if n == 0 || buf.len() > MAX_HEADER {
            // No blank line: the whole message is header (or the header is
            // huge); treat what we have as the header, the rest as body.
            f.seek(SeekFrom::Start(buf.len() as u64))?;
            return Ok(buf);
        }
    }
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
    fn backoff_grows_and_caps() {
        assert_eq!(super::backoff(0), 5);
        assert_eq!(super::backoff(1), 10);
        assert_eq!(super::backoff(30), 3600);
    }
}
