//! One request in, one response out: routing, authentication, limits and
//! error mapping. Synchronous and server-agnostic, so `serve` (hyper) and
//! CGI mode run exactly the same code.

use std::io::{self, Read};

use sha2::{Digest, Sha256};
use stubmail::auth::{self, AuthError};
use stubmail::pgp;
use stubmail::protocol::{self, DeliveryState, ErrorBody, Fpr, MessageList, MessageStatus, PollRequest, PollResponse, UploadResponse};

use crate::store::{Store, StoreError};

/// Largest JSON request body (polls, acks).
pub const MAX_JSON_BODY: u64 = 1024 * 1024;

/// Settings of one outbox.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Path prefix the outbox is served under, e.g. "/" or "/stubmail/".
    pub prefix: String,
    /// Largest stored message accepted, in bytes.
    pub max_message_size: u64,
    /// Connections `serve` holds per client address (behind a reverse
    /// proxy every request comes from the proxy: raise it there).
    pub max_connections_per_ip: usize,
    /// Base URLs this outbox answers to besides those its accounts'
    /// certificates bind (`--public-url`, `POST_MANAGER_PUBLIC_URL`), as
    /// [`protocol::outbox_id`] writes them.
    pub public_urls: Vec<String>,
    /// Where this outbox's operator takes abuse reports by mail
    /// (`--abuse-contact`, `POST_MANAGER_ABUSE_CONTACT`): told to every
    /// recipient whose complaint is taken, so its reporter also mails the
    /// desk a signed ARF report (docs/PROTOCOL.md §4.8).
    pub abuse_contact: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { prefix: "/".into(), max_message_size: 256 * 1024 * 1024, max_connections_per_ip: 32, public_urls: vec![], abuse_contact: None }
    }
}

/// The parts of a request the handler needs.
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query exactly as sent (what the client signed).
    pub target: &'a str,
    /// Lower-case header name → values.
    pub headers: &'a dyn Fn(&str) -> Vec<String>,
    /// Declared Content-Length, if any (Apache may send chunked bodies
    /// without one: then the body is read to EOF under the same limit).
    pub content_length: Option<u64>,
    pub body: &'a mut dyn Read,
}

pub enum Body {
    Empty,
    Json(Vec<u8>),
    /// A binary OpenPGP certificate (WKD).
    Key(Vec<u8>),
    /// A stored message (or the requested range of it): this many bytes.
    Stream(crate::store::MessageReader, u64),
    /// A public document (a list's archive) and its content type.
    Doc(Vec<u8>, &'static str),
}

pub struct Response {
    pub status: u16,
    pub body: Body,
    /// `Content-Range` of a 206 answer.
    pub content_range: Option<String>,
    /// Error code for the log, if this is an error.
    pub error: Option<&'static str>,
    /// Who signed the request, for the log.
    pub signer: Option<Fpr>,
    /// `Access-Control-Allow-Origin: *`: a public answer web clients may
    /// read (the WKD draft asks it of key lookups). Never on signed
    /// endpoints: a web page gains nothing from reading those.
    pub cors: bool,
}

impl Response {
    fn json<T: serde::Serialize>(status: u16, v: &T) -> Response {
        Response { status, body: Body::Json(serde_json::to_vec(v).expect("serialisable")), content_range: None, error: None, signer: None, cors: false }
    }
    fn error(status: u16, code: &'static str, message: impl Into<String>) -> Response {
        let b = ErrorBody { error: code.into(), message: message.into() };
        Response { error: Some(code), ..Response::json(status, &b) }
    }
    fn doc(body: Vec<u8>, content_type: &'static str) -> Response {
        Response { status: 200, body: Body::Doc(body, content_type), content_range: None, error: None, signer: None, cors: false }
    }
    fn signed_by(mut self, f: &Fpr) -> Response {
        self.signer = Some(f.clone());
        self
    }
    pub fn content_type(&self) -> &'static str {
        match self.body {
            Body::Stream(..) => "application/pgp-encrypted",
            Body::Key(_) | Body::Empty => "application/octet-stream",
            Body::Json(_) => "application/json; charset=utf-8",
            Body::Doc(_, t) => t,
        }
    }
}

fn from_auth(e: AuthError) -> Response {
    let status = if matches!(e, AuthError::Storage(_)) { 503 } else { 401 };
    Response::error(status, e.code(), e.to_string())
}

fn from_store(e: StoreError) -> Response {
    match e {
        StoreError::NotFound => Response::error(404, "not_found", "no such message for you"),
        StoreError::DigestMismatch { .. } => Response::error(400, "digest_mismatch", e.to_string()),
        StoreError::TooLarge(_) => Response::error(413, "too_large", e.to_string()),
        StoreError::Conflict => Response::error(409, "conflict", e.to_string()),
        StoreError::TooManyRecipients(_) => Response::error(400, "too_many_recipients", e.to_string()),
        StoreError::QuotaExceeded(m) => Response::error(507, "quota_exceeded", m),
        StoreError::RateLimited(m) => Response::error(429, "rate_limited", m),
        StoreError::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
            Response::error(408, "timeout", "the request body stalled; send it again")
        }
        StoreError::Io(ref io) if io.kind() == std::io::ErrorKind::ConnectionAborted => {
            Response::error(400, "bad_request", format!("the request body was cut short: {io}"))
        }
        StoreError::Io(ref io) if io.raw_os_error() == Some(28) => {
            Response::error(507, "unavailable", "the outbox is out of disk space; try again later")
        }
        StoreError::Db(ref m) => {
            tracing::error!("database error: {m}");
            Response::error(503, "unavailable", "the outbox's database is unavailable; try again later")
        }
        StoreError::Io(_) | StoreError::Corrupt(_) => {
            tracing::error!("storage error: {e}");
            Response::error(500, "internal", "storage error on the outbox; try again later")
        }
    }
}

