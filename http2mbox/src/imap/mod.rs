//! The local IMAP server (IMAP4rev1, RFC 3501, with the extensions mail
//! clients use daily) over the Maildir and its Maildir++ folders.
//!
//! - `mod.rs`: the listener, reading commands (literals, bounds, idle
//!   timeouts) and IDLE's wait; generic over the stream, so a whole
//!   dialogue is a unit test over an in-memory pipe.
//! - `session.rs`: the commands, as a state machine whose states carry
//!   their data.
//! - `folder.rs`: folders, UIDs and flags on disk.
//! - `message.rs`, `search.rs`, `wire.rs`: FETCH's views of a message,
//!   SEARCH, and how values are written.
//!
//! Commands are parsed by imap-codec; nothing here parses IMAP syntax by
//! hand but the few bytes that tell an APPEND's literal from others.

pub mod ext;
pub mod folder;
pub mod message;
pub mod mutf7;
pub mod search;
mod session;
pub mod wire;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use session::Session;

/// Called after a successful login (a quick poll).
pub type LoginHook = crate::pop3::LoginHook;

/// What the server needs for each session.
pub struct Ctx {
    /// The Maildir (the INBOX; folders are its `.Name` subdirectories).
    pub root: std::path::PathBuf,
    /// Same account as POP3: user name and password.
    pub username: String,
    pub password: String,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// LOGIN and AUTHENTICATE only over TLS (the listener is not loopback).
    pub require_tls: bool,
    /// Runs after a successful login: a quick poll.
    pub on_login: Option<LoginHook>,
    /// Failed logins, counted across every connection (and shared with POP3).
    pub throttle: Arc<stubmail::guard::LoginThrottle>,
    /// Bumped by the poller after each delivery: IDLE announces new mail
    /// at once instead of at its next look at the folder.
    pub delivered: Option<tokio::sync::watch::Receiver<u64>>,
    /// Largest message FETCH serves (what delivery takes).
    pub max_message: u64,
    /// Largest message APPEND takes.
    pub max_append: u64,
}

/// Longest command without its literals (RFC 7162 §4 asks for at least
/// 8,192 octets; long UID sets from a sync client need more).
pub const MAX_LINE: usize = 64 * 1024;
/// Largest literal in anything but APPEND (a password, a search string).
pub const MAX_SMALL_LITERAL: u64 = 64 * 1024;
/// Idle clients are logged out after this long (RFC 9051 §5.4: at least
/// 30 minutes).
pub const AUTOLOGOUT: Duration = Duration::from_secs(31 * 60);
/// Before login, a client gets this long per command.
pub const PREAUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the connection does after a session's loop ends.
pub enum Flow {
    Close,
    StartTls,
}

/// The stream, buffered both ways.
pub type Buffered<S> = tokio::io::BufReader<tokio::io::BufWriter<S>>;

fn buffered<S: AsyncRead + AsyncWrite>(s: S) -> Buffered<S> {
    tokio::io::BufReader::new(tokio::io::BufWriter::with_capacity(64 * 1024, s))
}

/// Serve one IMAP connection.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(stream: S, peer: String, ctx: Arc<Ctx>) -> io::Result<()> {
    let mut stream = buffered(stream);
    let mut s = Session::new(ctx.clone(), peer);
    stream.write_all(format!("* OK [CAPABILITY {}] stubmail IMAP server ready\r\n", s.capabilities()).as_bytes()).await?;
    match s.run(&mut stream).await? {
        Flow::StartTls => {
            let Some(acceptor) = &ctx.tls else { return Ok(()) };
            // Anything pipelined after STARTTLS is dropped unread (the
            // command injection RFC 9051 §11.1 warns of).
            let inner = stream.into_inner().into_inner();
            let tls = acceptor.accept(inner).await?;
            let mut tls = buffered(tls);
            s.tls = true;
            s.run(&mut tls).await?;
            let _ = tls.shutdown().await;
        }
        Flow::Close => {
            let _ = stream.shutdown().await;
        }
    }
    Ok(())
}

/// One complete command's bytes (literals included), read within bounds.
pub enum Read {
    Command(Vec<u8>),
    /// The client hung up.
    Eof,
    /// Nothing for too long.
    Timeout,
    /// Refused before reading all of it: answer with this and close.
    Refused(String),
    /// A literal refused before the client sent it (synchronizing): the
    /// tagged answer; the session goes on.
    Rejected(String),
    /// Not IMAP at all (an HTTP request from a web page).
    Http,
}

/// Reads commands off the stream, answering literal continuations.
pub struct Reader {
    buf: Vec<u8>,
    pub max_append: u64,
}

impl Reader {
    pub fn new(max_append: u64) -> Reader {
        Reader { buf: Vec::new(), max_append }
    }

