//! One poll cycle: ask every contact's outbox for mail (one request per
//! outbox server, naming all of its senders), then fetch, check, decrypt,
//! deliver and ack each message.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use stubmail::client::OutboxClient;
use stubmail::openpgp::Cert;
use stubmail::protocol::{Fpr, PollItem, PollRequest};
use stubmail::{pgp, Identity};
use tokio::io::AsyncWriteExt;

use stubmail::maildir::{CrlfToLf, Journal, Maildir};

/// Outboxes polled at the same time.
const CONCURRENCY: usize = 8;
/// Largest header block read into memory to check the From: field.
const MAX_HEADER: usize = 1024 * 1024;

/// Everything a poll cycle needs.
pub struct Poller {
    pub me: Arc<Identity>,
    pub keyring: stubmail::keyring::Keyring,
    pub http: reqwest::Client,
    pub maildir: Maildir,
    pub journal: Journal,
    /// Download staging directory (`state/fetch`).
    pub staging: PathBuf,
    /// Largest message fetched.
    pub max_size: u64,
    /// Name in trace headers.
    pub hostname: String,
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub outboxes: usize,
    pub delivered: usize,
    pub rejected: usize,
    pub failed_outboxes: usize,
}

/// A contact we fetch from: their certificate and where their outbox is.
struct Contact {
    cert: Cert,
    fpr: Fpr,
}

#[derive(Debug, thiserror::Error)]
enum Reject {
    #[error("announced for another recipient ({0})")]
    WrongRecipient(Fpr),
    #[error("sender {0} was not asked about at this outbox")]
    UnknownSender(Fpr),
    #[error("size {0} is over the limit of {1} bytes")]
    TooLarge(u64, u64),
    #[error("content SHA-256 {0} does not match the id")]
    Digest(String),
    #[error("signature or decryption check failed: {0}")]
    Crypto(String),
}