enum Route<'a> {
    Account,
    Poll,
    List,
    Message(&'a str),
    Status(&'a str),
    Ack(&'a str),
    Acks,
    NotifyBatch,
    Notify(&'a str),
    Complaint(&'a str),
    Cert(Fpr),
    ArchivePut(&'a str),
    Feed(Fpr),
    /// An archived post (`<id>.eml`) or its signature (`<id>.sig`).
    Archived(Fpr, &'a str, bool),
}

fn route<'a>(settings: &Settings, target: &'a str) -> Result<Route<'a>, Response> {
    let path = target.split('?').next().unwrap_or("");
    let not_found = || Response::error(404, "not_found", "no such endpoint; see docs/PROTOCOL.md");
    let rel = path.strip_prefix(settings.prefix.as_str()).ok_or_else(not_found)?;
    let rel = rel.strip_prefix(protocol::VERSION_PREFIX).ok_or_else(not_found)?;
    let id_ok = |id: &'a str| {
        if protocol::is_valid_id(id) {
            Ok(id)
        } else {
            Err(Response::error(400, "bad_id", "a message id is 64 lower-case hex digits (a SHA-256)"))
        }
    };
    match rel.split('/').collect::<Vec<_>>().as_slice() {
        ["poll"] => Ok(Route::Poll),
        ["acks"] => Ok(Route::Acks),
        ["notify"] => Ok(Route::NotifyBatch),
        ["account"] => Ok(Route::Account),
        ["messages"] => Ok(Route::List),
        ["messages", id] => Ok(Route::Message(id_ok(id)?)),
        ["messages", id, "status"] => Ok(Route::Status(id_ok(id)?)),
        ["messages", id, "ack"] => Ok(Route::Ack(id_ok(id)?)),
        ["messages", id, "notify"] => Ok(Route::Notify(id_ok(id)?)),
        ["messages", id, "complaint"] => Ok(Route::Complaint(id_ok(id)?)),
        ["certs", f] => Ok(Route::Cert(Fpr::parse(f).map_err(|_| not_found())?)),
        ["archive", id] => Ok(Route::ArchivePut(id_ok(id)?)),
        ["archive", f, "feed"] => Ok(Route::Feed(Fpr::parse(f).map_err(|_| not_found())?)),
        ["archive", f, file] => {
            let f = Fpr::parse(f).map_err(|_| not_found())?;
            match (file.strip_suffix(".eml"), file.strip_suffix(".sig")) {
                (Some(id), _) if protocol::is_valid_id(id) => Ok(Route::Archived(f, id, false)),
                (_, Some(id)) if protocol::is_valid_id(id) => Ok(Route::Archived(f, id, true)),
                _ => Err(not_found()),
            }
        }
        _ => Err(not_found()),
    }
}

/// Read a small body, refusing more than `limit` bytes (413).
fn read_small(req: &mut Request, limit: u64) -> Result<Vec<u8>, Response> {
    if req.content_length.is_some_and(|l| l > limit) {
        return Err(Response::error(413, "too_large", format!("request body over {limit} bytes")));
    }
    let mut v = Vec::new();
    req.body.take(limit + 1).read_to_end(&mut v).map_err(|e| match e.kind() {
        // A stalled body is temporary (the client sends it again), as for
        // uploads; anything else about it is the client's to fix.
        std::io::ErrorKind::TimedOut => Response::error(408, "timeout", "the request body stalled; send it again"),
        _ => Response::error(400, "bad_request", format!("reading body: {e}")),
    })?;
    if v.len() as u64 > limit {
        return Err(Response::error(413, "too_large", format!("request body over {limit} bytes")));
    }
    Ok(v)
}

fn header(req: &Request, name: &str) -> Option<String> {
    (req.headers)(name).into_iter().next()
}

/// The list's detached signature over an archived post (base64).
pub const ARCHIVE_SIGNATURE_HEADER: &str = "Stubmail-Archive-Signature";

/// What every request is checked against.
struct Ctx<'a> {
    store: &'a Store,
    settings: &'a Settings,
    /// The base URLs a request may be signed for: read once, and only by a
    /// request that is signed (not by WKD or certificate lookups).
    outboxes: std::cell::OnceCell<Result<Vec<String>, String>>,
}

impl Ctx<'_> {
    fn outboxes(&self) -> Result<&[String], Response> {
        let o = self.outboxes.get_or_init(|| {
            let mut o = self.settings.public_urls.clone();
            o.extend(self.store.outbox_urls().map_err(|e| e.to_string())?);
            Ok(o)
        });
        o.as_deref().map_err(|e| unavailable(e))
    }
}

/// The store cannot answer (a database down, a disk failing): a temporary
/// error, never an answer about the request (a 401 or 404 here would make
/// clients give up on mail that is fine).
fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!("storage unavailable: {e}");
    Response::error(503, "unavailable", "the outbox's storage is unavailable; try again later")
}

/// Who may sign: a certificate, none, or the store could not say.
type Lookup<'a> = dyn FnMut(&Fpr) -> std::io::Result<Option<stubmail::openpgp::Cert>> + 'a;

/// Verify the request's signatures (made for this outbox) and record their
/// nonces. `lookup` finds who may sign.
fn authenticate(
    ctx: &Ctx,
    req: &Request,
    digest: &str,
    now: i64,
    lookup: &mut Lookup,
) -> Result<Vec<Fpr>, Response> {
    verify(ctx, req, digest, now, lookup)?.remember(ctx.store).map_err(|e| {
        tracing::warn!(target = req.target, "refused: {e}");
        from_auth(e)
    })
}

/// Verify the request's signatures, recording nothing yet.
fn verify(
    ctx: &Ctx,
    req: &Request,
    digest: &str,
    now: i64,
    lookup: &mut Lookup,
) -> Result<auth::Verified, Response> {
    let sigs = (req.headers)(protocol::SIGNATURE_HEADER);
    let refs: Vec<&str> = sigs.iter().map(String::as_str).collect();
    let outboxes = ctx.outboxes()?;
    let mut failed = None;
    let mut found = |f: &Fpr| match lookup(f) {
        Ok(c) => c,
        Err(e) => {
            failed.get_or_insert(e);
            None
        }
    };
    let verified = auth::verify_signatures(&refs, outboxes, req.method, req.target, digest, now, &mut found);
    if let Some(e) = failed {
        return Err(unavailable(e));
    }
    verified.map_err(|e| {
        tracing::warn!(target = req.target, "refused: {e}");
        from_auth(e)
    })
}

fn declared_digest(req: &Request) -> Result<String, Response> {
    let d = header(req, protocol::DIGEST_HEADER)
        .ok_or_else(|| Response::error(401, "unauthenticated", "missing Stubmail-Content-SHA256 header"))?;
    if protocol::is_valid_id(&d) {
        Ok(d)
    } else {
        Err(Response::error(400, "bad_request", "Stubmail-Content-SHA256 must be 64 lower-case hex digits"))
    }
}

/// Read a small body and check it against the declared digest.
fn small_body_checked(req: &mut Request, digest: &str) -> Result<Vec<u8>, Response> {
    let body = read_small(req, MAX_JSON_BODY)?;
    if hex::encode(Sha256::digest(&body)) != digest {
        return Err(Response::error(400, "digest_mismatch", "the body does not match Stubmail-Content-SHA256"));
    }
    Ok(body)
}

/// Web Key Directory: public, unsigned key lookup for the accounts
/// (draft-koch-openpgp-webkey-service, direct and advanced methods).
fn wkd(store: &Store, settings: &Settings, method: &str, target: &str) -> Option<Response> {
    const WK: &str = ".well-known/openpgpkey/";
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let rest = path.strip_prefix('/').and_then(|p| p.strip_prefix(WK)).or_else(|| {
        path.strip_prefix(settings.prefix.as_str()).and_then(|p| p.strip_prefix(WK))
    })?;
    if method != "GET" && method != "HEAD" {
        return Some(Response::error(405, "bad_request", "the Web Key Directory is read-only"));
    }
    let not_found = || Response::error(404, "not_found", "no key for that address here");
    let ok_empty = || Response { status: 200, body: Body::Empty, content_range: None, error: None, signer: None, cors: false };
    let (domain, hash) = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["policy"] | [_, "policy"] => return Some(ok_empty()),
        ["hu", h] => (None, *h),
        [d, "hu", h] => (Some(d.to_ascii_lowercase()), *h),
        _ => return Some(not_found()),
    };
    let local = query.split('&').find_map(|kv| kv.strip_prefix("l="));
    let accounts = match store.accounts() {
        Ok(a) => a,
        Err(e) => return Some(from_store(e.into())),
    };
    for cert in accounts {
        let hit = pgp::emails_of(&cert).iter().any(|e| {
            stubmail::wkd::split(e).is_some_and(|(l, d)| {
                stubmail::wkd::local_hash(l) == hash
                    && domain.as_ref().is_none_or(|want| *want == d)
                    && local.is_none_or(|q| percent_decode(q).eq_ignore_ascii_case(l))
            })
        });
        if hit {
            return Some(match pgp::binary(&cert) {
                Ok(b) => Response { status: 200, body: Body::Key(b), content_range: None, error: None, signer: None, cors: false },
                Err(e) => Response::error(500, "internal", e.to_string()),
            });
        }
    }
    Some(not_found())
}