    /// Whether a whole command may be waiting already (pipelining): then
    /// answers are not flushed before reading it.
    pub fn has_pending(&self) -> bool {
        self.buf.contains(&b'\n')
    }

    /// Read one command, `wait` at most between bytes. Framing only: a
    /// line ending in a literal marker (`{N}` or `{N+}`, which no other
    /// IMAP token can end with) continues after N octets; the command is
    /// parsed by imap-codec once whole.
    pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut Buffered<S>, wait: Duration) -> io::Result<Read> {
        // Where the next line of this command starts, and how many octets
        // of the buffer are literal data already agreed to.
        let (mut scan, mut literal_total, mut literals) = (0usize, 0u64, 0u32);
        loop {
            while scan < self.buf.len() {
                let Some(nl) = self.buf[scan..].iter().position(|&b| b == b'\n').map(|p| scan + p) else { break };
                if scan == 0 && stubmail::guard::looks_like_http(&self.buf[..nl]) {
                    return Ok(Read::Http);
                }
                let Some((length, sync)) = literal_marker(&self.buf[scan..nl]) else {
                    let cmd: Vec<u8> = self.buf.drain(..=nl).collect();
                    return Ok(Read::Command(cmd));
                };
                let tag = tag_of(&self.buf);
                literals += 1;
                let limit = if is_append(&self.buf) { self.max_append } else { MAX_SMALL_LITERAL };
                if length > limit || literals > 1000 {
                    let why = format!("{tag} NO [TOOBIG] a literal of {length} octets is over this server's limit of {limit}");
                    if sync && self.buf.len() == nl + 1 {
                        // The client waits for "+" and sends nothing more
                        // of this command: refuse it, the session goes on.
                        self.buf.clear();
                        return Ok(Read::Rejected(why));
                    }
                    return Ok(Read::Refused(why));
                }
                literal_total += length;
                if sync && self.buf.len() == nl + 1 {
                    stream.write_all(b"+ go ahead\r\n").await?;
                    stream.flush().await?;
                }
                scan = nl + 1 + length as usize;
            }
            // The part of the buffer that is not agreed literal data must
            // stay within a line's bound.
            if (self.buf.len() as u64).saturating_sub(literal_total) > MAX_LINE as u64 {
                return Ok(Read::Refused("* BAD command line too long".into()));
            }
            let mut chunk = [0u8; 64 * 1024];
            let want = if scan > self.buf.len() { (scan - self.buf.len()).min(chunk.len()) } else { chunk.len() };
            let n = match tokio::time::timeout(wait, stream.read(&mut chunk[..want])).await {
                Ok(r) => r?,
                Err(_) => return Ok(Read::Timeout),
            };
            if n == 0 {
                return Ok(Read::Eof);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next whole line, if it has come (IDLE's DONE, an AUTHENTICATE
    /// response).
    pub fn take_line(&mut self) -> Option<Vec<u8>> {
        let nl = self.buf.iter().position(|&b| b == b'\n')?;
        Some(self.buf.drain(..=nl).collect())
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}

/// `{N}` or `{N+}` (or LITERAL-'s `{N-}`... not offered) at the end of a
/// line: the length and whether the client waits for "+".
fn literal_marker(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // A length past u64 is a lie like any other too large: refused.
    Some((std::str::from_utf8(digits).ok()?.parse().unwrap_or(u64::MAX), sync))
}

/// The tag of the command in `buf`, for answers to a command not parsed.
pub fn tag_of(buf: &[u8]) -> String {
    let t = buf.split(|&b| b == b' ' || b == b'\r' || b == b'\n').next().unwrap_or_default();
    if !t.is_empty() && t.len() <= 64 && t.iter().all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+]".contains(b)) {
        String::from_utf8_lossy(t).into_owned()
    } else {
        "*".into()
    }
}

/// Is the command in `buf` an APPEND (`TAG APPEND ...`)?
fn is_append(buf: &[u8]) -> bool {
    let mut it = buf.splitn(3, |&b| b == b' ');
    it.next();
    it.next().is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}

/// Accept IMAP sessions until `shutdown`.
pub async fn run(listener: tokio::net::TcpListener, ctx: Arc<Ctx>, shutdown: tokio_util::sync::CancellationToken) -> io::Result<()> {
    const LIMITS: stubmail::server::ConnLimits = stubmail::server::ConnLimits::new(b"* BYE too many connections from your address; try again later\r\n");
    stubmail::server::accept_loop(listener, shutdown, LIMITS, |stream, peer| {
        let ctx = ctx.clone();
        async move {
            if let Err(e) = serve(stream, peer.to_string(), ctx).await {
                tracing::debug!(%peer, "IMAP session ended: {e}");
            }
        }
    })
    .await;
    Ok(())
}
