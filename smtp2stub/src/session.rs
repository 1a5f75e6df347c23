//! One SMTP session (RFC 5321), generic over the stream so a whole dialogue
//! is a unit test over an in-memory pipe. Parsing is Stalwart's smtp-proto
//! (no I/O); this module only moves bytes and keeps the state machine.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use base64::Engine;
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spool::Data;
use crate::spool::{Envelope, Rcpt, Route, Spool};

/// An SMTP reply: code and text (with enhanced status code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply { code, text: text.into() }
    }
    /// Lines of `text` are separated by '\n'; all but the last get "code-".
    fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes());
        }
    }
}

/// Who may send and to whom: the submission rules.
pub trait Policy: Send + Sync {
    /// MAIL FROM must be one of the user's own addresses (never an open relay).
    fn sender(&self, addr: &str) -> Result<(), Reply>;
    /// How a recipient is reached: the stub path or the SMTP relay. May look
    /// the recipient's key up on the network (with a short timeout).
    fn recipient(&self, addr: &str) -> impl Future<Output = Result<Route, Reply>> + Send;
    /// Before `250`: will the outbox take `copies` stored messages of about
    /// `size` bytes each, for `stub_rcpts` Stubmail recipients? (Ok when it
    /// cannot be asked: the spool keeps the message and retries.)
    fn check_outbox(
        &self,
        qid: &str,
        size: u64,
        copies: u64,
        stub_rcpts: &[&stubmail::protocol::Fpr],
    ) -> impl Future<Output = Result<(), Reply>> + Send;
    /// `qid`, checked with `check_outbox`, could not be stored after all.
    fn not_accepted(&self, _qid: &str) {}
}

/// AUTH credentials of the one user this server submits for.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

impl Credentials {
    /// Constant-time comparison, so timing reveals nothing of the password.
    fn check(&self, user: &[u8], pass: &[u8]) -> bool {
        use stubmail::server::constant_eq;
        // User names are addresses: any case (RFC 5321 domains are).
        self.is_user(user) & constant_eq(pass, self.password.as_bytes())
    }
    fn is_user(&self, user: &[u8]) -> bool {
        stubmail::server::constant_eq(&user.to_ascii_lowercase(), self.username.to_ascii_lowercase().as_bytes())
    }
}

/// Settings of the SMTP listener.
#[derive(Clone)]
pub struct SessionConfig {
    /// Name in the greeting and trace headers.
    pub hostname: String,
    /// SIZE limit, bytes of message data.
    pub max_size: u64,
    /// Idle timeout per read (RFC 5321 §4.5.3.2 suggests minutes).
    pub timeout: Duration,
    /// Maximum recipients per transaction.
    pub max_rcpts: usize,
    /// Bad commands before the server hangs up.
    pub max_errors: u32,
    /// STARTTLS, if a certificate is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// AUTH PLAIN/LOGIN, if credentials are configured.
    pub credentials: Option<Credentials>,
    /// MAIL needs a successful AUTH first (every listener by default).
    pub auth_required: bool,
    /// AUTH may be used without TLS: only on loopback, where the password
    /// never leaves the machine. Elsewhere AUTH waits for STARTTLS.
    pub auth_in_clear: bool,
    /// Failed logins, counted across every connection of the listener.
    pub throttle: Arc<stubmail::guard::LoginThrottle>,
    /// Below this much free spool space, DATA is refused with 452.
    pub min_free_bytes: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            max_size: 50 * 1024 * 1024,
            timeout: Duration::from_secs(300),
            max_rcpts: 100,
            max_errors: 20,
            tls: None,
            credentials: None,
            auth_required: true,
            auth_in_clear: true,
            throttle: Default::default(),
            min_free_bytes: 0,
        }
    }
}

/// Watches message data for what RFC 5321 forbids and SMTP smuggling
/// exploits: bare LF, bare CR, and lines over 998 octets.
#[derive(Default)]
struct Scan {
    prev: u8,
    line_len: usize,
    bare_lf: bool,
    bare_cr: bool,
    long_line: bool,
}

impl Scan {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' {
                if self.prev != b'\r' {
                    self.bare_lf = true;
                }
                self.line_len = 0;
            } else {
                if self.prev == b'\r' {
                    self.bare_cr = true;
                }
                if b != b'\r' {
                    self.line_len += 1;
                    if self.line_len > 998 {
                        self.long_line = true;
                    }
                }
            }
            self.prev = b;
        }
    }
    fn verdict(&self) -> Option<Reply> {
        if self.bare_lf || self.bare_cr || self.prev == b'\r' {
            Some(Reply::new(550, "5.6.0 Message refused: bare CR or LF; lines must end in CRLF (RFC 5321 2.3.8)"))
        } else if self.long_line {
            Some(Reply::new(550, "5.5.2 Message refused: a line is longer than 998 octets (RFC 5321 4.5.3.1.6)"))
        } else {
            None
        }
    }
}

/// The session's state; each state carries exactly its data.
enum State {
    /// Before EHLO/HELO.
    Fresh,
    /// Greeted, no transaction.
    Ready { helo: String },
    /// MAIL accepted; collecting recipients.
    Mail { helo: String, from: String, rcpts: Vec<Rcpt> },
    /// Receiving DATA into the spool.
    Data(Box<DataState>),
    /// In an AUTH exchange: the next line is a base64 response.
    Auth { helo: String, step: AuthStep },
}

enum AuthStep {
    /// AUTH PLAIN without an initial response: waiting for it.
    Plain,
    /// AUTH LOGIN: waiting for the user name.
    LoginUser,
    /// AUTH LOGIN: waiting for the password.
    LoginPass { user: Vec<u8> },
}