/// Decode %XX escapes (a WKD `l=` parameter); malformed escapes stay as-is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Handle one request.
pub fn handle(store: &Store, settings: &Settings, mut req: Request, now: i64) -> Response {
    if let Some(mut resp) = wkd(store, settings, req.method, req.target) {
        resp.cors = true;
        return resp;
    }
    let r = match route(settings, req.target) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let ctx = &Ctx { store, settings, outboxes: Default::default() };
    let result = match (req.method, r) {
        ("PUT", Route::Message(id)) => upload(ctx, settings, &mut req, id, now),
        ("GET", Route::Message(id)) => fetch(ctx, &mut req, id, now),
        ("DELETE", Route::Message(id)) => {
            sender_op(ctx, &mut req, now, |s, f| s.unsend(f, id, now).map(|st| Response::json(200, &sender_view(st))))
        }
        ("GET", Route::Status(id)) => sender_op(ctx, &mut req, now, |s, f| s.status(f, id).map(|st| Response::json(200, &sender_view(st)))),
        ("GET", Route::List) => sender_op(ctx, &mut req, now, |s, f| {
            s.list(f).map(|messages| Response::json(200, &MessageList { messages: messages.into_iter().map(sender_view).collect() }))
        }),
        ("POST", Route::Ack(id)) => ack(ctx, &mut req, id, now),
        ("POST", Route::Acks) => acks(ctx, &mut req, now),
        ("GET", Route::Account) => sender_op(ctx, &mut req, now, |s, f| s.account_status(f, now).map(|st| Response::json(200, &st))),
        ("PUT", Route::Account) => update_cert(ctx, &mut req, now),
        ("POST", Route::Poll) => poll(ctx, &mut req, now),
        ("POST", Route::Notify(id)) => notify(ctx, &mut req, id, now),
        ("POST", Route::Complaint(id)) => complaint(ctx, &mut req, id, now),
        ("POST", Route::NotifyBatch) => notify_batch(ctx, &mut req, now),
        ("GET", Route::Cert(f)) => match store.account(&f) {
            // Public like WKD: an account's certificate, by fingerprint (for
            // a recipient deciding on a stranger's introduction).
            Ok(Some(c)) => match pgp::binary(&c) {
                Ok(b) => Ok(Response { status: 200, body: Body::Key(b), content_range: None, error: None, signer: None, cors: false }),
                Err(e) => Err(Response::error(500, "internal", e.to_string())),
            },
            Ok(None) => Err(Response::error(404, "not_found", "no account with that fingerprint here")),
            Err(e) => Err(unavailable(e)),
        },
        ("PUT", Route::ArchivePut(id)) => archive_put(ctx, &mut req, id, now),
        ("GET", Route::Feed(f)) => feed(store, &f, req.target).map(|r| Response { cors: true, ..r }),
        ("GET", Route::Archived(f, id, sig)) => match store.archive_get(&f, id) {
            Ok(Some((post, s))) => Ok(Response {
                cors: true,
                ..if sig { Response::doc(s, "application/pgp-signature") } else { Response::doc(post, "message/rfc822") }
            }),
            Ok(None) => Err(Response::error(404, "not_found", "no such archived post")),
            Err(e) => Err(from_store(e)),
        },
        _ => Err(Response::error(405, "bad_request", format!("method {} not allowed here", req.method))),
    };
    result.unwrap_or_else(|e| e)
}

/// A public list's archived post (docs/PROTOCOL.md §10.5): signed by the
/// list's account, with the list's detached signature over the post in
/// `Stubmail-Archive-Signature`; kept once by id.
fn archive_put(ctx: &Ctx, req: &mut Request, id: &str, now: i64) -> Result<Response, Response> {
    let store = ctx.store;
    let digest = declared_digest(req)?;
    if digest != id {
        return Err(Response::error(400, "digest_mismatch", "Stubmail-Content-SHA256 must equal the post's id"));
    }
    let sig = header(req, ARCHIVE_SIGNATURE_HEADER)
        .filter(|v| v.len() <= 8192)
        .and_then(|v| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v.trim()).ok())
        .ok_or_else(|| Response::error(400, "bad_request", format!("missing or malformed {ARCHIVE_SIGNATURE_HEADER} (base64, at most 8 KiB)")))?;
    if req.content_length.is_some_and(|l| l > crate::archive::MAX_POST) {
        return Err(Response::error(413, "too_large", format!("archived posts over {} bytes are refused", crate::archive::MAX_POST)));
    }
    let signers = authenticate(ctx, req, &digest, now, &mut account_lookup(store))?;
    let [list] = signers.as_slice() else {
        return Err(Response::error(400, "bad_request", "an archived post has exactly one signer"));
    };
    let cert = store.account(list).map_err(unavailable)?.ok_or_else(|| Response::error(401, "unauthenticated", "not an account"))?;
    if pgp::list_of(&cert).is_none() {
        return Err(Response::error(403, "not_a_list", "only a mailing list's account keeps a public archive"));
    }
    if let Some(s) = store.suspension(list).map_err(from_store)? {
        return Err(Response::error(403, "account_suspended", format!("this account may not upload: {}", s.reason)));
    }
    let post = read_small(req, crate::archive::MAX_POST)?;
    if hex::encode(Sha256::digest(&post)) != digest {
        return Err(Response::error(400, "digest_mismatch", "the body does not match Stubmail-Content-SHA256"));
    }
    if pgp::verify_detached(&cert, &post, &sig).is_err() {
        return Err(Response::error(400, "bad_signature", "the archive signature is not the list's over this post"));
    }
    let created = store.archive_put(list, &crate::archive::entry_of(id, &post, now), &post, &sig).map_err(from_store)?;
    tracing::info!(%list, id, created, "archived");
    Ok(Response::json(if created { 201 } else { 200 }, &serde_json::json!({ "id": id })).signed_by(list))
}

/// A list's archive as an Atom feed, `?page=N` (1: the newest posts).
fn feed(store: &Store, list: &Fpr, target: &str) -> Result<Response, Response> {
    let not_found = || Response::error(404, "not_found", "no public archive for that list here");
    let page: usize = match target.split_once('?').map(|(_, q)| q) {
        None => 1,
        Some(q) => q
            .split('&')
            .find_map(|kv| kv.strip_prefix("page="))
            .and_then(|p| p.parse().ok())
            .filter(|p| (1..=1_000_000).contains(p))
            .ok_or_else(|| Response::error(400, "bad_request", "page must be a number from 1"))?,
    };
    let cert = store.account(list).map_err(unavailable)?.ok_or_else(not_found)?;
    let title = pgp::list_of(&cert).ok_or_else(not_found)?;
    let (entries, total) = store.archive_page(list, (page - 1) * crate::archive::PAGE, crate::archive::PAGE).map_err(from_store)?;
    // A private list archives nothing: it has no feed at all.
    if total == 0 || (entries.is_empty() && page > 1) {
        return Err(not_found());
    }
    Ok(Response::doc(crate::archive::feed(list, &title, &entries, page, total).into_bytes(), "application/atom+xml; charset=utf-8"))
}

