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

use std::path::PathBuf;

use sha2::Digest;
use stubmail::config::ForwardConfig;
use stubmail::keyring::Keyring;
use stubmail::spool::{Data, Envelope, Rcpt, Route, Spool};
use stubmail::{pgp, protocol::Fpr};

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
    /// Forward `raw` (as `author` signed it, with `sig`) for message `id`.
    pub fn forward(&self, id: &str, author: &Fpr, raw: &[u8], sig: &[u8]) -> anyhow::Result<Forwarded> {
        let header = &raw[..stubmail::mail::header_len(raw).unwrap_or(raw.len())];
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
            let mut bytes = stubmail::list::resent_fields(&self.me, &to, &stubmail::time::rfc5322(now), &format!("<{qid}@{domain}>"), author, sig);
            bytes.extend_from_slice(raw);
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
            tokio::runtime::Handle::current().block_on(self.spool.commit(&env, Data::Memory(bytes)))?;
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