/// What the read loop should do next.
enum Flow {
    Continue,
    Close,
    /// Reply 220 was sent: start TLS on this stream.
    StartTls,
}

struct DataState {
    helo: String,
    from: String,
    rcpts: Vec<Rcpt>,
    qid: String,
    /// Where the data goes; None once it is too large or could not be
    /// written.
    file: Option<Data>,
    rx: DataReceiver,
    scan: Scan,
    size: u64,
    /// Writing to the spool failed (e.g. disk full): answer 452 at the end.
    write_failed: bool,
}

/// Everything a session needs from the server.
pub struct Ctx<P> {
    pub config: SessionConfig,
    pub policy: P,
    pub spool: Spool,
    /// Woken after each accepted message.
    pub accepted: Arc<tokio::sync::Notify>,
}

/// Run one session to completion (upgrading to TLS on STARTTLS).
pub async fn serve<S, P>(mut stream: S, peer: String, ctx: &Ctx<P>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    P: Policy,
{
    let mut out = Vec::new();
    Reply::new(220, format!("{} ESMTP smtp2stub ready", ctx.config.hostname)).write_to(&mut out);
    stream.write_all(&out).await?;
    let mut s = Session {
        ctx,
        peer,
        state: State::Fresh,
        rx: RequestReceiver::default(),
        discard_line: false,
        line_head: Vec::new(),
        errors: 0,
        tls: false,
        authenticated: false,
        auth_failures: 0,
    };
    let flow = s.run(&mut stream).await;
    s.abort_data().await;
    match (flow?, &ctx.config.tls) {
        (Flow::StartTls, Some(acceptor)) => {
            let mut tls = acceptor.accept(stream).await?;
            // RFC 3207: forget everything learnt before TLS.
            s.state = State::Fresh;
            s.rx = RequestReceiver::default();
            s.discard_line = false;
            s.tls = true;
            s.authenticated = false;
            let flow = s.run(&mut tls).await;
            s.abort_data().await;
            flow?;
            let _ = tls.shutdown().await;
        }
        _ => {
            let _ = stream.shutdown().await;
        }
    }
    Ok(())
}

struct Session<'c, P> {
    ctx: &'c Ctx<P>,
    peer: String,
    state: State,
    rx: RequestReceiver,
    /// After an over-long command line: skip to its end.
    discard_line: bool,
    /// The first bytes of the command line being read, to recognise HTTP.
    line_head: Vec<u8>,
    errors: u32,
    /// The connection is encrypted.
    tls: bool,
    /// AUTH succeeded on this connection.
    authenticated: bool,
    auth_failures: u32,
}

/// Bytes of a command line kept to tell HTTP from SMTP: a whole command
/// line (RFC 5321 allows 512), so a request line is seen to its version.
const LINE_HEAD: usize = 1024;

/// Longest AUTH response line accepted.
const MAX_AUTH_LINE: usize = 2048;