/// A message's status as its sender may see it: `notified` reads
/// `stored`. A stub goes only to a recipient who has polled this outbox
/// before, so "a stub was sent" would tell a sender — a spammer with an
/// account here — which of its addresses are live (issue #19).
fn sender_view(mut st: MessageStatus) -> MessageStatus {
    for r in &mut st.recipients {
        if r.state == DeliveryState::Notified {
            r.state = DeliveryState::Stored;
        }
    }
    st
}

fn account_lookup(store: &Store) -> impl FnMut(&Fpr) -> std::io::Result<Option<stubmail::openpgp::Cert>> + '_ {
    |f| store.account(f)
}

fn upload(ctx: &Ctx, settings: &Settings, req: &mut Request, id: &str, now: i64) -> Result<Response, Response> {
    let store = ctx.store;
    let digest = declared_digest(req)?;
    if digest != id {
        return Err(Response::error(400, "digest_mismatch", "Stubmail-Content-SHA256 must equal the message id"));
    }
    // Refuse an oversized body before reading a byte of it.
    if req.content_length.is_some_and(|l| l > settings.max_message_size) {
        return Err(Response::error(413, "too_large", format!("messages over {} bytes are refused", settings.max_message_size)));
    }
    let signers = authenticate(ctx, req, &digest, now, &mut account_lookup(store))?;
    let [sender] = signers.as_slice() else {
        return Err(Response::error(400, "bad_request", "an upload has exactly one signer"));
    };
    // A suspended account keeps everything but new uploads.
    if let Some(s) = store.suspension(sender).map_err(from_store)? {
        return Err(Response::error(
            403,
            "account_suspended",
            format!(
                "this account may not upload since {}: {}; what it stored stays fetchable. Ask the outbox's operator",
                stubmail::time::rfc3339(s.since),
                s.reason
            ),
        ));
    }
    let rcpts = header(req, protocol::RECIPIENTS_HEADER)
        .ok_or_else(|| Response::error(400, "bad_request", "missing Stubmail-Recipients header"))?;
    let rcpts = protocol::parse_recipients(&rcpts).map_err(|e| Response::error(400, "bad_request", e.to_string()))?;
    let (status, created) =
        store.put(sender, id, &rcpts, req.body, settings.max_message_size, now).map_err(from_store)?;
    tracing::info!(%sender, id, size = status.size, recipients = rcpts.len(), created, "stored");
    let resp = UploadResponse { id: id.to_string(), size: status.size, recipients: rcpts };
    Ok(Response::json(if created { 201 } else { 200 }, &resp).signed_by(sender))
}

fn sender_op(
    ctx: &Ctx,
    req: &mut Request,
    now: i64,
    op: impl FnOnce(&Store, &Fpr) -> Result<Response, StoreError>,
) -> Result<Response, Response> {
    let (sender, _) = account_request(ctx, req, now)?;
    Ok(op(ctx.store, &sender).map_err(from_store)?.signed_by(&sender))
}

/// An account's request: signed by exactly one account, its small body
/// read and checked against the signed digest.
fn account_request(ctx: &Ctx, req: &mut Request, now: i64) -> Result<(Fpr, Vec<u8>), Response> {
    let digest = declared_digest(req)?;
    let signers = authenticate(ctx, req, &digest, now, &mut account_lookup(ctx.store))?;
    let body = small_body_checked(req, &digest)?;
    let [sender] = signers.as_slice() else {
        return Err(Response::error(400, "bad_request", "this request has exactly one signer"));
    };
    Ok((sender.clone(), body))
}

/// An account hands over its own updated certificate (it moved to another
/// outbox: `stubmail identity set-outbox`), so this outbox serves it to the
/// contacts who still poll here. Only its own key, only the addresses the
/// operator registered (a new address needs `account add`: this outbox's
/// WKD speaks for what its accounts' keys name), and never a new name for
/// this outbox.
fn update_cert(ctx: &Ctx, req: &mut Request, now: i64) -> Result<Response, Response> {
    let store = ctx.store;
    let (sender, body) = account_request(ctx, req, now)?;
    let sender = &sender;
    // A suspended account cannot point its contacts elsewhere either: its
    // certificate here is the one it had.
    if let Some(s) = store.suspension(sender).map_err(from_store)? {
        return Err(Response::error(
            403,
            "account_suspended",
            format!("this account is suspended since {} ({}); its certificate is not updated", stubmail::time::rfc3339(s.since), s.reason),
        ));
    }
    let cert = pgp::parse_certs(&body)
        .ok()
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| Response::error(400, "bad_request", "the body is not an OpenPGP certificate"))?;
    if pgp::fpr_of(&cert) != *sender {
        return Err(Response::error(403, "forbidden", "an account updates its own certificate only"));
    }
    let registered = store.account(sender).map_err(unavailable)?.map(|c| pgp::all_emails_of(&c)).unwrap_or_default();
    let cert = pgp::reduced(&cert)
        .ok()
        .and_then(|c| pgp::only_userids_for(c, &registered))
        .ok_or_else(|| Response::error(400, "bad_request", "the certificate names none of the account's registered addresses"))?;
    store.update_account_cert(&cert).map_err(|e| Response::error(400, "bad_request", format!("{e:#}")))?;
    Ok(Response::json(200, &protocol::NotifyResponse { accepted: 1 }).signed_by(sender))
}

