//! Forwarding (`[forward]` in config.toml): incoming mail passed on to
//! another address, re-hosted in the user's own outbox.
//!
//! Of Candler's forwarding options (*IM2000 observations* §7) this is the
//! one where the forwarder *re-hosts*: it fetches the message as any
//! recipient does, then stores a new message of its own for the target,
//! signed by the forwarder and carrying the original untouched under the
//! author's signature. The alternative — passing on a pointer to the
//! author's outbox — would need the author's outbox to serve someone the
//! author never wrote to, and would tell the author where their mail went.
//!
//! The forward is queued in the user's spool (smtp2stub's worker uploads
//! it) *before* the message is delivered locally and acked, under a queue
//! id made from the message id: a crash anywhere neither loses the
//! forward nor queues it twice.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;
use stubmail::config::ForwardConfig;
use stubmail::keyring::Keyring;
use stubmail::spool::{Data, Envelope, Rcpt, Route, Spool};
use stubmail::{pgp, protocol::Fpr};

/// Largest header block read to decide on a forward.
const MAX_HEADER: usize = 1024 * 1024;

/// Everything forwarding needs, made once per poller.
pub struct Forward {
    pub config: ForwardConfig,
    /// The user's own address: MAIL FROM and Resent-From.
    pub me: String,
    pub spool: Spool,
    pub keyring: Keyring,
    /// Whether a `[relay]` is configured (for a target without a key).
    pub relay: bool,
    /// `state/forwarded/<sha256 of Message-ID>`: what was forwarded, so a
    /// message coming back round a loop is not forwarded again.
    pub seen: PathBuf,
}

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Forwarded {
    Queued,
    /// Not forwarded: it does not match, it went round a loop, or the
    /// target cannot be reached. It is delivered locally.
    No(String),
}