impl<P: Policy> Session<'_, P> {
    /// The read loop over one stream (plain, or TLS after STARTTLS).
    async fn run<T: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut T) -> io::Result<Flow> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::time::timeout(self.ctx.config.timeout, stream.read(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => {
                    Reply::new(421, "4.4.2 Idle timeout, closing connection").write_to(&mut out);
                    let _ = stream.write_all(&out).await;
                    return Ok(Flow::Close);
                }
            };
            if n == 0 {
                return Ok(Flow::Close);
            }
            let mut it = buf[..n].iter();
            let flow = self.ingest(&mut it, &mut out).await?;
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
            }
            match flow {
                Flow::Continue => {}
                // Anything pipelined after STARTTLS was sent in the clear
                // and is dropped (the CVE-2011-0411 class of injection).
                other => return Ok(other),
            }
        }
    }

    /// Consume one chunk of input.
    async fn ingest(&mut self, it: &mut std::slice::Iter<'_, u8>, out: &mut Vec<u8>) -> io::Result<Flow> {
        while !it.as_slice().is_empty() {
            if let State::Auth { .. } = self.state {
                let rest = it.as_slice();
                let Some(p) = rest.iter().position(|&b| b == b'\n') else {
                    if rest.len() > MAX_AUTH_LINE {
                        self.state = State::Fresh;
                        Reply::new(500, "5.5.6 Authentication line too long").write_to(out);
                        return Ok(Flow::Close);
                    }
                    // Keep it simple: AUTH lines are short and arrive whole.
                    self.rx.buf().extend_from_slice(rest);
                    *it = [].iter();
                    break;
                };
                let mut line = std::mem::take(self.rx.buf());
                line.extend_from_slice(&rest[..p]);
                *it = rest[p + 1..].iter();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let reply = self.auth_line(&line).await;
                reply.write_to(out);
                if self.auth_failures >= 3 {
                    Reply::new(421, "4.7.0 Too many authentication failures, closing connection").write_to(out);
                    return Ok(Flow::Close);
                }
                continue;
            }
            if let State::Data(d) = &mut self.state {
                let mut chunk = Vec::new();
                let done = d.rx.ingest(it, &mut chunk);
                d.scan.feed(&chunk);
                d.size += chunk.len() as u64;
                if d.size > self.ctx.config.max_size {
                    // Keep reading to the end of DATA, but store nothing more.
                    if d.file.take().is_some() {
                        let _ = tokio::fs::remove_file(self.ctx.spool.tmp_path(&d.qid)).await;
                    }
                } else if let Some(f) = d.file.as_mut()
                    && let Err(e) = f.write_all(&chunk, &self.ctx.spool.tmp_path(&d.qid)).await {
                        // Disk full or failing: keep reading to the end of
                        // DATA, then answer with a temporary error.
                        tracing::error!(qid = d.qid, "spool write failed: {e}");
                        d.file = None;
                        d.write_failed = true;
                        let _ = tokio::fs::remove_file(self.ctx.spool.tmp_path(&d.qid)).await;
                    }
                if done {
                    let reply = self.end_data().await;
                    reply.write_to(out);
                }
                continue;
            }
            if self.discard_line {
                let rest = it.as_slice();
                match rest.iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        *it = rest[p + 1..].iter();
                        self.discard_line = false;
                    }
                    None => *it = [].iter(),
                }
                continue;
            }
            let before = it.as_slice();
            let parsed = self.rx.ingest(it);
            let used = &before[..before.len() - it.as_slice().len()];
            let room = LINE_HEAD.saturating_sub(self.line_head.len());
            self.line_head.extend_from_slice(&used[..used.len().min(room)]);
            if !matches!(parsed, Err(ParseError::NeedsMoreData { .. })) {
                let head = std::mem::take(&mut self.line_head);
                if stubmail::guard::looks_like_http(&head) {
                    // A web page speaking HTTP to us through the user's
                    // browser: nothing it sends is a command.
                    tracing::warn!(peer = %self.peer, "HTTP request on the SMTP port; closing");
                    self.abort_data().await;
                    self.state = State::Fresh;
                    Reply::new(554, "5.7.0 This is an SMTP server, not HTTP; closing").write_to(out);
                    return Ok(Flow::Close);
                }
            }
            let req = match parsed {
                Ok(r) => r.into_owned(),
                Err(ParseError::NeedsMoreData { .. }) => break,
                Err(e) => {
                    if matches!(e, ParseError::ResponseTooLong) {
                        self.discard_line = true;
                    }
                    self.parse_error(e).write_to(out);
                    self.errors += 1;
                    if self.errors >= self.ctx.config.max_errors {
                        Reply::new(421, "4.7.0 Too many errors, closing connection").write_to(out);
                        return Ok(Flow::Close);
                    }
                    continue;
                }
            };
            let quit = matches!(req, Request::Quit);
            let starttls = matches!(req, Request::StartTls);
            let reply = self.command(req).await;
            if reply.code >= 500 {
                self.errors += 1;
            }
            reply.write_to(out);
            if quit {
                return Ok(Flow::Close);
            }
            if starttls && reply.code == 220 {
                return Ok(Flow::StartTls);
            }
            if self.auth_failures >= 3 {
                Reply::new(421, "4.7.0 Too many authentication failures, closing connection").write_to(out);
                return Ok(Flow::Close);
            }
            if self.errors >= self.ctx.config.max_errors {
                Reply::new(421, "4.7.0 Too many errors, closing connection").write_to(out);
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Continue)
    }

    fn parse_error(&self, e: ParseError) -> Reply {
        match e {
            ParseError::UnknownCommand => Reply::new(500, "5.5.1 Command unrecognized"),
            ParseError::ResponseTooLong => Reply::new(500, "5.5.6 Command line too long"),
            ParseError::InvalidSenderAddress => Reply::new(501, "5.1.7 Bad sender address syntax"),
            ParseError::InvalidRecipientAddress => Reply::new(501, "5.1.3 Bad recipient address syntax"),
            ParseError::SyntaxError { syntax } => Reply::new(501, format!("5.5.4 Syntax: {syntax}")),
            ParseError::InvalidParameter { param } => Reply::new(501, format!("5.5.4 Invalid parameter {param:?}")),
            ParseError::UnsupportedParameter { param } => {
                Reply::new(555, format!("5.5.4 Unsupported parameter {param:?}"))
            }
            _ => Reply::new(500, "5.5.2 Syntax error"),
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let c = &self.ctx.config;
        let mut lines = vec![
            c.hostname.clone(),
            "PIPELINING".into(),
            "8BITMIME".into(),
            format!("SIZE {}", c.max_size),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
        ];
        if c.tls.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        // AUTH is offered only where a password may safely cross the wire.
        if c.credentials.is_some() && (self.tls || c.auth_in_clear) {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::new(250, lines.join("\n"))
    }

    /// Handle AUTH; the reply may be a 334 challenge.
    async fn auth(&mut self, mechanism: u64, initial: String) -> Reply {
        let helo = match std::mem::replace(&mut self.state, State::Fresh) {
            State::Ready { helo } => helo,
            State::Fresh => return Reply::new(503, "5.5.1 Say EHLO first"),
            other => {
                self.state = other;
                return Reply::new(503, "5.5.1 AUTH is not allowed during a mail transaction");
            }
        };
        self.state = State::Ready { helo: helo.clone() };
        if self.ctx.config.credentials.is_none() {
            return Reply::new(502, "5.5.1 AUTH is not needed on this listener");
        }
        if self.authenticated {
            return Reply::new(503, "5.5.1 Already authenticated");
        }
        if !self.ctx.config.auth_in_clear && !self.tls {
            return Reply::new(538, "5.7.11 Encryption required: use STARTTLS before AUTH");
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.state = State::Auth { helo, step: AuthStep::Plain };
                Reply::new(334, "")
            }
            smtp_proto::AUTH_PLAIN => self.auth_line_plain(initial.as_bytes(), helo).await,
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.state = State::Auth { helo, step: AuthStep::LoginUser };
                Reply::new(334, "VXNlcm5hbWU6")
            }
            smtp_proto::AUTH_LOGIN => match b64(initial.as_bytes()) {
                Some(user) => {
                    self.state = State::Auth { helo, step: AuthStep::LoginPass { user } };
                    Reply::new(334, "UGFzc3dvcmQ6")
                }
                None => Reply::new(501, "5.5.2 Cannot decode the response"),
            },
            _ => Reply::new(504, "5.5.4 Unrecognized authentication mechanism; use PLAIN or LOGIN"),
        }
    }

    async fn auth_line(&mut self, line: &[u8]) -> Reply {
        let State::Auth { helo, step } = std::mem::replace(&mut self.state, State::Fresh) else {
            return Reply::new(503, "5.5.1 Not in AUTH");
        };
        self.state = State::Ready { helo: helo.clone() };
        if line == b"*" {
            return Reply::new(501, "5.0.0 Authentication cancelled");
        }
        match step {
            AuthStep::Plain => self.auth_line_plain(line, helo).await,
            AuthStep::LoginUser => match b64(line) {
                Some(user) => {
                    self.state = State::Auth { helo, step: AuthStep::LoginPass { user } };
                    Reply::new(334, "UGFzc3dvcmQ6")
                }
                None => Reply::new(501, "5.5.2 Cannot decode the response"),
            },
            AuthStep::LoginPass { user } => match b64(line) {
                Some(pass) => self.auth_result(&user, &pass).await,
                None => Reply::new(501, "5.5.2 Cannot decode the response"),
            },
        }
    }

    async fn auth_line_plain(&mut self, b: &[u8], helo: String) -> Reply {
        self.state = State::Ready { helo };
        let Some(raw) = b64(b) else { return Reply::new(501, "5.5.2 Cannot decode the response") };
        // authzid \0 authcid \0 password
        let parts: Vec<&[u8]> = raw.split(|&c| c == 0).collect();
        match parts.as_slice() {
            [authz, user, pass] if authz.is_empty() || authz == user => self.auth_result(user, pass).await,
            _ => Reply::new(501, "5.5.2 Malformed AUTH PLAIN response"),
        }
    }

    async fn auth_result(&mut self, user: &[u8], pass: &[u8]) -> Reply {
        let Some(creds) = self.ctx.config.credentials.as_ref() else {
            return Reply::new(502, "5.5.1 AUTH is not needed on this listener");
        };
        // Failures count against the client's address and, when it named
        // the real user, the account, across all connections: parallel
        // connections guess no faster than one.
        let ip = stubmail::guard::peer_ip(&self.peer);
        let account = creds.is_user(user).then_some(creds.username.as_str());
        let throttle = &self.ctx.config.throttle;
        if let Err(t) = throttle.check(ip, account) {
            self.auth_failures += 1;
            tracing::warn!(peer = %self.peer, "authentication refused: too many recent failures");
            return Reply::new(454, format!("4.7.0 Too many failed logins; try again in {} seconds", t.secs()));
        }
        if creds.check(user, pass) {
            throttle.succeeded(ip, account);
            self.authenticated = true;
            tracing::info!(peer = %self.peer, "authenticated");
            Reply::new(235, "2.7.0 Authentication successful")
        } else {
            throttle.failed(ip, account);
            self.auth_failures += 1;
            tracing::warn!(peer = %self.peer, failures = self.auth_failures, "authentication failed");
            Reply::new(535, "5.7.8 Authentication credentials invalid")
        }
    }

    async fn command(&mut self, req: Request<String>) -> Reply {
        match req {
            Request::Ehlo { host } => {
                self.abort_data().await;
                self.state = State::Ready { helo: host };
                self.ehlo_reply()
            }
            Request::Helo { host } => {
                self.abort_data().await;
                self.state = State::Ready { helo: host };
                Reply::new(250, self.ctx.config.hostname.clone())
            }
            Request::Lhlo { .. } => Reply::new(500, "5.5.1 This is SMTP, not LMTP"),
            Request::Mail { from } => match std::mem::replace(&mut self.state, State::Fresh) {
                State::Ready { helo } if self.ctx.config.auth_required && !self.authenticated => {
                    self.state = State::Ready { helo };
                    Reply::new(530, "5.7.0 Authentication required")
                }
                State::Ready { helo } if self.spool_is_full() => {
                    // Checked at MAIL, as Postfix checks queue_minfree: no
                    // transaction is left half open.
                    self.state = State::Ready { helo };
                    Reply::new(452, "4.3.1 Insufficient system storage; try again later")
                }
                State::Ready { helo } => {
                    if from.size as u64 > self.ctx.config.max_size {
                        self.state = State::Ready { helo };
                        return Reply::new(552, format!("5.3.4 Message size exceeds the limit of {} bytes", self.ctx.config.max_size));
                    }
                    match self.ctx.policy.sender(&from.address) {
                        Ok(()) => {
                            self.state = State::Mail { helo, from: from.address, rcpts: vec![] };
                            Reply::new(250, "2.1.0 Sender OK")
                        }
                        Err(r) => {
                            self.state = State::Ready { helo };
                            r
                        }
                    }
                }
                State::Fresh => Reply::new(503, "5.5.1 Say EHLO or HELO first"),
                other => {
                    self.state = other;
                    Reply::new(503, "5.5.1 Nested MAIL command")
                }
            },
            Request::Rcpt { to } => {
                let State::Mail { rcpts, .. } = &self.state else {
                    return Reply::new(503, "5.5.1 Need MAIL before RCPT");
                };
                if rcpts.len() >= self.ctx.config.max_rcpts {
                    return Reply::new(452, "4.5.3 Too many recipients; send the rest in another message");
                }
                let route = self.ctx.policy.recipient(&to.address).await;
                match (route, &mut self.state) {
                    (Ok(route), State::Mail { rcpts, .. }) => {
                        if !rcpts.iter().any(|r| r.addr.eq_ignore_ascii_case(&to.address)) {
                            rcpts.push(Rcpt { addr: to.address, route });
                        }
                        Reply::new(250, "2.1.5 Recipient OK")
                    }
                    (Ok(_), _) => Reply::new(503, "5.5.1 Need MAIL before RCPT"),
                    (Err(r), _) => r,
                }
            }
            Request::Data => match std::mem::replace(&mut self.state, State::Fresh) {
                State::Mail { helo, from, rcpts } if !rcpts.is_empty() => {
                    match self.begin_data(helo.clone(), from.clone(), rcpts.clone()).await {
                        Ok(d) => {
                            self.state = State::Data(Box::new(d));
                            Reply::new(354, "End data with <CR><LF>.<CR><LF>")
                        }
                        Err(e) => {
                            tracing::error!("spool: {e}");
                            self.state = State::Mail { helo, from, rcpts };
                            Reply::new(451, "4.3.0 Local spool error; try again later")
                        }
                    }
                }
                State::Mail { helo, from, rcpts } => {
                    self.state = State::Mail { helo, from, rcpts };
                    Reply::new(554, "5.5.1 No valid recipients")
                }
                other => {
                    self.state = other;
                    Reply::new(503, "5.5.1 Need MAIL and RCPT before DATA")
                }
            },
            Request::Bdat { .. } => Reply::new(502, "5.5.1 BDAT is not supported; use DATA"),
            Request::Rset => {
                self.abort_data().await;
                self.state = match std::mem::replace(&mut self.state, State::Fresh) {
                    State::Ready { helo } | State::Mail { helo, .. } => State::Ready { helo },
                        State::Data(d) => State::Ready { helo: d.helo },
                    State::Auth { helo, .. } => State::Ready { helo },
                    State::Fresh => State::Fresh,
                };
                Reply::new(250, "2.0.0 Reset OK")
            }
            Request::Noop { .. } => Reply::new(250, "2.0.0 OK"),
            Request::Quit => Reply::new(221, "2.0.0 Bye"),
            Request::Vrfy { .. } => Reply::new(252, "2.1.5 Cannot VRFY user, but will accept message and attempt delivery"),
            Request::Expn { .. } => Reply::new(502, "5.5.1 EXPN is not supported"),
            Request::Help { .. } => Reply::new(214, "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT"),
            Request::StartTls => match (&self.ctx.config.tls, self.tls) {
                (None, _) => Reply::new(502, "5.5.1 STARTTLS is not offered on this listener"),
                (Some(_), true) => Reply::new(503, "5.5.1 TLS is already active"),
                (Some(_), false) => match self.state {
                    State::Ready { .. } => Reply::new(220, "2.0.0 Ready to start TLS"),
                    _ => Reply::new(503, "5.5.1 Say EHLO first, and not during a transaction"),
                },
            },
            Request::Auth { mechanism, initial_response } => self.auth(mechanism, initial_response).await,
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Reply::new(502, "5.5.1 Command not implemented")
            }
        }
    }

    /// Too little free space to take a message and still encrypt and send
    /// the queued ones.
    fn spool_is_full(&self) -> bool {
        let min = self.ctx.config.min_free_bytes;
        min > 0
            && self.ctx.spool.free_bytes().is_ok_and(|free| {
                let full = free < min;
                if full {
                    tracing::warn!(free, min, "spool nearly full: refusing new mail for now");
                }
                full
            })
    }

    async fn begin_data(&self, helo: String, from: String, rcpts: Vec<Rcpt>) -> io::Result<DataState> {
        let qid = Spool::new_qid();
        // Our trace header first (RFC 5321 4.4).
        let received = format!(
            "Received: from {} ({})\r\n\tby {} (smtp2stub) with ESMTP id {qid};\r\n\t{}\r\n",
            sanitize(&helo),
            sanitize(&self.peer),
            self.ctx.config.hostname,
            stubmail::time::rfc5322(stubmail::time::unix_now())
        );
        let file = Data::Memory(received.into_bytes());
        let mut rx = DataReceiver::new();
        // The CRLF that ended the DATA command begins the data: prime the
        // receiver so a leading "." is unstuffed and ".\r\n" ends at once.
        rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
        Ok(DataState { helo, from, rcpts, qid, file: Some(file), rx, scan: Scan::default(), size: 0, write_failed: false })
    }

    /// DATA ended: check, fsync, commit to the spool, and only then 250.
    async fn end_data(&mut self) -> Reply {
        let State::Data(d) = std::mem::replace(&mut self.state, State::Fresh) else {
            return Reply::new(451, "4.3.0 Internal state error");
        };
        let DataState { helo, from, rcpts, qid, file, scan, size, write_failed, .. } = *d;
        self.state = State::Ready { helo: helo.clone() };
        let tmp = self.ctx.spool.tmp_path(&qid);
        if write_failed {
            return Reply::new(452, "4.3.1 Insufficient system storage; try again later");
        }
        let Some(file) = file else {
            return Reply::new(552, format!("5.3.4 Message size exceeds the limit of {} bytes", self.ctx.config.max_size));
        };
        if let Some(r) = scan.verdict() {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            tracing::warn!(peer = %self.peer, "refused message: {}", r.text);
            return r;
        }
        let stub: Vec<&stubmail::protocol::Fpr> = rcpts
            .iter()
            .filter_map(|r| match &r.route {
                Route::Stub { fpr } => Some(fpr),
                Route::Relay | Route::Pgp { .. } => None,
            })
            .collect();
        let verdict = if stub.is_empty() {
            Ok(())
        } else {
            // As many stored copies as the worker will make: one for the
            // recipients the header shows, one per hidden (Bcc) recipient.
            let header = match &file {
                Data::Memory(v) => stubmail::mail::read_header(&mut &v[..], crate::worker::MAX_HEADER),
                Data::File(_) => crate::worker::spool_header(&tmp),
            }
            .unwrap_or_default();
            let copies = crate::worker::stub_copies(&header, &rcpts);
            self.ctx.policy.check_outbox(&qid, size, copies, &stub).await
        };
        if let Err(r) = verdict {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            tracing::warn!(peer = %self.peer, "refused message: {}", r.text);
            return r;
        }
        let env = Envelope {
            qid: qid.clone(),
            from,
            rcpts,
            received: stubmail::time::unix_now(),
            helo,
            peer: self.peer.clone(),
            jobs: vec![],
            subject: None,
            list: false,
        };
        let committed = self.ctx.spool.commit(&env, file).await;
        match committed {
            Ok(()) => {
                tracing::info!(qid, size, rcpts = env.rcpts.len(), "accepted");
                self.ctx.accepted.notify_one();
                Reply::new(250, format!("2.0.0 OK: queued as {qid}"))
            }
            Err(e) => {
                tracing::error!(qid, "spool commit failed: {e}");
                self.ctx.policy.not_accepted(&qid);
                let _ = tokio::fs::remove_file(&tmp).await;
                if e.raw_os_error() == Some(28) {
                    Reply::new(452, "4.3.1 Insufficient system storage; try again later")
                } else {
                    Reply::new(451, "4.3.0 Could not store the message durably; try again later")
                }
            }
        }
    }

    /// Drop a half-received message (connection lost, RSET during DATA).
    async fn abort_data(&mut self) {
        if let State::Data(d) = &mut self.state
            && d.file.take().is_some() {
                let _ = tokio::fs::remove_file(self.ctx.spool.tmp_path(&d.qid)).await;
            }
    }
}