fn poll(ctx: &Ctx, req: &mut Request, now: i64) -> Result<Response, Response> {
    let store = ctx.store;
    let digest = declared_digest(req)?;
    // The body carries the signers' certificates, so it is read first (it is
    // small and bounded), but nothing in it is trusted until verified.
    let body = read_small(req, MAX_JSON_BODY)?;
    let body_ok = hex::encode(Sha256::digest(&body)) == digest;
    let preq: PollRequest = if body_ok {
        serde_json::from_slice(&body).map_err(|e| Response::error(400, "bad_request", format!("poll body: {e}")))?
    } else {
        PollRequest::default()
    };
    let presented: Vec<_> = preq
        .certs
        .iter()
        .take(100)
        .filter_map(|a| pgp::parse_certs(a.as_bytes()).ok())
        .flatten()
        .take(100)
        .collect();
    // A revocation once seen sticks (PROTOCOL §3): a presented certificate
    // that revokes one we keep is stored before anything else, so the
    // revoked key is refused from now on, here and in every request.
    for c in &presented {
        if let Err(e) = store.take_revocation(c) {
            tracing::warn!("cannot store a revocation of {}: {e:#}", c.fingerprint());
        }
    }
    let mut lookup = |f: &Fpr| {
        let known = store.known_cert(f)?;
        if known.as_ref().is_some_and(pgp::is_revoked) {
            return Ok(known);
        }
        // A fresher certificate (a new subkey, a later expiry) may be
        // presented; it is the same key, its fingerprint says so.
        Ok(presented.iter().find(|c| &pgp::fpr_of(c) == f).cloned().or(known))
    };
    let verified = verify(ctx, req, &digest, now, &mut lookup)?;
    if !body_ok {
        return Err(Response::error(400, "digest_mismatch", "the body does not match Stubmail-Content-SHA256"));
    }
    if preq.device.as_deref().is_some_and(|d| !protocol::is_valid_device(d)) {
        return Err(Response::error(400, "bad_request", "a device id is 1-64 characters of A-Z a-z 0-9 _ -"));
    }
    // A stranger (no account, never sent anything here) gets the empty
    // answer anyone gets, and leaves nothing behind: no certificate, no
    // cookie, no nonce. (A replay of such a poll gets the same nothing.)
    let mut known: Vec<Fpr> = Vec::new();
    for f in &verified.signers {
        if store.ever_had_mail(f).map_err(unavailable)? || store.account(f).map_err(unavailable)?.is_some() {
            known.push(f.clone());
        }
    }
    if known.is_empty() {
        let first = verified.signers[0].clone();
        return Ok(Response::json(200, &PollResponse::default()).signed_by(&first));
    }
    let signers = verified.remember(store).map_err(|e| {
        tracing::warn!(target = req.target, "refused: {e}");
        from_auth(e)
    })?;
    for c in presented.iter().filter(|c| known.contains(&pgp::fpr_of(c))) {
        if let Err(e) = store.remember_cert(c) {
            tracing::warn!("cannot cache certificate {}: {e:#}", c.fingerprint());
        }
    }
    let mut messages = Vec::new();
    for s in &signers {
        messages.extend(store.poll(s, preq.senders.as_deref(), preq.device.as_deref()).map_err(from_store)?);
    }
    tracing::debug!(signers = signers.len(), found = messages.len(), "poll");
    let mut resp = PollResponse { messages, ..Default::default() };
    // Cookies only while a UDP service runs on this data directory, and
    // only for an asker that will use one: issuing a cookie retires the
    // device's previous one, which a running daemon may still be using.
    if let Some(a) = crate::udp::advert(store).filter(|_| preq.udp) {
        for s in &known {
            match crate::udp::issue(store, s, preq.device.as_deref(), preq.senders.as_deref()) {
                Ok(c) => resp.cookies.push(c),
                Err(e) => tracing::warn!("cannot issue a UDP cookie: {e}"),
            }
        }
        if !resp.cookies.is_empty() {
            resp.udp_port = Some(a.port);
        }
    }
    Ok(Response::json(200, &resp).signed_by(&signers[0]))
}

/// A sender hands over signed stubs for the recipients of one message; the
/// UDP service sends them. Each stub must be the sender's own, for this
/// message and a pending recipient of it, and goes only to the endpoint
/// bound in that recipient's own certificate.
fn notify(ctx: &Ctx, req: &mut Request, id: &str, now: i64) -> Result<Response, Response> {
    let (sender, body) = account_request(ctx, req, now)?;
    let nreq: protocol::NotifyRequest =
        serde_json::from_slice(&body).map_err(|e| Response::error(400, "bad_request", format!("notify body: {e}")))?;
    let sender_cert =
        ctx.store.account(&sender).map_err(unavailable)?.ok_or_else(|| Response::error(401, "unauthenticated", "not an account"))?;
    let status = ctx.store.status(&sender, id).map_err(from_store)?;
    let mut accepted = std::collections::BTreeSet::new();
    queue_stubs(ctx, &sender, &sender_cert, &status, nreq.stubs.iter().take(protocol::MAX_RECIPIENTS), &mut accepted);
    Ok(Response::json(202, &protocol::NotifyResponse { accepted: accepted.len() }).signed_by(&sender))
}

/// The stubs of several messages in one signed request (§8.3). A message
/// that is not the sender's is skipped like a refused stub; a malformed
/// batch is refused whole.
fn notify_batch(ctx: &Ctx, req: &mut Request, now: i64) -> Result<Response, Response> {
    let (sender, body) = account_request(ctx, req, now)?;
    let batch: protocol::NotifyBatchRequest =
        serde_json::from_slice(&body).map_err(|e| Response::error(400, "bad_request", format!("notify body: {e}")))?;
    let stubs: usize = batch.messages.iter().map(|m| m.stubs.len()).sum();
    if batch.messages.is_empty() || batch.messages.len() > protocol::MAX_NOTIFY_BATCH || stubs > protocol::MAX_RECIPIENTS {
        return Err(Response::error(
            400,
            "bad_request",
            format!("a notify batch names 1 to {} messages and at most {} stubs", protocol::MAX_NOTIFY_BATCH, protocol::MAX_RECIPIENTS),
        ));
    }
    if let Some(bad) = batch.messages.iter().find(|m| !protocol::is_valid_id(&m.id)) {
        let shown: String = bad.id.chars().take(80).collect();
        return Err(Response::error(400, "bad_id", format!("{shown:?}: a message id is 64 lower-case hex digits (a SHA-256)")));
    }
    let sender_cert =
        ctx.store.account(&sender).map_err(unavailable)?.ok_or_else(|| Response::error(401, "unauthenticated", "not an account"))?;
    let mut accepted = std::collections::BTreeSet::new();
    for m in &batch.messages {
        match ctx.store.status(&sender, &m.id) {
            Ok(status) => queue_stubs(ctx, &sender, &sender_cert, &status, m.stubs.iter(), &mut accepted),
            Err(StoreError::NotFound) => tracing::info!(%sender, id = m.id, "stubs refused: not a message of this sender"),
            Err(e) => return Err(from_store(e)),
        }
    }
    Ok(Response::json(202, &protocol::NotifyResponse { accepted: accepted.len() }).signed_by(&sender))
}

