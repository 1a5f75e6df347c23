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
}

impl ClientError {
    /// Worth retrying later: network trouble, 5xx, 429, a stale clock.
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Server { status, body } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS || body.error == "stale_timestamp"
                    || body.error == "replayed"
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
        .user_agent(concat!("stubmail/", env!("CARGO_PKG_VERSION")))
        .build()?)
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
        Ok(OutboxClient { http, base, me })
    }

    pub fn base(&self) -> &Url {
        &self.base
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
            .header(protocol::SIGNATURE_HEADER, sig)
            .header(protocol::DIGEST_HEADER, body_sha256))
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or(ErrorBody {
            error: if status.is_server_error() { "internal".into() } else { "bad_request".into() },
            message: text.chars().take(300).collect(),
        });
        Err(ClientError::Server { status, body })
    }

    async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let resp = Self::check(resp).await?;
        Ok(resp.json().await?)
    }

    /// Upload a stored message from a file; `id` must be its SHA-256.
    pub async fn upload(&self, id: &str, recipients: &[Fpr], file: &Path) -> Result<UploadResponse, ClientError> {
        let f = tokio::fs::File::open(file).await.map_err(|e| ClientError::Local(format!("{}: {e}", file.display())))?;
        let len = f.metadata().await.map_err(|e| ClientError::Local(e.to_string()))?.len();
        let req = self
            .request(Method::PUT, &format!("v1/messages/{id}"), id)?
            .header(protocol::RECIPIENTS_HEADER, protocol::format_recipients(recipients))
            .header(reqwest::header::CONTENT_TYPE, "application/pgp-encrypted")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::from(f));
        Self::json(req.send().await?).await
    }

    /// Hand the outbox signed stubs for the recipients of message `id`.
    pub async fn notify(&self, id: &str, req: &protocol::NotifyRequest) -> Result<protocol::NotifyResponse, ClientError> {
        let body = serde_json::to_vec(req).expect("serialisable");
        let r = self
            .request(Method::POST, &format!("v1/messages/{id}/notify"), &sha256_hex(&body))?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Self::json(r.send().await?).await
    }

    /// An account's public certificate, by fingerprint (unsigned, like WKD).
    pub async fn account_cert(http: &reqwest::Client, base: &str, f: &Fpr) -> Result<Vec<u8>, ClientError> {
        let mut s = base.to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        let url = Url::parse(&s).and_then(|u| u.join(&format!("v1/certs/{f}"))).map_err(|_| ClientError::BadUrl(s.clone()))?;
        let r = Self::check(http.get(url).send().await?).await?;
        const MAX_CERT: usize = 1 << 20;
        let b = r.bytes().await?;
        if b.len() > MAX_CERT {
            return Err(ClientError::Local("certificate over 1 MiB".into()));
        }
        Ok(b.to_vec())
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
        let body = serde_json::to_vec(req).expect("serialisable");
        let r = self
            .request(Method::POST, "v1/poll", &sha256_hex(&body))?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Self::json(r.send().await?).await
    }

    /// Start fetching a message from byte `offset` (a resumed download);
    /// the caller streams the body. A `206` answer continues at `offset`,
    /// a `200` starts from the beginning.
    pub async fn fetch(&self, id: &str, offset: u64) -> Result<reqwest::Response, ClientError> {
        let mut r = self.request(Method::GET, &format!("v1/messages/{id}"), protocol::EMPTY_SHA256)?;
        if offset > 0 {
            r = r.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        Self::check(r.send().await?).await
    }

    pub async fn ack(&self, id: &str, device: Option<&str>) -> Result<MessageStatus, ClientError> {
        let body = serde_json::to_vec(&protocol::AckRequest { device: device.map(str::to_string) }).expect("serialisable");
        let r = self
            .request(Method::POST, &format!("v1/messages/{id}/ack"), &sha256_hex(&body))?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Self::json(r.send().await?).await
    }

    pub async fn status(&self, id: &str) -> Result<MessageStatus, ClientError> {
        let r = self.request(Method::GET, &format!("v1/messages/{id}/status"), protocol::EMPTY_SHA256)?;
        Self::json(r.send().await?).await
    }

    /// The account's limits and usage (docs/PROTOCOL.md §4.7).
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
