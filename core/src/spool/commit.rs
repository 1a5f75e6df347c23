//! Group commit: the step that makes an accepted message part of the queue.
//!
//! Each session makes its own files durable (the message in `tmp/`, its
//! envelope in `queue/.<qid>.json.new`, both fsync'd, sessions in
//! parallel). What remains is to move them into place and make the moves
//! durable — two directory fsyncs. One thread does that for every message
//! that is waiting when it gets round to it, so ten sessions ending DATA at
//! once cost two directory fsyncs, not twenty (Postfix's and the databases'
//! group commit). No session hears `250` before its own moves are durable.
//!
//! Order within a batch, and why: every message is moved into `msg/` and
//! `msg/` is fsync'd *before* any envelope appears in `queue/`, so a durable
//! envelope always has its message. A crash before the end leaves at most
//! files no `250` was given for; `Spool::sweep` removes them at start.

use std::io;
use std::sync::mpsc;

use crate::fsutil::fsync_dir;

use super::Spool;

/// One message waiting for its commit, and who waits for the answer.
struct Pending {
    qid: String,
    done: tokio::sync::oneshot::Sender<io::Result<()>>,
}

/// The handle sessions submit their commits through (see the module).
#[derive(Debug)]
pub(super) struct Committer {
    tx: mpsc::Sender<Pending>,
}

impl Committer {
    /// Start the commit thread for `spool`; it ends when the last handle
    /// is dropped.
    pub(super) fn start(spool: Spool) -> io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<Pending>();
        std::thread::Builder::new().name("spool-commit".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                // Everything that queued up while the last batch was being
                // committed goes in this one.
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let qids: Vec<&str> = batch.iter().map(|p| p.qid.as_str()).collect();
                let results = spool.commit_batch(&qids);
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.done.send(r);
                }
            }
        })?;
        Ok(Committer { tx })
    }

    /// Commit `qid` with whatever else is waiting; Ok once it is durably
    /// queued.
    pub(super) async fn commit(&self, qid: &str) -> io::Result<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Pending { qid: qid.to_string(), done }).map_err(|_| io::Error::other("the spool's commit thread has stopped"))?;
        answer.await.map_err(|_| io::Error::other("the spool's commit thread has stopped"))?
    }
}

/// An error for each of several waiters (io::Error is not Clone); the OS
/// error code is kept, so "no space left" still reads as such.
fn copy(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl Spool {
    /// Move each message of the batch, then each envelope, into place;
    /// one result per qid. A message whose commit failed leaves nothing
    /// behind in `msg/` or `queue/` (as far as removing it succeeds), so a
    /// client told to try again does not also get the first copy sent.
    fn commit_batch(&self, qids: &[&str]) -> Vec<io::Result<()>> {
        let mut results: Vec<io::Result<()>> =
            qids.iter().map(|q| std::fs::rename(self.tmp_path(q), self.msg_path(q))).collect();
        if let Err(e) = fsync_dir(&self.root.join("msg")) {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(copy(&e));
            }
        }
        for (q, r) in qids.iter().zip(results.iter_mut()) {
            if r.is_ok() {
                *r = std::fs::rename(self.new_envelope_path(q), self.queue_path(q));
            }
        }
        if let Err(e) = fsync_dir(&self.root.join("queue")) {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(copy(&e));
            }
        }
        for (q, r) in qids.iter().zip(&results) {
            if r.is_err() {
                let _ = std::fs::remove_file(self.queue_path(q));
                let _ = std::fs::remove_file(self.new_envelope_path(q));
                let _ = std::fs::remove_file(self.msg_path(q));
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Data, Envelope, Spool};

    fn envelope(qid: &str) -> Envelope {
        Envelope {
            qid: qid.into(),
            from: "alice@example.org".into(),
            rcpts: vec![],
            received: 0,
            helo: "client".into(),
            peer: "127.0.0.1".into(),
            jobs: vec![],
            subject: None,
            list: false,
        }
    }

    async fn accept(spool: &Spool, qid: &str) -> std::io::Result<()> {
        // Half the messages as large ones (spilled to a file as they came).
        let mut data = Data::Memory(Vec::new());
        let body = if qid.ends_with(['1', '3', '5', '7', '9']) { "y".repeat(300_000) } else { "body".into() };
        data.write_all(format!("Subject: {qid}\r\n\r\n{body}\r\n").as_bytes(), &spool.tmp_path(qid)).await?;
        spool.commit(&envelope(qid), data).await
    }

    /// Sessions ending DATA together are committed together, and each
    /// message lands whole: its data in msg/, its envelope in queue/,
    /// nothing left in tmp/.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_sessions_at_once_all_land() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        let tasks: Vec<_> = (0..50).map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move { accept(&spool, &format!("q{i:03}")).await })
        }).collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let queued = spool.queued().unwrap();
        assert_eq!(queued.len(), 50);
        for e in &queued {
            let data = std::fs::read_to_string(spool.msg_path(&e.qid)).unwrap();
            assert!(data.contains(&format!("Subject: {}", e.qid)));
        }
        assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(d.path().join("queue")).unwrap().count(), 50, "no first envelopes left behind");
        assert_eq!(spool.sweep().unwrap(), 0, "nothing of an acknowledged message is swept");
    }

    /// A commit that cannot complete leaves nothing in the queue.
    #[tokio::test]
    async fn a_failed_commit_leaves_nothing_queued() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        // The spool's tmp/ is not writable (a file stands in its way).
        std::fs::write(spool.tmp_path("gone"), "in the way").unwrap();
        assert!(spool.commit(&envelope("gone"), Data::Memory(b"Subject: x\r\n\r\n".to_vec())).await.is_err());
        std::fs::remove_file(spool.tmp_path("gone")).unwrap();
        assert!(spool.queued().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(d.path().join("queue")).unwrap().count(), 0);
        // The commit thread goes on serving later commits.
        accept(&spool, "next").await.unwrap();
        assert_eq!(spool.queued().unwrap().len(), 1);
    }

    /// A spilled message whose last write failed in the background (the
    /// disk is full) is not committed: no 250 for a truncated message.
    #[tokio::test]
    async fn a_write_that_failed_in_the_background_is_not_committed() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        // /dev/full: every write fails with "no space left on device".
        let full = tokio::fs::OpenOptions::new().write(true).open("/dev/full").await.unwrap();
        let mut data = Data::File(full);
        // tokio hands the write to a thread and reports success at once.
        data.write_all(&[b'x'; 4096], &spool.tmp_path("full")).await.unwrap();
        let e = spool.commit(&envelope("full"), data).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28), "{e}");
        assert!(spool.queued().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(d.path().join("queue")).unwrap().count(), 0);
    }

    /// What a crash leaves of messages never acknowledged goes at start;
    /// queued messages stay.
    #[tokio::test]
    async fn the_sweep_removes_only_unacknowledged_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        accept(&spool, "kept").await.unwrap();
        std::fs::write(spool.tmp_path("half"), "Subject: half").unwrap();
        std::fs::write(spool.new_envelope_path("half"), "{").unwrap();
        std::fs::write(spool.msg_path("orphan"), "Subject: orphan").unwrap();
        assert_eq!(spool.sweep().unwrap(), 3);
        assert_eq!(spool.queued().unwrap().len(), 1);
        assert!(spool.msg_path("kept").exists());
        assert!(!spool.msg_path("orphan").exists());
        assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}