/// Check and queue one message's stubs, adding each (message, recipient)
/// taken to `accepted`: the same stub handed over twice counts once, as it
/// is sent once.
fn queue_stubs<'a>(
    ctx: &Ctx,
    sender: &Fpr,
    sender_cert: &stubmail::openpgp::Cert,
    status: &protocol::MessageStatus,
    stubs: impl Iterator<Item = &'a protocol::NotifyStub>,
    accepted: &mut std::collections::BTreeSet<(String, Fpr)>,
) {
    use base64::Engine as _;
    let store = ctx.store;
    let id = status.id.as_str();
    if crate::udp::advert(store).is_none() {
        return;
    }
    for n in stubs {
        // What the sender can know: its own stub, for this message and a
        // recipient waiting for it. Counted as accepted whatever follows,
        // so the answer never tells which recipients poll this outbox.
        let check = || -> Result<Fpr, String> {
            let named = pgp::parse_certs(n.cert.as_bytes()).map_err(|e| e.to_string())?.into_iter().next().ok_or("no certificate")?;
            let rcpt = pgp::fpr_of(&named);
            if !status.recipients.iter().any(|r| r.fpr == rcpt && r.state.is_pending()) {
                return Err(format!("{rcpt} is not waiting for this message"));
            }
            let raw = base64::engine::general_purpose::STANDARD.decode(&n.stub).map_err(|e| e.to_string())?;
            let (stub, signed, sig) = protocol::udp::Stub::decode(&raw).map_err(|e| e.to_string())?;
            if &stub.sender != sender || stub.recipient != rcpt || stub.id != id {
                return Err("the stub names another sender, recipient or message".into());
            }
            pgp::verify_detached(&sender_cert, signed, sig).map_err(|e| format!("stub signature: {e}"))?;
            Ok(rcpt)
        };
        // Where it goes: only to an endpoint bound in the certificate the
        // recipient presented in its own signed poll here (or its
        // account's), never one the sender hands over.
        let endpoints = |rcpt: &Fpr| -> Result<Vec<crate::udp::QueuedStub>, String> {
            let cert = store
                .known_cert(rcpt)
                .map_err(|e| e.to_string())?
                .ok_or("the recipient has not polled this outbox: no stub until it does")?;
            let endpoints = pgp::notify_all(&cert);
            if endpoints.is_empty() {
                return Err("the recipient's certificate binds no notify endpoint".into());
            }
            Ok(endpoints
                .into_iter()
                .map(|endpoint| crate::udp::QueuedStub { id: id.to_string(), recipient: rcpt.clone(), endpoint, stub: n.stub.clone() })
                .collect())
        };
        match check() {
            Ok(rcpt) => {
                accepted.insert((id.to_string(), rcpt.clone()));
                match endpoints(&rcpt) {
                    Ok(qs) => {
                        if let Err(e) = qs.iter().enumerate().map(|(k, q)| crate::udp::queue_stub(store, q, k)).collect::<std::io::Result<Vec<()>>>() {
                            tracing::warn!("cannot queue a stub: {e}");
                        }
                    }
                    Err(e) => tracing::debug!(%sender, id, recipient = %rcpt, "no stub sent: {e}"),
                }
            }
            Err(e) => tracing::info!(%sender, id, "stub refused: {e}"),
        }
    }
}

/// Authenticate a recipient's request; returns the signer and the body.
fn recipient_auth(ctx: &Ctx, req: &mut Request, now: i64) -> Result<(Fpr, Vec<u8>), Response> {
    let store = ctx.store;
    let digest = declared_digest(req)?;
    let signers = authenticate(ctx, req, &digest, now, &mut |f| store.known_cert(f))?;
    let body = small_body_checked(req, &digest)?;
    match signers.as_slice() {
        [one] => Ok((one.clone(), body)),
        _ => Err(Response::error(400, "bad_request", "this request has exactly one signer")),
    }
}

fn fetch(ctx: &Ctx, req: &mut Request, id: &str, now: i64) -> Result<Response, Response> {
    let store = ctx.store;
    let (who, _) = recipient_auth(ctx, req, now)?;
    let size = store.size_for(&who, id).map_err(from_store)?;
    let range = match header(req, "range") {
        None => None,
        Some(r) => match parse_range(&r, size) {
            Some(r) => Some(r),
            None => {
                let mut resp = Response::error(416, "bad_request", format!("range {r:?} is not satisfiable; the size is {size}"));
                resp.content_range = Some(format!("bytes */{size}"));
                return Err(resp);
            }
        },
    };
    tracing::info!(recipient = %who, id, size, ?range, "fetch");
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let (reader, _) = store.open_for(&who, id, start).map_err(from_store)?;
    let len = if size == 0 { 0 } else { end - start + 1 };
    Ok(Response {
        status: if range.is_some() { 206 } else { 200 },
        body: Body::Stream(reader, len),
        content_range: range.map(|(start, end)| format!("bytes {start}-{end}/{size}")),
        error: None,
        signer: Some(who),
        cors: false,
    })
}

/// A recipient reports a message it received (issue #19, PROTOCOL.md
/// §4.8). Only a recipient of the message may: anyone else gets the same
/// `404` as for an id that does not exist. Past the account's daily
/// limit of complaints, the account is suspended from uploading.
fn complaint(ctx: &Ctx, req: &mut Request, id: &str, now: i64) -> Result<Response, Response> {
    let store = ctx.store;
    let (who, body) = recipient_auth(ctx, req, now)?;
    let c: protocol::ComplaintRequest =
        serde_json::from_slice(&body).map_err(|e| Response::error(400, "bad_request", format!("complaint body: {e}")))?;
    let sender = c.sender.ok_or_else(|| Response::error(400, "bad_request", "a complaint names the message's sender"))?;
    if c.reason.as_ref().is_some_and(|r| r.chars().count() > protocol::MAX_COMPLAINT_REASON) {
        return Err(Response::error(400, "bad_request", format!("a complaint's reason has at most {} characters", protocol::MAX_COMPLAINT_REASON)));
    }
    let not_found = || Response::error(404, "not_found", "no such message for you");
    // The sender's message, and the signer one of its recipients.
    match store.status(&sender, id) {
        Ok(_) => {}
        Err(StoreError::NotFound) => return Err(not_found()),
        Err(e) => return Err(from_store(e)),
    }
    if store.recipient_state(id, &who).map_err(from_store)?.is_none() {
        return Err(not_found());
    }
    // The sender's signed stub, if the complainer has one: its own word
    // that it announced this message to this recipient.
    if c.stub.as_ref().is_some_and(|s| s.len() > 2048) {
        return Err(Response::error(400, "bad_request", "a stub is at most 2048 base64 characters"));
    }
    let stub = match &c.stub {
        None => "none",
        Some(b64) => {
            use base64::Engine as _;
            let ok = base64::engine::general_purpose::STANDARD.decode(b64).ok().and_then(|raw| {
                let (st, signed, sig) = protocol::udp::Stub::decode(&raw).ok()?;
                let cert = store.account(&sender).ok()??;
                (st.sender == sender && st.recipient == who && st.id == id && pgp::verify_detached(&cert, signed, sig).is_ok()).then_some(())
            });
            if ok.is_some() { "verified" } else { "does not verify" }
        }
    };
    let recorded = store.record_complaint(&crate::store::Complaint { sender: sender.clone(), id: id.to_string(), by: who.clone(), at: now }).map_err(from_store)?;
    if recorded {
        let since = store.resumed_at(&sender).map_err(from_store)?;
        let (today, total) = store.complaint_counts(&sender, now, since).map_err(from_store)?;
        let reason: String = c.reason.unwrap_or_default().chars().filter(|ch| !ch.is_control()).collect();
        tracing::warn!(account = %sender, id, by = %who, today, total, reason, stub, "complaint from a recipient");
        let limit = store.limits(&sender).max_complaints_per_day;
        if today >= limit && store.suspension(&sender).map_err(from_store)?.is_none() {
            let s = crate::store::Suspension {
                since: now,
                reason: format!("{today} recipients complained on {} (limit {limit})", &stubmail::time::rfc3339(now)[..10]),
            };
            store.set_suspension(&sender, Some(&s), now).map_err(from_store)?;
            tracing::warn!(account = %sender, today, "account suspended from uploading: `post_manager account show` has the complaints, `account resume` lifts it");
        }
    }
    Ok(Response::json(200, &protocol::ComplaintResponse { recorded, abuse_contact: ctx.settings.abuse_contact.clone() }).signed_by(&who))
}

/// A single `bytes=` range (RFC 9110 §14.1.2) as inclusive (start, end),
/// or None if it cannot be satisfied. Multiple ranges are not offered.
fn parse_range(h: &str, size: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        // Suffix range: the last N bytes.
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() { size - 1 } else { b.parse::<u64>().ok()?.min(size - 1) };
        (start, end)
    };
    (start <= end && start < size).then_some((start, end))
}