impl Forward {
    /// Forward the message in the file `raw` (as `author` signed it, with
    /// `sig`) for message `id`.
    pub fn forward(&self, id: &str, author: &Fpr, raw: &Path, sig: &[u8]) -> anyhow::Result<Forwarded> {
        let header = stubmail::mail::read_header(&mut io::BufReader::new(File::open(raw)?), MAX_HEADER)?;
        let header = &header[..];
        if !self.config.matches(&stubmail::mail::addresses(header, &["From"])) {
            return Ok(Forwarded::No("its From: is not in forward.only_from".into()));
        }
        let hops = stubmail::list::hops(header);
        if hops >= self.config.max_hops {
            return Ok(Forwarded::No(format!("forwarded {hops} times already (forward.max_hops): a loop?")));
        }
        let seen = message_id(header).map(|m| self.seen.join(hex::encode(sha2::Sha256::digest(m.as_bytes()))));
        let qid = format!("f{}", &hex::encode(sha2::Sha256::digest(id.as_bytes()))[..24]);
        if !self.spool.known(&qid) && seen.as_ref().is_some_and(|p| p.exists()) {
            return Ok(Forwarded::No("a message with its Message-ID was forwarded before (a loop?)".into()));
        }
        let to = self.config.to.to_ascii_lowercase();
        let route = match self.keyring.by_email(&to)?.as_slice() {
            [c] if pgp::check_contact(c).is_ok() => Route::Stub { fpr: pgp::fpr_of(c) },
            _ if self.relay => Route::Relay,
            _ => return Ok(Forwarded::No(format!("{to} is no contact and there is no [relay]: forward.to cannot be reached"))),
        };
        if !self.spool.known(&qid) {
            let domain = self.me.rsplit_once('@').map_or("localhost", |(_, d)| d);
            let now = stubmail::time::unix_now();
            // Written where the spool takes a message's data from (the
            // queue id is this message's own: a leftover of a crash here
            // is overwritten), streamed, never whole in memory.
            let data = self.spool.tmp_path(&qid);
            let mut w = io::BufWriter::new(File::create(&data)?);
            w.write_all(&stubmail::list::resent_fields(&self.me, &to, &stubmail::time::rfc5322(now), &format!("<{qid}@{domain}>"), author, sig))?;
            io::copy(&mut File::open(raw)?, &mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            let env = Envelope {
                qid: qid.clone(),
                from: self.me.clone(),
                rcpts: vec![Rcpt { addr: to, route }],
                received: now,
                helo: "forward".into(),
                peer: "http2mbox".into(),
                jobs: vec![],
                subject: None,
                list: false,
            };
            tokio::runtime::Handle::current().block_on(self.spool.commit(&env, Data::File(tokio::fs::File::from_std(file))))?;
        }
        if let Some(p) = seen {
            stubmail::fsutil::ensure_private_dir(&self.seen)?;
            stubmail::fsutil::write_atomic(&p, b"", 0o600)?;
        }
        Ok(Forwarded::Queued)
    }
}

/// The (first) Message-ID of a header block, as written.
fn message_id(header: &[u8]) -> Option<String> {
    header
        .split(|&b| b == b'\n')
        .find(|l| l.len() > 11 && l[..11].eq_ignore_ascii_case(b"message-id:"))
        .map(|l| String::from_utf8_lossy(&l[11..]).trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(dir: &std::path::Path, only_from: &[&str]) -> (Forward, stubmail::Identity) {
        let carol = stubmail::Identity::generate(None, "carol@example.com", "http://127.0.0.1:9/").unwrap();
        let keyring = Keyring::new(dir.join("keyring"));
        keyring.import(vec![carol.cert()]).unwrap();
        let f = Forward {
            config: ForwardConfig { to: "Carol@example.com".into(), only_from: only_from.iter().map(|s| s.to_string()).collect(), keep: true, max_hops: 2 },
            me: "bob@example.net".into(),
            spool: Spool::open(&dir.join("spool")).unwrap(),
            keyring,
            relay: false,
            seen: dir.join("forwarded"),
        };
        (f, carol)
    }

    /// The message in a file, as the forwarder gets it.
    fn file(dir: &std::path::Path, raw: &[u8]) -> PathBuf {
        let p = dir.join("raw.eml");
        std::fs::write(&p, raw).unwrap();
        p
    }

    fn author() -> Fpr {
        Fpr::parse(&"A1".repeat(20)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_message_is_forwarded_once_and_loops_stop() {
        let d = tempfile::tempdir().unwrap();
        let (f, carol) = forward(d.path(), &[]);
        let raw = b"From: alice@example.org\r\nMessage-ID: <m1@example.org>\r\nSubject: x\r\n\r\nbody\r\n";
        let id1 = "1".repeat(64);
        let go = |id: &str, raw: &[u8]| tokio::task::block_in_place(|| f.forward(id, &author(), &file(d.path(), raw), b"sig").unwrap());
        assert_eq!(go(&id1, raw), Forwarded::Queued);
        // The same message again (a crash before it was kept and acked):
        // still one forward.
        assert_eq!(go(&id1, raw), Forwarded::Queued);
        let q = f.spool.queued().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].rcpts[0].route, Route::Stub { fpr: carol.fpr() });
        let sent = std::fs::read(f.spool.msg_path(&q[0].qid)).unwrap();
        let (a, sig, at) = stubmail::list::author_of(&sent).unwrap();
        assert_eq!((a, sig.as_slice(), &sent[at..]), (author(), &b"sig"[..], &raw[..]));
        assert!(sent.starts_with(b"Resent-From: bob@example.net\r\nResent-To: carol@example.com\r\n"));
        // Back round a loop (another message, the same Message-ID): kept, not forwarded.
        assert!(matches!(go(&"2".repeat(64), raw), Forwarded::No(w) if w.contains("forwarded before")));
        // Forwarded max_hops times already.
        let hopped = b"Resent-From: x@y\r\nResent-From: z@y\r\nFrom: alice@example.org\r\n\r\n";
        assert!(matches!(go(&"3".repeat(64), hopped), Forwarded::No(w) if w.contains("max_hops")));
        assert_eq!(f.spool.queued().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn only_matching_mail_goes_and_an_unreachable_target_keeps_it_here() {
        let d = tempfile::tempdir().unwrap();
        let (mut f, _) = forward(d.path(), &["@example.org"]);
        let go = |f: &Forward, id: &str, raw: &[u8]| tokio::task::block_in_place(|| f.forward(id, &author(), &file(d.path(), raw), b"sig").unwrap());
        assert!(matches!(go(&f, &"1".repeat(64), b"From: mallory@evil.example\r\n\r\n"), Forwarded::No(w) if w.contains("only_from")));
        f.config.to = "nobody@example.net".into();
        assert!(matches!(go(&f, &"2".repeat(64), b"From: alice@example.org\r\n\r\n"), Forwarded::No(w) if w.contains("cannot be reached")));
        f.relay = true;
        assert_eq!(go(&f, &"3".repeat(64), b"From: alice@example.org\r\n\r\n"), Forwarded::Queued);
        assert_eq!(f.spool.queued().unwrap()[0].rcpts[0].route, Route::Relay);
    }
}