impl Poller {
    /// Run one poll cycle over the whole keyring.
    pub async fn poll_once(&self) -> anyhow::Result<Report> {
        let j = self.journal.clone();
        let md = self.maildir.clone();
        let recovered = tokio::task::spawn_blocking(move || j.recover(&md)).await??;
        if recovered > 0 {
            tracing::info!(recovered, "finished interrupted deliveries");
        }
        // Group contacts by the outbox bound into their own certificate.
        let mut by_outbox: BTreeMap<String, Vec<Contact>> = BTreeMap::new();
        for cert in self.keyring.all()? {
            if pgp::check_contact(&cert).is_err() {
                continue;
            }
            if let Some(url) = pgp::outbox_of(&cert) {
                let fpr = pgp::fpr_of(&cert);
                by_outbox.entry(url).or_default().push(Contact { cert, fpr });
            }
        }
        let mut report = Report { outboxes: by_outbox.len(), ..Report::default() };
        let results: Vec<_> = futures_util::stream::iter(by_outbox)
            .map(|(url, contacts)| async move {
                let r = self.poll_outbox(&url, &contacts).await;
                (url, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (url, r) in results {
            match r {
                Ok((d, rej)) => {
                    report.delivered += d;
                    report.rejected += rej;
                }
                Err(e) => {
                    report.failed_outboxes += 1;
                    tracing::warn!(outbox = url, "poll failed: {e:#}");
                }
            }
        }
        Ok(report)
    }

    async fn poll_outbox(&self, url: &str, contacts: &[Contact]) -> anyhow::Result<(usize, usize)> {
        let client = OutboxClient::new(self.http.clone(), url, self.me.clone())?;
        let req = PollRequest {
            senders: Some(contacts.iter().map(|c| c.fpr.clone()).collect()),
            certs: vec![pgp::armored(&self.me.cert())?],
        };
        let resp = client.poll(&req).await?;
        let (mut delivered, mut rejected) = (0, 0);
        for item in resp.messages {
            match self.take(&client, contacts, &item).await {
                Ok(true) => delivered += 1,
                Ok(false) => {}
                Err(e) => match e.downcast_ref::<Reject>() {
                    Some(r) => {
                        rejected += 1;
                        tracing::warn!(outbox = url, id = item.id, sender = %item.sender, "not delivered: {r}");
                    }
                    None => tracing::warn!(outbox = url, id = item.id, "will retry: {e:#}"),
                },
            }
        }
        Ok((delivered, rejected))
    }

    /// Fetch, check, deliver and ack one message. Ok(true) if newly delivered.
    async fn take(&self, client: &OutboxClient, contacts: &[Contact], item: &PollItem) -> anyhow::Result<bool> {
        if !stubmail::protocol::is_valid_id(&item.id) {
            anyhow::bail!(Reject::Digest(item.id.chars().take(80).collect()));
        }
        if item.recipient != self.me.fpr() {
            anyhow::bail!(Reject::WrongRecipient(item.recipient.clone()));
        }
        // The signer must be the sender we asked this outbox about: an
        // outbox cannot make us accept mail from anyone else.
        let sender = contacts
            .iter()
            .find(|c| c.fpr == item.sender)
            .ok_or_else(|| Reject::UnknownSender(item.sender.clone()))?;
        if self.journal.get(&item.id)?.is_some() {
            // Delivered before a crash or a lost ack: just confirm again.
            client.ack(&item.id).await?;
            return Ok(false);
        }
        if item.size > self.max_size {
            anyhow::bail!(Reject::TooLarge(item.size, self.max_size));
        }
        let staged = self.download(client, item).await?;
        let me = self.me.clone();
        let cert = sender.cert.clone();
        let md = self.maildir.clone();
        let journal = self.journal.clone();
        let id = item.id.clone();
        let outbox_host = client.base().host_str().unwrap_or("outbox").to_string();
        let hostname = self.hostname.clone();
        let staged2 = staged.clone();
        let result = tokio::task::spawn_blocking(move || {
            deliver(&me, &cert, &staged2, &md, &journal, &id, &outbox_host, &hostname)
        })
        .await?;
        let _ = tokio::fs::remove_file(&staged).await;
        result?;
        // Only now, with the message durably in the mailbox, confirm.
        if let Err(e) = client.ack(&item.id).await {
            tracing::warn!(id = item.id, "delivered, ack failed (will ack on the next poll): {e}");
        }
        tracing::info!(id = item.id, sender = %item.sender, "delivered");
        Ok(true)
    }

    /// Stream the ciphertext to a staging file, checking size and digest.
    async fn download(&self, client: &OutboxClient, item: &PollItem) -> anyhow::Result<PathBuf> {
        tokio::fs::create_dir_all(&self.staging).await?;
        let path = self.staging.join(format!("{}.part", item.id));
        let resp = client.fetch(&item.id).await?;
        let mut f = tokio::fs::File::create(&path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = resp.bytes_stream().map_err(io::Error::other);
        let result: anyhow::Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                size += chunk.len() as u64;
                if size > item.size.min(self.max_size) {
                    anyhow::bail!(Reject::TooLarge(size, item.size.min(self.max_size)));
                }
                hasher.update(&chunk);
                f.write_all(&chunk).await?;
            }
            f.flush().await?;
            let got = hex::encode(hasher.finalize());
            if got != item.id {
                anyhow::bail!(Reject::Digest(got));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Ok(path)
    }
}

/// Decrypt and verify a staged message and deliver it into the Maildir with
/// trace headers; journal it. Nothing reaches `new/` unless the whole
/// message decrypted and the signature by `sender` verified.
#[allow(clippy::too_many_arguments)]
fn deliver(
    me: &Identity,
    sender: &Cert,
    staged: &std::path::Path,
    md: &Maildir,
    journal: &Journal,
    id: &str,
    outbox_host: &str,
    hostname: &str,
) -> anyhow::Result<()> {
    let input = std::fs::File::open(staged)?;
    let plain = pgp::decrypt_verify(me, sender, input).map_err(|e| Reject::Crypto(e.to_string()))?;
    let mut plain = BufReader::with_capacity(64 * 1024, plain);
    let (name, file) = md.create_tmp()?;
    let result = (|| -> anyhow::Result<()> {
        let header = read_header(&mut plain).map_err(|e| Reject::Crypto(e.to_string()))?;
        let trace = trace_headers(sender, &header, id, outbox_host, hostname);
        let mut w = CrlfToLf::new(io::BufWriter::new(file));
        w.write_all(trace.as_bytes())?;
        w.write_all(&header)?;
        // Errors from `plain` here include a bad signature, found at EOF.
        io::copy(&mut plain, &mut w).map_err(|e| Reject::Crypto(e.to_string()))?;
        let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        md.discard(&name);
        return Err(e);
    }
    journal.record(id, &name)?;
    md.commit(&name)?;
    Ok(())
}

/// Read the plaintext's header block (bounded), leaving the body.
fn read_header(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut header = Vec::new();
    loop {
        let before = header.len();
        let n = r.take((MAX_HEADER - header.len().min(MAX_HEADER)) as u64).read_until(b'\n', &mut header)?;
        if n == 0 || header.len() >= MAX_HEADER {
            return Ok(header);
        }
        let line = &header[before..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(header);
        }
    }
}

/// The headers http2mbox adds on top (docs/PROTOCOL.md §6).
fn trace_headers(sender: &Cert, header: &[u8], id: &str, outbox_host: &str, hostname: &str) -> String {
    let fpr = pgp::fpr_of(sender);
    let signer_emails = pgp::emails_of(sender);
    let from = stubmail::mail::addresses(header, &["From"]);
    let from_ok = !from.is_empty() && from.iter().all(|a| signer_emails.contains(a));
    let signer = signer_emails.first().cloned().unwrap_or_default();
    let now = stubmail::time::unix_now();
    format!(
        "Return-Path: <{signer}>\r\n\
         Received: by {hostname} (http2mbox) from {outbox_host}\r\n\twith stubmail id {id};\r\n\t{}\r\n\
         Authentication-Results: {hostname}; stubmail=pass smtp.mailfrom={signer}\r\n\
         \theader.from={} (from={})\r\n\
         Stubmail-Sender-Fingerprint: {fpr}\r\n\
         Stubmail-Id: {id}\r\n",
        stubmail::time::rfc5322(now),
        from.first().map(String::as_str).unwrap_or("(none)"),
        if from_ok { "pass" } else { "fail" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reading_stops_at_blank_line() {
        let mut r = BufReader::new(&b"A: 1\r\nB: 2\r\n\r\nbody\r\n"[..]);
        assert_eq!(read_header(&mut r).unwrap(), b"A: 1\r\nB: 2\r\n\r\n");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"body\r\n");
    }

    #[test]
    fn from_check_in_trace_headers() {
        let a = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let t = trace_headers(&a.cert(), b"From: Alice <Alice@Example.org>\r\n\r\n", "ab", "h", "me");
        assert!(t.contains("(from=pass)"), "{t}");
        let t = trace_headers(&a.cert(), b"From: ceo@bank.example\r\n\r\n", "ab", "h", "me");
        assert!(t.contains("(from=fail)") && t.contains(&format!("Stubmail-Sender-Fingerprint: {}", a.fpr())), "{t}");
    }
}