fn ack(ctx: &Ctx, req: &mut Request, id: &str, now: i64) -> Result<Response, Response> {
    let store = ctx.store;
    let (who, body) = recipient_auth(ctx, req, now)?;
    let ack: protocol::AckRequest = if body.is_empty() {
        protocol::AckRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Response::error(400, "bad_request", format!("ack body: {e}")))?
    };
    if ack.device.as_deref().is_some_and(|d| !protocol::is_valid_device(d)) {
        return Err(Response::error(400, "bad_request", "a device id is 1-64 characters of A-Z a-z 0-9 _ -"));
    }
    let st = store.ack(&who, id, ack.device.as_deref(), now).map_err(from_store)?;
    tracing::info!(recipient = %who, id, "retrieved");
    Ok(Response::json(200, &st).signed_by(&who))
}

/// Several acks in one signed request, made durable together (§4.4).
fn acks(ctx: &Ctx, req: &mut Request, now: i64) -> Result<Response, Response> {
    let (who, body) = recipient_auth(ctx, req, now)?;
    let batch: protocol::AckBatchRequest =
        serde_json::from_slice(&body).map_err(|e| Response::error(400, "bad_request", format!("acks body: {e}")))?;
    if batch.device.as_deref().is_some_and(|d| !protocol::is_valid_device(d)) {
        return Err(Response::error(400, "bad_request", "a device id is 1-64 characters of A-Z a-z 0-9 _ -"));
    }
    if batch.ids.is_empty() || batch.ids.len() > protocol::MAX_ACK_BATCH {
        return Err(Response::error(400, "bad_request", format!("an ack batch names 1 to {} ids", protocol::MAX_ACK_BATCH)));
    }
    if let Some(bad) = batch.ids.iter().find(|id| !protocol::is_valid_id(id)) {
        let shown: String = bad.chars().take(80).collect();
        return Err(Response::error(400, "bad_id", format!("{shown:?}: a message id is 64 lower-case hex digits (a SHA-256)")));
    }
    let mut ids = batch.ids;
    ids.sort();
    ids.dedup();
    let results = ctx.store.ack_many(&who, &ids, batch.device.as_deref(), now).map_err(from_store)?;
    let mut answer = protocol::AckBatchResponse::default();
    for (id, r) in ids.into_iter().zip(results) {
        match r {
            Some(st) => answer.acked.push(st),
            None => answer.not_found.push(id),
        }
    }
    tracing::info!(recipient = %who, acked = answer.acked.len(), not_found = answer.not_found.len(), "retrieved (batch)");
    Ok(Response::json(200, &answer).signed_by(&who))
}

