//! The signed HTTP client of an outbox (docs/PROTOCOL.md §4), used by
//! smtp2stub (upload), http2mbox (poll, fetch, ack) and `stubmail` (status,
//! unsend).

use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};

use crate::protocol::{self, ErrorBody, Fpr, MessageList, MessageStatus, PollRequest, PollResponse, UploadResponse};
use crate::Identity;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("outbox URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot reach the outbox: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("outbox answered {status}: {} ({})", body.message, body.error)]
    Server { status: StatusCode, body: ErrorBody },
    #[error("{0}")]
    Local(String),
    #[error("the answer is larger than {0} bytes: refused")]
    TooLarge(usize),
}

impl ClientError {
    /// Worth retrying later: network trouble, 5xx, 408, 429, a stale clock,
    /// a suspended account.
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Server { status, body } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || body.error == "stale_timestamp"
                    || body.error == "replayed"
                    // Until the operator resumes the account: the message
                    // waits in the spool (`stubmail status` says why).
                    || body.error == "account_suspended"
            }
            _ => false,
        }
    }
}

/// Install rustls' ring provider once per process (reqwest is built without
/// a default provider, so no C toolchain is needed for aws-lc).
pub fn init_tls() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A shared HTTP client with the timeouts a mail system wants: short
/// connects, bounded reads, never hanging on one slow outbox.
pub fn http_client() -> Result<reqwest::Client, ClientError> {
    http_client_with_timeout(Duration::from_secs(60))
}