fn b64(b: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(b.trim_ascii()).ok()
}

/// Keep client-supplied text from breaking a header line.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests_support {
    pub use super::tests::dialogue_with as run;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    use stubmail::protocol::Fpr;

    struct TestPolicy;
    impl Policy for TestPolicy {
        fn sender(&self, addr: &str) -> Result<(), Reply> {
            if addr.eq_ignore_ascii_case("alice@example.org") { Ok(()) } else { Err(Reply::new(550, "5.7.1 not yours")) }
        }
        async fn recipient(&self, addr: &str) -> Result<Route, Reply> {
            match addr {
                "bob@example.net" => Ok(Route::Stub { fpr: Fpr::parse(&"B".repeat(40)).unwrap() }),
                "carol@example.com" => Ok(Route::Stub { fpr: Fpr::parse(&"C".repeat(40)).unwrap() }),
                "dave@plain.example" => Ok(Route::Relay),
                _ => Err(Reply::new(550, "5.1.1 unknown")),
            }
        }
        async fn check_outbox(&self, _: &str, size: u64, _: u64, _: &[&Fpr]) -> Result<(), Reply> {
            if size > 900 { Err(Reply::new(552, "5.2.2 over quota")) } else { Ok(()) }
        }
    }

    pub struct Run {
        pub output: String,
        pub queued: Vec<Envelope>,
        pub spool: Spool,
        pub _dir: tempfile::TempDir,
    }

    impl Run {
        pub fn codes(&self) -> Vec<u16> {
            self.output
                .lines()
                .filter(|l| l.as_bytes().get(3) == Some(&b' '))
                .map(|l| l[..3].parse().unwrap())
                .collect()
        }
        fn message(&self, i: usize) -> Vec<u8> {
            std::fs::read(self.spool.msg_path(&self.queued[i].qid)).unwrap()
        }
    }

    async fn dialogue(input: &[u8], chunk: usize, max_size: u64) -> Run {
        dialogue_with(input, chunk, SessionConfig { max_size, auth_required: false, ..SessionConfig::default() }).await
    }

    pub async fn dialogue_with(input: &[u8], chunk: usize, config: SessionConfig) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ctx = Ctx {
            config,
            policy: TestPolicy,
            spool: spool.clone(),
            accepted: Arc::new(tokio::sync::Notify::new()),
        };
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut cr, mut cw) = tokio::io::split(client);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            for c in input.chunks(chunk.max(1)) {
                cw.write_all(c).await.unwrap();
            }
            cw.shutdown().await.unwrap();
            cw
        });
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            cr.read_to_string(&mut s).await.unwrap();
            s
        });
        serve(server, "127.0.0.1:1".into(), &ctx).await.unwrap();
        let _ = writer.await;
        let output = reader.await.unwrap();
        let queued = spool.queued().unwrap();
        Run { output, queued, spool, _dir: dir }
    }

    const HAPPY: &[u8] = b"EHLO client.example\r\nMAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=100\r\n\
RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n\
Subject: hi\r\n\r\n..leading dot\r\nline two\r\n.\r\nQUIT\r\n";

    #[tokio::test]
    async fn happy_path_every_chunk_size() {
        for chunk in [1, 2, 3, 5, 7, 13, 64, 4096] {
            let r = dialogue(HAPPY, chunk, 1 << 20).await;
            assert_eq!(r.codes(), vec![220, 250, 250, 250, 250, 354, 250, 221], "chunk {chunk}: {}", r.output);
            assert!(r.output.contains("250-PIPELINING") && r.output.contains("250-SIZE 1048576"), "{}", r.output);
            assert_eq!(r.queued.len(), 1);
            assert_eq!(r.queued[0].rcpts.len(), 2);
            let m = String::from_utf8(r.message(0)).unwrap();
            assert!(m.starts_with("Received: from client.example"), "{m}");
            assert!(m.ends_with("Subject: hi\r\n\r\n.leading dot\r\nline two\r\n"), "chunk {chunk}: {m:?}");
        }
    }

    #[tokio::test]
    async fn empty_message_and_two_transactions() {
        let input = b"HELO c\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n.\r\n\
MAIL FROM:<ALICE@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
        let r = dialogue(input, 3, 1000).await;
        assert_eq!(r.codes(), vec![220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221], "{}", r.output);
        assert_eq!(r.queued.len(), 2);
    }

    #[tokio::test]
    async fn smuggling_and_bare_line_endings_refused() {
        let cases: &[&[u8]] = &[
            // SMTP smuggling: a bare-LF "end of data" hiding a second message.
            b"Subject: a\r\n\r\nx\n.\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\nevil\r\n.\r\n",
            b"Subject: a\r\n\r\nx\r\n.\nQUIT\r\n.\r\n",
            b"Subject: a\r\n\r\nbare\rcr\r\n.\r\n",
            // Unix line endings: "\n.\r\n" is not the end; the real one follows.
            b"Subject: a\n\nunix line endings\n.\r\nmore\r\n.\r\n",
        ];
        for body in cases {
            for chunk in [1, 4, 1000] {
                let mut input = b"EHLO c\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n".to_vec();
                input.extend_from_slice(body);
                input.extend_from_slice(b"NOOP\r\n");
                let r = dialogue(&input, chunk, 1 << 20).await;
                assert_eq!(r.codes(), vec![220, 250, 250, 250, 354, 550, 250], "{:?} chunk {chunk}: {}", String::from_utf8_lossy(body), r.output);
                assert!(r.queued.is_empty(), "nothing may be queued");
                assert_eq!(std::fs::read_dir(r._dir.path().join("tmp")).unwrap().count(), 0, "no leftovers");
            }
        }
    }

    #[tokio::test]
    async fn long_lines() {
        let mut input = b"EHLO c\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', 999));
        input.extend_from_slice(b"\r\n.\r\n");
        input.extend(std::iter::repeat_n(b'b', 10_000));
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let r = dialogue(&input, 777, 1 << 20).await;
        assert_eq!(r.codes(), vec![220, 250, 250, 250, 354, 550, 500, 250], "{}", r.output);
        assert!(r.output.contains("998"));
    }

    #[tokio::test]
    async fn no_open_relay_and_sequencing() {
        let input = b"MAIL FROM:<alice@example.org>\r\nEHLO c\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n\
MAIL FROM:<mallory@evil.example>\r\nMAIL FROM:<alice@example.org>\r\nMAIL FROM:<alice@example.org>\r\n\
RCPT TO:<stranger@elsewhere.example>\r\nDATA\r\nFROB\r\nVRFY bob\r\nRSET\r\nRCPT TO:<bob@example.net>\r\nQUIT\r\n";
        let r = dialogue(input, 5, 1000).await;
        assert_eq!(
            r.codes(),
            vec![220, 503, 250, 503, 503, 550, 250, 503, 550, 554, 500, 252, 250, 503, 221],
            "{}",
            r.output
        );
        assert!(r.queued.is_empty());
    }

    #[tokio::test]
    async fn size_limit() {
        let input = b"EHLO c\r\nMAIL FROM:<alice@example.org> SIZE=5000\r\nMAIL FROM:<alice@example.org>\r\n\
RCPT TO:<bob@example.net>\r\nDATA\r\n0123456789\r\n0123456789\r\n.\r\nNOOP\r\n";
        let r = dialogue(input, 9, 16).await;
        assert_eq!(r.codes(), vec![220, 250, 552, 250, 250, 354, 552, 250], "{}", r.output);
        assert!(r.queued.is_empty());
    }

    #[tokio::test]
    async fn an_outbox_over_quota_refuses_before_250() {
        let mut input = b"EHLO c\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&b"0123456789\r\n".repeat(100));
        input.extend_from_slice(b".\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<dave@plain.example>\r\nDATA\r\n");
        input.extend_from_slice(&b"0123456789\r\n".repeat(100));
        input.extend_from_slice(b".\r\n");
        let r = dialogue(&input, 64, 1 << 20).await;
        // The relay-only message does not touch the outbox: accepted.
        assert_eq!(r.codes(), vec![220, 250, 250, 250, 354, 552, 250, 250, 354, 250], "{}", r.output);
        assert_eq!(r.queued.len(), 1);
        assert_eq!(std::fs::read_dir(r._dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn too_many_errors_hang_up() {
        let input = b"X\r\n".repeat(50);
        let r = dialogue(&input, 50, 1000).await;
        assert!(r.output.trim_end().ends_with("Too many errors, closing connection"), "{}", r.output);
        assert!(r.codes().len() < 30);
    }
}

#[cfg(test)]
mod auth_tests {
    use super::tests_support::*;
    use super::*;

    /// AUTH required; `in_clear`: allowed without TLS (a loopback listener).
    fn creds(in_clear: bool) -> SessionConfig {
        SessionConfig {
            credentials: Some(Credentials { username: "alice".into(), password: "pw".into() }),
            auth_required: true,
            auth_in_clear: in_clear,
            ..SessionConfig::default()
        }
    }

    const MAIL: &str = "MAIL FROM:<alice@example.org>\r\n";

    #[tokio::test]
    async fn auth_plain_login_and_failures() {
        // PLAIN with an initial response; LOGIN in steps; PLAIN in two steps.
        let plain = "AUTH PLAIN AGFsaWNlAHB3\r\n"; // \0alice\0pw
        let login = "AUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\n";
        let two_step = "AUTH PLAIN\r\nAGFsaWNlAHB3\r\n";
        for (how, codes) in [
            (plain, vec![220, 250, 235, 250, 221]),
            (login, vec![220, 250, 334, 334, 235, 250, 221]),
            (two_step, vec![220, 250, 334, 235, 250, 221]),
        ] {
            let input = format!("EHLO c\r\n{how}{MAIL}QUIT\r\n");
            let r = run(input.as_bytes(), 3, creds(false)).await;
            // Plain text off loopback: refused before any credential is read.
            assert_eq!(r.codes()[..3], [220, 250, 538], "{how}: {}", r.output);
            let r = run(input.as_bytes(), 3, creds(true)).await;
            assert_eq!(r.codes(), codes, "{how}: {}", r.output);
            assert!(r.output.contains("250-AUTH PLAIN LOGIN"), "{}", r.output);
        }
    }

    #[tokio::test]
    async fn mail_needs_auth_when_required_and_guessing_is_cut_off() {
        for in_clear in [false, true] {
            let r = run(format!("EHLO c\r\n{MAIL}QUIT\r\n").as_bytes(), 100, creds(in_clear)).await;
            assert_eq!(r.codes(), vec![220, 250, 530, 221], "{}", r.output);
            assert_eq!(r.output.contains("AUTH PLAIN"), in_clear, "AUTH offered in the clear only on loopback: {}", r.output);
        }
        // The default: no credentials configured means no mail at all.
        let r = run(format!("EHLO c\r\n{MAIL}QUIT\r\n").as_bytes(), 100, SessionConfig::default()).await;
        assert_eq!(r.codes(), vec![220, 250, 530, 221], "{}", r.output);
        // A failure holds the next attempt (any connection) for a while;
        // held attempts are not checked, and three failures hang up.
        let bad = "AUTH PLAIN AGFsaWNlAG5v\r\n"; // \0alice\0no
        let good = "AUTH PLAIN AGFsaWNlAHB3\r\n";
        let r = run(format!("EHLO c\r\n{bad}{good}{bad}{bad}NOOP\r\n").as_bytes(), 100, creds(true)).await;
        assert_eq!(r.codes(), vec![220, 250, 535, 454, 454, 421], "{}", r.output);
        let r = run(b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH CRAM-MD5\r\nNOOP\r\n", 100, creds(true)).await;
        assert_eq!(r.codes(), vec![220, 250, 334, 501, 504, 250], "{}", r.output);
    }

    #[tokio::test]
    async fn failures_on_one_connection_hold_logins_on_the_next() {
        let config = creds(true);
        let bad = "AUTH PLAIN AGFsaWNlAG5v\r\n";
        let good = "AUTH PLAIN AGFsaWNlAHB3\r\n";
        let r = run(format!("EHLO c\r\n{bad}QUIT\r\n").as_bytes(), 100, config.clone()).await;
        assert_eq!(r.codes(), vec![220, 250, 535, 221], "{}", r.output);
        // The clone shares the listener's throttle, as every connection does.
        let r = run(format!("EHLO c\r\n{good}QUIT\r\n").as_bytes(), 100, config.clone()).await;
        assert_eq!(r.codes(), vec![220, 250, 454, 221], "{}", r.output);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = run(format!("EHLO c\r\n{good}{MAIL}QUIT\r\n").as_bytes(), 100, config).await;
        assert_eq!(r.codes(), vec![220, 250, 235, 250, 221], "{}", r.output);
    }

    /// What a browser sends for `<form method=post enctype=text/plain
    /// action=http://127.0.0.1:2525/>` whose field hides an SMTP dialogue.
    const FORM_POST: &str = "POST / HTTP/1.1\r\nHost: 127.0.0.1:2525\r\nUser-Agent: Mozilla/5.0\r\n\
Content-Type: text/plain\r\nContent-Length: 200\r\n\r\n\
a=\r\nEHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n\
DATA\r\nSubject: forged\r\n\r\nfrom a web page\r\n.\r\nQUIT\r\n";

    #[tokio::test]
    async fn http_on_the_smtp_port_is_closed_at_its_first_line() {
        for chunk in [1, 2, 3, 7, 16, 31, 32, 33, 64, 1000] {
            for config in [creds(true), SessionConfig { auth_required: false, ..SessionConfig::default() }] {
                let r = run(FORM_POST.as_bytes(), chunk, config).await;
                assert_eq!(r.codes(), vec![220, 554], "chunk {chunk}: {}", r.output);
                assert!(r.queued.is_empty(), "nothing queued");
            }
        }
        // Also in the middle of a session, and for a header line alone.
        for (input, codes) in [
            ("EHLO c\r\nGET / HTTP/1.1\r\nQUIT\r\n", vec![220, 250, 554]),
            ("EHLO c\r\nHost: 127.0.0.1\r\nQUIT\r\n", vec![220, 250, 554]),
            ("CONNECT 127.0.0.1:25 HTTP/1.1\r\n", vec![220, 554]),
            // A request line whose method is a mail verb, the version far out.
            (&*format!("EHLO /{} HTTP/1.1\r\nQUIT\r\n", "p".repeat(200)), vec![220, 554]),
        ] {
            let r = run(input.as_bytes(), 5, creds(true)).await;
            assert_eq!(r.codes(), codes, "{input:?}: {}", r.output);
        }
    }
}