/// Copy a response body to a writer (used by CGI and tests).
pub fn write_body(body: Body, out: &mut dyn io::Write) -> io::Result<()> {
    match body {
        Body::Empty => Ok(()),
        Body::Json(v) | Body::Key(v) | Body::Doc(v, _) => out.write_all(&v),
        Body::Stream(f, n) => io::copy(&mut f.take(n), out).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn range_table() {
        for (h, want) in [
            ("bytes=0-", Some((0, 99))),
            ("bytes=10-19", Some((10, 19))),
            ("bytes=90-200", Some((90, 99))),
            ("bytes=-5", Some((95, 99))),
            ("bytes=100-", None),
            ("bytes=5-4", None),
            ("bytes=0-1,5-6", None),
            ("items=0-1", None),
            ("bytes=x-", None),
        ] {
            assert_eq!(super::parse_range(h, 100), want, "{h}");
        }
    }

    #[test]
    fn percent_decoding_table() {
        for (i, o) in [("a%2Bb", "a+b"), ("plain", "plain"), ("%", "%"), ("%4", "%4"), ("%zz", "%zz"), ("x%41", "xA"), ("%C3%A9", "é")] {
            assert_eq!(super::percent_decode(i), o, "{i}");
        }
    }
}


#[cfg(test)]
mod hostile {
    use super::*;
    use stubmail::Identity;

    /// A body reader that fails the test if anything reads it.
    struct Untouchable;
    impl Read for Untouchable {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("the body of a refused request was read");
        }
    }

    struct Case<'a> {
        name: &'a str,
        method: &'a str,
        target: String,
        headers: Vec<(&'a str, String)>,
        content_length: Option<u64>,
        body: Option<Vec<u8>>,
        now: i64,
        want: u16,
    }

    fn run(store: &Store, settings: &Settings, c: Case) -> Response {
        let headers = c.headers.clone();
        let get = move |n: &str| headers.iter().filter(|(k, _)| *k == n).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        let mut untouched = Untouchable;
        let mut bytes;
        let body: &mut dyn Read = match &c.body {
            Some(b) => {
                bytes = &b[..];
                &mut bytes
            }
            None => &mut untouched,
        };
        let req = Request { method: c.method, target: &c.target, headers: &get, content_length: c.content_length, body };
        handle(store, settings, req, c.now)
    }

    /// A list's archive: only a list's account archives, only with the
    /// list's signature over exactly the body; anyone reads the feed and
    /// the posts, and a list without posts (a private one) has no feed.
    #[test]
    fn only_a_list_archives_its_own_signed_posts_and_anyone_reads_them() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let settings = Settings { prefix: "/".into(), ..Settings::default() };
        let list = Identity::generate_list(None, "team@example.org", "http://a/", None).unwrap();
        let alice = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        store.add_account(&list.cert()).unwrap();
        store.add_account(&alice.cert()).unwrap();
        let now = 1_800_000_000;
        let post = b"Subject: hello\r\n\r\nworld\r\n".to_vec();
        let id = stubmail::client::sha256_hex(&post);
        let put = |who: &Identity, sig_by: &Identity, body: &[u8], ts: i64| {
            let path = format!("/v1/archive/{id}");
            let sig = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sig_by.sign_detached(body).unwrap());
            Case {
                name: "archive",
                method: "PUT",
                target: path.clone(),
                headers: vec![
                    (protocol::SIGNATURE_HEADER, auth::sign_request(who, "http://a/", "PUT", &path, &id, ts).unwrap()),
                    (protocol::DIGEST_HEADER, id.clone()),
                    (ARCHIVE_SIGNATURE_HEADER, sig),
                ],
                content_length: Some(body.len() as u64),
                body: Some(body.to_vec()),
                now,
                want: 0,
            }
        };
        let get = |target: String| Case { name: "get", method: "GET", target, headers: vec![], content_length: None, body: None, now, want: 0 };
        let feed = format!("/v1/archive/{}/feed", list.fpr());
        assert_eq!(run(&store, &settings, get(feed.clone())).status, 404, "no posts: no feed");
        // Not a list's account; the list's request with another's signature
        // over the post; a body that is not the signed one.
        assert_eq!(run(&store, &settings, put(&alice, &alice, &post, now)).status, 403);
        assert_eq!(run(&store, &settings, put(&list, &alice, &post, now + 1)).status, 400);
        let mut other = put(&list, &list, &post, now + 2);
        other.body = Some(b"Subject: other\r\n\r\n".to_vec());
        assert_eq!(run(&store, &settings, other).status, 400);
        let mut nosig = put(&list, &list, &post, now + 3);
        nosig.headers.pop();
        assert_eq!(run(&store, &settings, nosig).status, 400);
        assert_eq!(run(&store, &settings, get(feed.clone())).status, 404, "nothing was archived");
        assert_eq!(run(&store, &settings, put(&list, &list, &post, now + 4)).status, 201);
        assert_eq!(run(&store, &settings, put(&list, &list, &post, now + 5)).status, 200, "kept once");
        let r = run(&store, &settings, get(feed.clone()));
        assert!(r.status == 200 && r.cors && r.content_type().starts_with("application/atom+xml"));
        let Body::Doc(xml, _) = r.body else { panic!() };
        assert!(String::from_utf8(xml).unwrap().contains("<title>hello</title>"));
        let r = run(&store, &settings, get(format!("/v1/archive/{}/{id}.eml", list.fpr())));
        assert!(matches!(&r.body, Body::Doc(b, "message/rfc822") if *b == post));
        let r = run(&store, &settings, get(format!("/v1/archive/{}/{id}.sig", list.fpr())));
        let Body::Doc(sig, "application/pgp-signature") = r.body else { panic!() };
        assert!(pgp::verify_detached(&list.cert(), &post, &sig).is_ok());
        for bad in [
            format!("/v1/archive/{}/feed?page=0", list.fpr()),
            format!("/v1/archive/{}/feed?page=x", list.fpr()),
        ] {
            assert_eq!(run(&store, &settings, get(bad.clone())).status, 400, "{bad}");
        }
        for missing in [
            format!("/v1/archive/{}/feed?page=2", list.fpr()),
            format!("/v1/archive/{}/feed", alice.fpr()),
            format!("/v1/archive/{}/../../accounts", list.fpr()),
            format!("/v1/archive/{}/{}.eml", list.fpr(), id.to_uppercase()),
            format!("/v1/archive/{}/{id}.eml", alice.fpr()),
        ] {
            assert_eq!(run(&store, &settings, get(missing.clone())).status, 404, "{missing}");
        }
    }

    #[test]
    fn hostile_requests_get_4xx_and_store_nothing() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let settings = Settings { prefix: "/".into(), max_message_size: 1000, ..Settings::default() };
        let alice = Identity::generate(None, "alice@example.org", "http://a/").unwrap();
        let mallory = Identity::generate(None, "mallory@example.org", "http://m/").unwrap();
        store.add_account(&alice.cert()).unwrap();
        let now = 1_800_000_000;
        let body = b"ciphertext".to_vec();
        let id = stubmail::client::sha256_hex(&body);
        let bob = "B".repeat(40);
        let put_to = |outbox: &str, who: &Identity, ts: i64| {
            let path = format!("/v1/messages/{id}");
            vec![
                (protocol::SIGNATURE_HEADER, auth::sign_request(who, outbox, "PUT", &path, &id, ts).unwrap()),
                (protocol::DIGEST_HEADER, id.clone()),
                (protocol::RECIPIENTS_HEADER, bob.clone()),
            ]
        };
        // Alice's certificate binds http://a/: the outbox knows itself by it.
        let put = |who: &Identity, ts: i64| put_to("http://a/", who, ts);
        let good = put(&alice, now);
        let replayed = good.clone();
        let case = |name, headers, body: Option<Vec<u8>>, content_length, want| Case {
            name,
            method: "PUT",
            target: format!("/v1/messages/{id}"),
            headers,
            content_length,
            body,
            now,
            want,
        };
        let cases = vec![
            case("unsigned", vec![(protocol::DIGEST_HEADER, id.clone())], None, Some(10), 401),
            case("stale timestamp", put(&alice, now - 3600), None, Some(10), 401),
            case("from the future", put(&alice, now + 3600), None, Some(10), 401),
            case("unknown account", put(&mallory, now), None, Some(10), 401),
            case("made for another outbox", put_to("http://b.example/", &alice, now), None, Some(10), 401),
            case("oversized, refused before reading", put(&alice, now), None, Some(1_000_000), 413),
            case("wrong digest for the id", {
                let mut h = put(&alice, now);
                h[1].1 = "0".repeat(64);
                h
            }, None, Some(10), 400),
            case("body does not match the id", put(&alice, now), Some(b"tampered!!".to_vec()), Some(10), 400),
            case("bad recipients", {
                let mut h = put(&alice, now);
                h[2].1 = "DEADBEEF".into();
                h
            }, Some(body.clone()), Some(10), 400),
            Case { name: "path traversal", target: "/v1/messages/../../etc/passwd".into(), ..case("", put(&alice, now), None, None, 404) },
            Case { name: "upper-case id", target: format!("/v1/messages/{}", id.to_uppercase()), ..case("", put(&alice, now), None, None, 400) },
            Case { name: "unknown version", target: format!("/v2/messages/{id}"), ..case("", put(&alice, now), None, None, 404) },
        ];
        for c in cases {
            let (name, want) = (c.name, c.want);
            let r = run(&store, &settings, c);
            assert_eq!(r.status, want, "{name}");
            assert!(matches!(r.body, Body::Json(_)), "{name}: structured error body");
            assert_eq!(std::fs::read_dir(d.path().join("messages")).unwrap().count(), 0, "{name} stored something");
        }
        // The genuine upload is stored once; its replay is refused.
        let r = run(&store, &settings, case("good", good, Some(body.clone()), Some(10), 201));
        assert_eq!(r.status, 201);
        let r = run(&store, &settings, case("replayed", replayed, Some(body.clone()), Some(10), 401));
        assert_eq!((r.status, r.error), (401, Some("replayed")));
        // Polls: a malformed body and a wrong device id are 400s.
        let poll = |b: &[u8], ts| {
            let digest = stubmail::client::sha256_hex(b);
            Case {
                name: "poll",
                method: "POST",
                target: "/v1/poll".into(),
                headers: vec![
                    (protocol::SIGNATURE_HEADER, auth::sign_request(&alice, "http://a/", "POST", "/v1/poll", &digest, ts).unwrap()),
                    (protocol::DIGEST_HEADER, digest),
                ],
                content_length: Some(b.len() as u64),
                body: Some(b.to_vec()),
                now,
                want: 0,
            }
        };
        assert_eq!(run(&store, &settings, poll(b"{not json", now)).status, 400);
        assert_eq!(run(&store, &settings, poll(br#"{"device":"../x"}"#, now)).status, 400);
        assert_eq!(run(&store, &settings, poll(br#"{"certs":[]}"#, now)).status, 200);
        // Account names (fingerprints) in paths: only 40 hex digits reach
        // the store; traversal and partial names are one 404.
        let get = |target: String| Case { name: "certs", method: "GET", target, headers: vec![], content_length: None, body: None, now, want: 0 };
        for t in ["/v1/certs/../../accounts", "/v1/certs/..%2F..%2Faccounts%2F", "/v1/certs/DEADBEEF", &format!("/v1/certs/{}.pgp", alice.fpr())] {
            assert_eq!(run(&store, &settings, get(t.to_string())).status, 404, "{t}");
        }
        let r = run(&store, &settings, get(format!("/v1/certs/{}", alice.fpr().as_str().to_lowercase())));
        assert!(r.status == 200 && matches!(r.body, Body::Key(_)), "a real account, any case");
        assert_eq!(run(&store, &settings, get(format!("/v1/certs/{}", mallory.fpr()))).status, 404, "not an account");
    }
}