/// As [`http_client`], with `timeout` for connecting and for each read.
pub fn http_client_with_timeout(timeout: Duration) -> Result<reqwest::Client, ClientError> {
    init_tls();
    Ok(reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        // Small requests, each answered before the next: no Nagle waits.
        .tcp_nodelay(true)
        .user_agent(concat!("stubmail/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// [`http_client_with_timeout`] that follows no redirect: for fetching
/// from a server the user named (a shared blocklist), which must not be
/// able to send the user's machine to some other (internal) address.
pub fn http_client_no_redirects(timeout: Duration) -> Result<reqwest::Client, ClientError> {
    init_tls();
    Ok(reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stubmail/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Largest error body read from a peer (only its first 300 characters are
/// shown anyway).
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest JSON answer read from an outbox (a poll answer lists at most a
/// few thousand messages of a few hundred bytes each).
pub const MAX_JSON_ANSWER: usize = 16 << 20;
/// Every request to an outbox is over within this long, its whole answer
/// included (a fetch gets more, by its size): a peer that sends one byte
/// just inside each read timeout gains nothing.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// The slowest transfer an upload or a fetch is given time for.
pub const MIN_FETCH_RATE: u64 = 64 * 1024;

/// Read a response's body, at most `max` bytes: whatever a peer claims or
/// sends, no more is held in memory.
pub async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ClientError> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(ClientError::TooLarge(max));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            return Err(ClientError::TooLarge(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// One outbox, spoken to as one identity.
#[derive(Clone, Debug)]
pub struct OutboxClient {
    http: reqwest::Client,
    base: Url,
    me: Arc<Identity>,
    /// Whole-request deadline (see [`REQUEST_DEADLINE`]).
    deadline: Duration,
}

impl OutboxClient {
    pub fn new(http: reqwest::Client, base: &str, me: Arc<Identity>) -> Result<Self, ClientError> {
        let mut s = base.to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        let base = Url::parse(&s).map_err(|_| ClientError::BadUrl(base.into()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl(s));
        }
        Ok(OutboxClient { http, base, me, deadline: REQUEST_DEADLINE })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// A whole-request deadline other than [`REQUEST_DEADLINE`] (e.g. the
    /// poller's `poll.timeout_secs`).
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// The deadline of a request moving `bytes` of message: the usual one,
    /// plus the time those bytes take at [`MIN_FETCH_RATE`].
    fn transfer_deadline(&self, bytes: u64) -> Duration {
        self.deadline + Duration::from_secs(bytes / MIN_FETCH_RATE)
    }

    fn request(&self, method: Method, rel: &str, body_sha256: &str) -> Result<reqwest::RequestBuilder, ClientError> {
        let url = self.base.join(rel).map_err(|_| ClientError::BadUrl(rel.into()))?;
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path = format!("{path}?{q}");
        }
        let sig = crate::auth::sign_request(&self.me, self.base.as_str(), method.as_str(), &path, body_sha256, crate::time::unix_now())
            .map_err(|e| ClientError::Local(e.to_string()))?;
        Ok(self
            .http
            .request(method, url)
            .timeout(self.deadline)
            .header(protocol::SIGNATURE_HEADER, sig)
            .header(protocol::DIGEST_HEADER, body_sha256))
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = read_limited(resp, MAX_ERROR_BODY).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or(ErrorBody {
            error: if status.is_server_error() { "internal".into() } else { "bad_request".into() },
            message: text.chars().take(300).collect(),
        });
        Err(ClientError::Server { status, body })
    }

    async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let resp = Self::check(resp).await?;
        let body = read_limited(resp, MAX_JSON_ANSWER).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Local(format!("the outbox's answer is not what the protocol says: {e}")))
    }

    /// Upload a stored message from a file; `id` must be its SHA-256.
    pub async fn upload(&self, id: &str, recipients: &[Fpr], file: &Path) -> Result<UploadResponse, ClientError> {
        let f = tokio::fs::File::open(file).await.map_err(|e| ClientError::Local(format!("{}: {e}", file.display())))?;
        let len = f.metadata().await.map_err(|e| ClientError::Local(e.to_string()))?.len();
        let req = self
            .request(Method::PUT, &format!("v1/messages/{id}"), id)?
            // The deadline is for the answer; the bytes get their time.
            .timeout(self.transfer_deadline(len))
            .header(protocol::RECIPIENTS_HEADER, protocol::format_recipients(recipients))
            .header(reqwest::header::CONTENT_TYPE, "application/pgp-encrypted")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::from(f));
        Self::json(req.send().await?).await
    }

    /// Archive a public list's post at its outbox (`PUT /v1/archive/<id>`,
    /// docs/PROTOCOL.md §10.5) with the list's detached signature over it.
    pub async fn archive(&self, post: Vec<u8>, sig: &[u8]) -> Result<(), ClientError> {
        use base64::Engine;
        let id = sha256_hex(&post);
        let len = post.len() as u64;
        let req = self
            .request(Method::PUT, &format!("v1/archive/{id}"), &id)?
            .timeout(self.transfer_deadline(len))
            .header("Stubmail-Archive-Signature", base64::engine::general_purpose::STANDARD.encode(sig))
            .header(reqwest::header::CONTENT_TYPE, "message/rfc822")
            .body(post);
        Self::check(req.send().await?).await.map(|_| ())
    }

    /// Hand the outbox the signed stubs of several messages with one
    /// request (`POST /v1/notify`); an outbox without it (404 or 405) is
    /// handed them message by message.
    pub async fn notify_many(&self, req: &protocol::NotifyBatchRequest) -> Result<protocol::NotifyResponse, ClientError> {
        if let Some(answer) = self.post_batch("v1/notify", req).await? {
            return Ok(answer);
        }
        let mut accepted = 0;
        for m in &req.messages {
            accepted += self.notify(&m.id, &protocol::NotifyRequest { stubs: m.stubs.clone() }).await?.accepted;
        }
        Ok(protocol::NotifyResponse { accepted })
    }

    /// Hand the outbox signed stubs for the recipients of message `id`.
    pub async fn notify(&self, id: &str, req: &protocol::NotifyRequest) -> Result<protocol::NotifyResponse, ClientError> {
        self.post_json(&format!("v1/messages/{id}/notify"), req).await
    }

    /// A signed POST of a JSON body, its JSON answer.
    async fn post_json<T: serde::de::DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).expect("serialisable");
        let r = self
            .request(Method::POST, path, &sha256_hex(&body))?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Self::json(r.send().await?).await
    }

    /// [`OutboxClient::post_json`] to a batch endpoint; `None` from an
    /// outbox that predates it (404 or 405 for the path: a batch endpoint
    /// answers missing items in its body, never with 404).
    async fn post_batch<T: serde::de::DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> Result<Option<T>, ClientError> {
        match self.post_json(path, body).await {
            Err(ClientError::Server { status, .. }) if status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND => Ok(None),
            r => r.map(Some),
        }
    }

    /// An account's public certificate, by fingerprint (unsigned, like WKD).
    pub async fn account_cert(http: &reqwest::Client, base: &str, f: &Fpr, deadline: Duration) -> Result<Vec<u8>, ClientError> {
        let mut s = base.to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        let url = Url::parse(&s).and_then(|u| u.join(&format!("v1/certs/{f}"))).map_err(|_| ClientError::BadUrl(s.clone()))?;
        let r = Self::check(http.get(url).timeout(deadline).send().await?).await?;
        read_limited(r, 1 << 20).await
    }

    /// One UDP poll round trip (§8) to the outbox's host at `port` for
    /// these cookies. `counter` must exceed every counter used before with
    /// them. Returns each cookie's status, or `None` if no authentic
    /// answer for all of them arrived within `timeout` (then: signed poll).
    pub async fn udp_poll(
        &self,
        port: u16,
        cookies: &[(protocol::udp::CookieId, protocol::udp::CookieKey)],
        counter: u64,
        timeout: std::time::Duration,
    ) -> Option<Vec<protocol::udp::PollStatus>> {
        use protocol::udp;
        let host = self.base.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
        let addr = tokio::net::lookup_host((host.as_str(), port)).await.ok()?.next()?;
        let bind: std::net::SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
        sock.connect(addr).await.ok()?;
        let mut out = Vec::with_capacity(cookies.len());
        for chunk in cookies.chunks(udp::MAX_COOKIES) {
            let entries: Vec<_> = chunk.iter().map(|(id, key)| udp::PollEntry::new(*id, key, counter)).collect();
            sock.send(&udp::encode_poll(&entries).ok()?).await.ok()?;
            let mut buf = [0u8; udp::MAX_DATAGRAM];
            // Ignore stray or forged datagrams until the deadline.
            let deadline = tokio::time::Instant::now() + timeout;
            let statuses = loop {
                let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await.ok()?.ok()?;
                let Ok(reply) = udp::decode_reply(&buf[..n]) else { continue };
                let got: Option<Vec<_>> = chunk
                    .iter()
                    .map(|(id, key)| reply.iter().find(|r| &r.cookie == id && r.verify(key, counter)).map(|r| r.status))
                    .collect();
                let authentic = chunk.iter().any(|(id, key)| reply.iter().any(|r| &r.cookie == id && r.verify(key, counter)));
                match got {
                    Some(s) => break s,
                    // The outbox answered but not for every cookie (some are
                    // unknown to it now): no need to wait for the timeout.
                    None if authentic => return None,
                    None => continue,
                }
            };
            out.extend(statuses);
        }
        Some(out)
    }

    pub async fn poll(&self, req: &PollRequest) -> Result<PollResponse, ClientError> {
        self.post_json("v1/poll", req).await
    }

    /// Start fetching a message from byte `offset` (a resumed download);
    /// the caller streams the body. A `206` answer continues at `offset`,
    /// a `200` starts from the beginning.
    /// `size`: the size announced, which buys the transfer its time (at
    /// [`MIN_FETCH_RATE`]) on top of the deadline.
    pub async fn fetch(&self, id: &str, offset: u64, size: u64) -> Result<reqwest::Response, ClientError> {
        let mut r = self
            .request(Method::GET, &format!("v1/messages/{id}"), protocol::EMPTY_SHA256)?
            .timeout(self.transfer_deadline(size.saturating_sub(offset)));
        if offset > 0 {
            r = r.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        Self::check(r.send().await?).await
    }

    pub async fn ack(&self, id: &str, device: Option<&str>) -> Result<MessageStatus, ClientError> {
        self.post_json(&format!("v1/messages/{id}/ack"), &protocol::AckRequest { device: device.map(str::to_string) }).await
    }

    /// Ack several messages with one signed request (`POST /v1/acks`);
    /// an outbox that predates it (404 or 405 for the path) is acked one
    /// message at a time. At most [`protocol::MAX_ACK_BATCH`] ids.
    pub async fn ack_many(&self, ids: &[String], device: Option<&str>) -> Result<protocol::AckBatchResponse, ClientError> {
        let req = protocol::AckBatchRequest { ids: ids.to_vec(), device: device.map(str::to_string) };
        if let Some(answer) = self.post_batch("v1/acks", &req).await? {
            return Ok(answer);
        }
        let mut out = protocol::AckBatchResponse::default();
        for id in ids {
            match self.ack(id, device).await {
                Ok(st) => out.acked.push(st),
                Err(ClientError::Server { status, .. }) if status == StatusCode::NOT_FOUND => out.not_found.push(id.clone()),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Report a message this recipient received as abuse, to its
    /// sender's outbox (`POST /v1/messages/<id>/complaint`).
    pub async fn complain(&self, id: &str, req: &protocol::ComplaintRequest) -> Result<protocol::ComplaintResponse, ClientError> {
        self.post_json(&format!("v1/messages/{id}/complaint"), req).await
    }

    pub async fn status(&self, id: &str) -> Result<MessageStatus, ClientError> {
        let r = self.request(Method::GET, &format!("v1/messages/{id}/status"), protocol::EMPTY_SHA256)?;
        Self::json(r.send().await?).await
    }

    /// The account's limits and usage (docs/PROTOCOL.md §4.7).
    /// Hand this outbox the account's updated certificate (after a move to
    /// another outbox, so contacts polling here learn where to go).
    pub async fn update_account_cert(&self, cert: &sequoia_openpgp::Cert) -> Result<(), ClientError> {
        let body = crate::pgp::binary(cert).map_err(|e| ClientError::Local(e.to_string()))?;
        let digest = sha256_hex(&body);
        let r = self.request(Method::PUT, "v1/account", &digest)?.body(body);
        let _: protocol::NotifyResponse = Self::json(r.send().await?).await?;
        Ok(())
    }

    pub async fn account(&self) -> Result<protocol::AccountStatus, ClientError> {
        let r = self.request(Method::GET, "v1/account", protocol::EMPTY_SHA256)?;
        Self::json(r.send().await?).await
    }

    pub async fn list(&self) -> Result<MessageList, ClientError> {
        let r = self.request(Method::GET, "v1/messages", protocol::EMPTY_SHA256)?;
        Self::json(r.send().await?).await
    }

    pub async fn unsend(&self, id: &str) -> Result<MessageStatus, ClientError> {
        let r = self.request(Method::DELETE, &format!("v1/messages/{id}"), protocol::EMPTY_SHA256)?;
        Self::json(r.send().await?).await
    }
}
