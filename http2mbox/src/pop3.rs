//! The local POP3 server (RFC 1939, with RFC 2449 CAPA and response codes)
//! over the configured mailbox, Maildir or mbox. One session per mailbox at
//! a time (RFC 1939's exclusive lock): with mbox the session holds the mbox
//! locks, so delivery waits; with Maildir new mail simply shows in the next
//! session. The session is generic over the stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mbox;

/// Which mailbox POP3 serves.
#[derive(Clone, Debug)]
pub enum Store {
    Maildir(PathBuf),
    Mbox(PathBuf),
}

/// One message as POP3 presents it.
#[derive(Clone, Debug)]
struct Msg {
    /// UIDL: stable across sessions and restarts.
    uid: String,
    /// Size in octets as sent (CRLF line endings, before dot-stuffing).
    size: u64,
    loc: Loc,
}

#[derive(Clone, Debug)]
enum Loc {
    /// A Maildir file.
    File(PathBuf),
    /// An mbox message: content bytes [start, end) after its From line;
    /// `from` is where its From line starts.
    Range { from: u64, start: u64, end: u64 },
}

/// An opened, locked mailbox.
enum Open {
    Maildir { _lock: File, msgs: Vec<Msg> },
    Mbox { lock: mbox::MboxLock, msgs: Vec<Msg> },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the mailbox is in use by another session")]
    InUse,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Open {
    fn msgs(&self) -> &[Msg] {
        match self {
            Open::Maildir { msgs, .. } | Open::Mbox { msgs, .. } => msgs,
        }
    }

    fn lock(store: &Store) -> Result<Open, OpenError> {
        match store {
            Store::Maildir(root) => {
                std::fs::create_dir_all(root)?;
                let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(root.join(".pop3.lock"))?;
                match lock.try_lock() {
                    Ok(()) => {}
                    Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::InUse),
                    Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
                }
                let mut files = Vec::new();
                for sub in ["cur", "new"] {
                    if let Ok(rd) = std::fs::read_dir(root.join(sub)) {
                        for e in rd.flatten() {
                            let name = e.file_name().to_string_lossy().into_owned();
                            if !name.starts_with('.') {
                                files.push((name, e.path()));
                            }
                        }
                    }
                }
                // Maildir names begin with the delivery time: oldest first.
                files.sort();
                let mut msgs = Vec::new();
                for (name, path) in files {
                    let uid: String = name.split(':').next().unwrap_or(&name).chars().filter(|c| c.is_ascii_graphic()).take(70).collect();
                    // Renamed meanwhile (IMAP or mutt changing its flags):
                    // found again; gone (removed): not in this session.
                    let (path, file) = match open_moved(&path) {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let size = crlf_size(BufReader::new(file), false)?;
                    msgs.push(Msg { uid, size, loc: Loc::File(path) });
                }
                Ok(Open::Maildir { _lock: lock, msgs })
            }
            Store::Mbox(path) => {
                let lock = match mbox::lock(path, Duration::from_secs(5)) {
                    Ok(l) => l,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(OpenError::InUse),
                    Err(e) => return Err(e.into()),
                };
                let msgs = scan_mbox(&lock.file)?;
                Ok(Open::Mbox { lock, msgs })
            }
        }
    }

    /// A reader of message `i`'s stored bytes, and whether they are mboxrd.
    fn reader(&self, i: usize) -> io::Result<(Box<dyn BufRead + Send>, bool)> {
        let m = &self.msgs()[i];
        match (&m.loc, self) {
            (Loc::File(p), _) => Ok((Box::new(BufReader::new(open_moved(p)?.1)), false)),
            (Loc::Range { start, end, .. }, Open::Mbox { lock, .. }) => {
                let mut f = lock.file.try_clone()?;
                f.seek(SeekFrom::Start(*start))?;
                Ok((Box::new(BufReader::new(f.take(end - start))), true))
            }
            _ => Err(io::Error::other("message location does not match the mailbox")),
        }
    }

    /// UPDATE state: remove the deleted messages, durably.
    fn commit(self, deleted: &[bool]) -> io::Result<()> {
        match self {
            Open::Maildir { msgs, .. } => {
                let mut dirs = Vec::new();
                for (m, _) in msgs.iter().zip(deleted).filter(|(_, d)| **d) {
                    if let Loc::File(p) = &m.loc {
                        let p = &open_moved(p).map(|(p, _)| p).unwrap_or_else(|_| p.clone());
                        match std::fs::remove_file(p) {
                            Ok(()) => {}
                            // Already gone (another client): fine.
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                        if let Some(d) = p.parent().filter(|d| !dirs.iter().any(|x: &PathBuf| x == d)) {
                            dirs.push(d.to_path_buf());
                        }
                    }
                }
                for d in dirs {
                    stubmail::fsutil::fsync_dir(&d)?;
                }
                Ok(())
            }
            Open::Mbox { lock, msgs } => {
                if !deleted.iter().any(|d| *d) {
                    return Ok(());
                }
                // Compact in place under the locks: every kept message moves
                // towards the start; nothing after the last one is kept.
                let mut f = lock.file.try_clone()?;
                let total = f.metadata()?.len();
                let mut write_at = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                for (k, m) in msgs.iter().enumerate() {
                    let Loc::Range { from, .. } = m.loc else { continue };
                    let next = msgs.get(k + 1).and_then(|n| match n.loc {
                        Loc::Range { from, .. } => Some(from),
                        _ => None,
                    });
                    let stop = next.unwrap_or(total);
                    if deleted[k] {
                        continue;
                    }
                    let mut read_at = from;
                    while read_at < stop {
                        let n = ((stop - read_at) as usize).min(buf.len());
                        f.seek(SeekFrom::Start(read_at))?;
                        f.read_exact(&mut buf[..n])?;
                        f.seek(SeekFrom::Start(write_at))?;
                        f.write_all(&buf[..n])?;
                        read_at += n as u64;
                        write_at += n as u64;
                    }
                }
                f.set_len(write_at)?;
                f.sync_all()?;
                drop(lock);
                Ok(())
            }
        }
    }
}

/// Open a Maildir file, or the same message under its new name if its
/// flags changed since it was listed (the name before `:2,` stays; the
/// file may also have moved from `new/` to `cur/`).
fn open_moved(path: &std::path::Path) -> io::Result<(PathBuf, File)> {
    match File::open(path) {
        Ok(f) => return Ok((path.to_path_buf(), f)),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let base = name.split(':').next().unwrap_or(&name).to_string();
    let root = path.parent().and_then(|d| d.parent()).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    for sub in ["cur", "new"] {
        let Ok(rd) = std::fs::read_dir(root.join(sub)) else { continue };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().split(':').next() == Some(base.as_str()) {
                let p = e.path();
                if let Ok(f) = File::open(&p) {
                    return Ok((p, f));
                }
            }
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// Find the messages of an mbox: "From " lines at the start of the file or
/// after a blank line begin a message.
fn scan_mbox(file: &File) -> io::Result<Vec<Msg>> {
    use sha2::Digest;
    let mut r = BufReader::new(file.try_clone()?);
    r.seek(SeekFrom::Start(0))?;
    let mut starts: Vec<(u64, u64)> = Vec::new(); // (from line, content start)
    let (mut pos, mut prev_blank) = (0u64, true);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if prev_blank && line.starts_with(b"From ") {
            starts.push((pos, pos + n as u64));
        }
        prev_blank = line == b"\n" || line == b"\r\n";
        pos += n as u64;
    }
    let total = pos;
    let mut msgs = Vec::new();
    for (k, &(from, start)) in starts.iter().enumerate() {
        let next = starts.get(k + 1).map_or(total, |s| s.0);
        // The blank line before the next "From " separates; it is not content.
        let mut f = file.try_clone()?;
        let mut end = next;
        let take = (end - start).min(2);
        let mut last = [0u8; 2];
        f.seek(SeekFrom::Start(end - take))?;
        f.read_exact(&mut last[..take as usize])?;
        if &last[..take as usize] == b"\n\n" || &last[..take as usize] == b"\n" {
            end -= 1;
        }
        f.seek(SeekFrom::Start(start))?;
        let mut content = BufReader::new(f.take(end - start));
        // UIDL: the Stubmail-Id if present, else a hash of the content.
        let mut uid = None;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut in_header = true;
        loop {
            line.clear();
            if content.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            hasher.update(&line);
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            if in_header {
                if body.is_empty() {
                    in_header = false;
                } else if let Some(v) = body.strip_prefix(b"Stubmail-Id: ") {
                    uid.get_or_insert_with(|| String::from_utf8_lossy(v).trim().to_string());
                }
            }
            size += mbox::unquote_line(body).len() as u64 + 2;
        }
        let uid = uid
            .filter(|u| !u.is_empty() && u.len() <= 70 && u.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_else(|| hex::encode(hasher.finalize()));
        msgs.push(Msg { uid, size, loc: Loc::Range { from, start, end } });
    }
    Ok(msgs)
}

/// Octets of a message as sent with CRLF line endings.
fn crlf_size(mut r: impl BufRead, mboxrd: bool) -> io::Result<u64> {
    let mut size = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(size);
        }
        let l = line.strip_suffix(b"\n").unwrap_or(&line);
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        size += if mboxrd { mbox::unquote_line(l).len() } else { l.len() } as u64 + 2;
    }
}

/// Copy a message as POP3 lines: CRLF endings, a leading "." doubled.
fn pop3_lines(mut r: impl BufRead, mboxrd: bool, top: Option<usize>, out: &mut dyn Write) -> io::Result<()> {
    let mut line = Vec::new();
    let mut in_header = true;
    let mut body_lines = 0usize;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let l = line.strip_suffix(b"\n").unwrap_or(&line);
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let l = if mboxrd { mbox::unquote_line(l) } else { l };
        if !in_header {
            if top.is_some_and(|n| body_lines >= n) {
                return Ok(());
            }
            body_lines += 1;
        } else if l.is_empty() {
            in_header = false;
        }
        if l.starts_with(b".") {
            out.write_all(b".")?;
        }
        out.write_all(l)?;
        out.write_all(b"\r\n")?;
    }
}

/// Called after a successful login (a quick poll).
pub type LoginHook = Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// What the server needs for each session.
pub struct Ctx {
    pub store: Store,
    pub username: String,
    pub password: String,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// USER/PASS only over TLS (the listener is not loopback).
    pub require_tls: bool,
    /// Runs after a successful login, before the mailbox is opened: a quick
    /// poll, so the client sees fresh mail.
    pub on_login: Option<LoginHook>,
    /// Failed logins, counted across every connection.
    pub throttle: Arc<stubmail::guard::LoginThrottle>,
}

/// The session's state; each state carries its data.
enum State {
    Authorization { user: Option<String> },
    Transaction { mailbox: Open, deleted: Vec<bool> },
}

enum Flow {
    Close,
    StartTls,
}

/// Longest command line accepted (RFC 2449 allows 255 octets).
const MAX_LINE: usize = 512;

/// Serve one POP3 session.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(stream: S, peer: String, ctx: Arc<Ctx>) -> io::Result<()> {
    let mut stream = buffered(stream);
    stream.write_all(b"+OK stubmail POP3 server ready\r\n").await?;
    stream.flush().await?;
    let mut s = Session { ctx: ctx.clone(), peer, state: State::Authorization { user: None }, tls: false, failures: 0 };
    match s.run(&mut stream).await? {
        Flow::StartTls => {
            let Some(acceptor) = &ctx.tls else { return Ok(()) };
            // Anything the client pipelined after STLS is dropped unread.
            let inner = stream.into_inner().into_inner();
            let tls = acceptor.accept(inner).await?;
            let mut tls = buffered(tls);
            s.tls = true;
            s.state = State::Authorization { user: None };
            s.run(&mut tls).await?;
            let _ = tls.shutdown().await;
        }
        Flow::Close => {
            let _ = stream.shutdown().await;
        }
    }
    Ok(())
}

/// The stream with buffers both ways (tokio's BufStream, whose read
/// buffer can be looked at: replies are flushed once the client's
/// pipelined commands are all answered, not after each).
type Buffered<S> = tokio::io::BufReader<tokio::io::BufWriter<S>>;

fn buffered<S: AsyncRead + AsyncWrite>(s: S) -> Buffered<S> {
    tokio::io::BufReader::new(tokio::io::BufWriter::with_capacity(64 * 1024, s))
}

/// Messages up to this size are read whole in one step for RETR/TOP;
/// larger ones are streamed in chunks (memory does not grow with them).
const READ_WHOLE: u64 = 256 * 1024;

/// Messages up to this size are read right on the session's task: a
/// read of a few pages costs less than the trip through the blocking
/// pool, which, for a client pipelining a thousand RETRs, was most of
/// the time it waited.
const READ_INLINE: u64 = 64 * 1024;

struct Session {
    ctx: Arc<Ctx>,
    peer: String,
    state: State,
    tls: bool,
    failures: u32,
}

impl Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut Buffered<S>) -> io::Result<Flow> {
        let mut line = Vec::new();
        loop {
            line.clear();
            // Answer everything pipelined so far in one go; flush before
            // waiting for the client (no whole command is buffered).
            if !stream.buffer().contains(&b'\n') {
                stream.flush().await?;
            }
            let read = tokio::time::timeout(Duration::from_secs(600), async {
                let mut limited = (&mut *stream).take(MAX_LINE as u64 + 1);
                limited.read_until(b'\n', &mut line).await
            })
            .await;
            let n = match read {
                Ok(r) => r?,
                Err(_) => {
                    stream.write_all(b"-ERR idle timeout\r\n").await?;
                    stream.flush().await?;
                    return Ok(Flow::Close);
                }
            };
            if n == 0 {
                // Connection lost: no UPDATE state, nothing is deleted.
                return Ok(Flow::Close);
            }
            if line.len() > MAX_LINE || !line.ends_with(b"\n") {
                stream.write_all(b"-ERR line too long\r\n").await?;
                stream.flush().await?;
                return Ok(Flow::Close);
            }
            if stubmail::guard::looks_like_http(&line) {
                // A web page speaking HTTP to us through the user's browser.
                tracing::warn!(peer = %self.peer, "HTTP request on the POP3 port; closing");
                stream.write_all(b"-ERR this is a POP3 server, not HTTP\r\n").await?;
                stream.flush().await?;
                return Ok(Flow::Close);
            }
            let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
            let (cmd, arg) = match text.split_once(' ') {
                Some((c, a)) => (c.to_ascii_uppercase(), a.to_string()),
                None => (text.to_ascii_uppercase(), String::new()),
            };
            let flow = self.command(&cmd, &arg, stream).await?;
            if let Some(f) = flow {
                stream.flush().await?;
                return Ok(f);
            }
        }
    }

    async fn command<T: AsyncWrite + Unpin>(&mut self, cmd: &str, arg: &str, out: &mut T) -> io::Result<Option<Flow>> {
        macro_rules! reply {
            ($($t:tt)*) => {{ out.write_all(format!($($t)*).as_bytes()).await?; out.write_all(b"\r\n").await?; }};
        }
        match (&mut self.state, cmd) {
            (_, "CAPA") => {
                reply!("+OK Capability list follows");
                let mut caps = vec!["USER", "UIDL", "TOP", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION stubmail"];
                if self.ctx.tls.is_some() && !self.tls && matches!(self.state, State::Authorization { .. }) {
                    caps.push("STLS");
                }
                for c in caps {
                    reply!("{c}");
                }
                reply!(".");
            }
            (_, "NOOP") => reply!("+OK"),
            (State::Authorization { .. }, "STLS") => match (&self.ctx.tls, self.tls) {
                (Some(_), false) => {
                    reply!("+OK begin TLS negotiation");
                    out.flush().await?;
                    return Ok(Some(Flow::StartTls));
                }
                _ => reply!("-ERR STLS is not available"),
            },
            (State::Authorization { .. }, "USER" | "PASS") if self.ctx.require_tls && !self.tls => {
                reply!("-ERR [AUTH] use STLS first: passwords are not sent in the clear here")
            }
            (State::Authorization { user }, "USER") => {
                if arg.is_empty() {
                    reply!("-ERR USER needs a name");
                } else {
                    *user = Some(arg.to_string());
                    reply!("+OK send PASS");
                }
            }
            (State::Authorization { user }, "PASS") => {
                let Some(u) = user.take() else {
                    reply!("-ERR USER first");
                    return Ok(None);
                };
                // Failures count against the client's address and the
                // account across connections; hang up after three.
                // User names are addresses: any case.
                let user_ok = stubmail::server::constant_eq(u.to_ascii_lowercase().as_bytes(), self.ctx.username.to_ascii_lowercase().as_bytes());
                let ip = stubmail::guard::peer_ip(&self.peer);
                let account = user_ok.then_some(self.ctx.username.as_str());
                if let Err(t) = self.ctx.throttle.check(ip, account) {
                    self.failures += 1;
                    tracing::warn!(peer = %self.peer, "POP3 login refused: too many recent failures");
                    reply!("-ERR [SYS/TEMP] too many failed logins; try again in {} seconds", t.secs());
                    return Ok((self.failures >= 3).then_some(Flow::Close));
                }
                let ok = user_ok & stubmail::server::constant_eq(arg.as_bytes(), self.ctx.password.as_bytes());
                if !ok {
                    self.ctx.throttle.failed(ip, account);
                    self.failures += 1;
                    tracing::warn!(peer = %self.peer, failures = self.failures, "POP3 login failed");
                    reply!("-ERR [AUTH] invalid user name or password");
                    return Ok((self.failures >= 3).then_some(Flow::Close));
                }
                self.ctx.throttle.succeeded(ip, account);
                if let Some(hook) = &self.ctx.on_login {
                    hook().await;
                }
                let store = self.ctx.store.clone();
                match tokio::task::spawn_blocking(move || Open::lock(&store)).await.map_err(io::Error::other)? {
                    Ok(mailbox) => {
                        let total: u64 = mailbox.msgs().iter().map(|m| m.size).sum();
                        reply!("+OK maildrop has {} messages ({} octets)", mailbox.msgs().len(), total);
                        let deleted = vec![false; mailbox.msgs().len()];
                        self.state = State::Transaction { mailbox, deleted };
                    }
                    Err(OpenError::InUse) => reply!("-ERR [IN-USE] the mailbox is locked by another session"),
                    Err(OpenError::Io(e)) => {
                        tracing::error!("opening the mailbox: {e}");
                        reply!("-ERR [SYS/TEMP] cannot open the mailbox; try again later");
                    }
                }
            }
            (State::Authorization { .. }, "QUIT") => {
                reply!("+OK bye");
                return Ok(Some(Flow::Close));
            }
            (State::Authorization { .. }, "APOP" | "AUTH") => reply!("-ERR not supported; use USER and PASS"),
            (State::Authorization { .. }, _) => reply!("-ERR unknown command or not allowed before login"),
            (State::Transaction { mailbox, deleted }, c) => {
                let live = |i: usize| !deleted[i];
                let pick = |a: &str| -> Result<usize, &'static str> {
                    let n: usize = a.trim().parse().map_err(|_| "-ERR bad message number")?;
                    if n == 0 || n > deleted.len() {
                        return Err("-ERR no such message");
                    }
                    if deleted[n - 1] {
                        return Err("-ERR message is deleted");
                    }
                    Ok(n - 1)
                };
                let msgs = mailbox.msgs();
                match c {
                    "STAT" => {
                        let (n, s) = msgs.iter().enumerate().filter(|(i, _)| live(*i)).fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size));
                        reply!("+OK {n} {s}");
                    }
                    "LIST" | "UIDL" => {
                        let show = |m: &Msg| if c == "LIST" { m.size.to_string() } else { m.uid.clone() };
                        if arg.is_empty() {
                            reply!("+OK listing follows");
                            for (i, m) in msgs.iter().enumerate().filter(|(i, _)| live(*i)) {
                                reply!("{} {}", i + 1, show(m));
                            }
                            reply!(".");
                        } else {
                            match pick(arg) {
                                Ok(i) => reply!("+OK {} {}", i + 1, show(&msgs[i])),
                                Err(e) => reply!("{e}"),
                            }
                        }
                    }
                    "RETR" | "TOP" => {
                        let mut parts = arg.split_whitespace();
                        let i = match pick(parts.next().unwrap_or("")) {
                            Ok(i) => i,
                            Err(e) => {
                                reply!("{e}");
                                return Ok(None);
                            }
                        };
                        let top = if c == "TOP" {
                            match parts.next().and_then(|n| n.parse::<usize>().ok()) {
                                Some(n) => Some(n),
                                None => {
                                    reply!("-ERR TOP needs a message number and a line count");
                                    return Ok(None);
                                }
                            }
                        } else {
                            None
                        };
                        let (reader, mboxrd) = match mailbox.reader(i) {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::error!("reading message {}: {e}", i + 1);
                                reply!("-ERR [SYS/TEMP] cannot read the message");
                                return Ok(None);
                            }
                        };
                        reply!("+OK {} octets", msgs[i].size);
                        if msgs[i].size <= READ_WHOLE {
                            let size = msgs[i].size as usize;
                            let read = move || -> io::Result<Vec<u8>> {
                                let mut v = Vec::with_capacity(size + size / 16 + 8);
                                pop3_lines(reader, mboxrd, top, &mut v)?;
                                Ok(v)
                            };
                            let bytes = if msgs[i].size <= READ_INLINE {
                                read()?
                            } else {
                                // One trip through the blocking pool per message.
                                tokio::task::spawn_blocking(read).await.map_err(io::Error::other)??
                            };
                            out.write_all(&bytes).await?;
                            out.write_all(b".\r\n").await?;
                            return Ok(None);
                        }
                        // Stream in chunks from a blocking reader: memory does
                        // not grow with the message.
                        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
                        let producer = tokio::task::spawn_blocking(move || {
                            let mut w = io::BufWriter::with_capacity(64 * 1024, ChannelWriter(tx));
                            pop3_lines(reader, mboxrd, top, &mut w)?;
                            w.flush()
                        });
                        while let Some(chunk) = rx.recv().await {
                            out.write_all(&chunk).await?;
                        }
                        // A read error mid-message cannot be reported in POP3
                        // any more: close rather than send a truncated message.
                        producer.await.map_err(io::Error::other)??;
                        out.write_all(b".\r\n").await?;
                    }
                    "DELE" => match pick(arg) {
                        Ok(i) => {
                            deleted[i] = true;
                            reply!("+OK message {} deleted", i + 1);
                        }
                        Err(e) => reply!("{e}"),
                    },
                    "RSET" => {
                        deleted.iter_mut().for_each(|d| *d = false);
                        reply!("+OK");
                    }
                    "QUIT" => {
                        let State::Transaction { mailbox, deleted } = std::mem::replace(&mut self.state, State::Authorization { user: None }) else {
                            return Ok(Some(Flow::Close));
                        };
                        let n = deleted.iter().filter(|d| **d).count();
                        match tokio::task::spawn_blocking(move || mailbox.commit(&deleted)).await.map_err(io::Error::other)? {
                            Ok(()) => reply!("+OK bye ({n} messages deleted)"),
                            Err(e) => {
                                tracing::error!("POP3 UPDATE failed: {e}");
                                reply!("-ERR [SYS/TEMP] some deleted messages were not removed");
                            }
                        }
                        return Ok(Some(Flow::Close));
                    }
                    _ => reply!("-ERR unknown command"),
                }
            }
        }
        Ok(None)
    }
}

/// Sends written bytes to the async side of a RETR.
struct ChannelWriter(tokio::sync::mpsc::Sender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.blocking_send(b.to_vec()).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Accept POP3 sessions until `shutdown`.
pub async fn run(listener: tokio::net::TcpListener, ctx: Arc<Ctx>, shutdown: tokio_util::sync::CancellationToken) -> io::Result<()> {
    const LIMITS: stubmail::server::ConnLimits =
        stubmail::server::ConnLimits::new(b"-ERR [SYS/TEMP] too many connections from your address; try again later\r\n");
    stubmail::server::accept_loop(listener, shutdown, LIMITS, |stream, peer| {
        let ctx = ctx.clone();
        async move {
            if let Err(e) = serve(stream, peer.to_string(), ctx).await {
                tracing::debug!(%peer, "POP3 session ended: {e}");
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_renamed_since_it_was_listed_is_found() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["new", "cur"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
        }
        std::fs::write(d.path().join("cur/7.x.host:2,FS"), "m").unwrap();
        // Listed as in new/, since moved to cur/ with flags (IMAP, mutt).
        let (p, _) = open_moved(&d.path().join("new/7.x.host")).unwrap();
        assert_eq!(p, d.path().join("cur/7.x.host:2,FS"));
        let (p, _) = open_moved(&d.path().join("cur/7.x.host:2,S")).unwrap();
        assert_eq!(p, d.path().join("cur/7.x.host:2,FS"));
        assert_eq!(open_moved(&d.path().join("cur/8.y.host:2,")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
    use tokio::io::AsyncReadExt;

    fn ctx(store: Store) -> Arc<Ctx> {
        Arc::new(Ctx { store, username: "bob".into(), password: "pw".into(), tls: None, require_tls: false, on_login: None, throttle: Default::default() })
    }

    async fn dialogue(ctx: Arc<Ctx>, input: &str) -> String {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut r, mut w) = tokio::io::split(client);
        let input = input.to_string();
        let writer = tokio::spawn(async move {
            w.write_all(input.as_bytes()).await.unwrap();
            // End of input: the client hangs up (after QUIT, or mid-session).
            let _ = w.shutdown().await;
        });
        let srv = tokio::spawn(serve(server, "test".into(), ctx));
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        srv.await.unwrap().unwrap();
        writer.await.unwrap();
        out
    }

    fn maildir() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("Maildir");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("new/1000.A.host"), "Subject: one\n\nfirst body\n.dot line\n").unwrap();
        std::fs::write(root.join("cur/1001.B.host:2,S"), "Subject: two\n\nl1\nl2\nl3\n").unwrap();
        (d, root)
    }

    /// Small messages are read whole, large ones streamed: both arrive
    /// byte for byte (CRLF, dot-stuffed), pipelined after each other.
    #[tokio::test]
    async fn small_and_large_messages_pipelined() {
        let (_d, root) = maildir();
        let line = ".starts with a dot and is long enough to matter\n";
        let big = format!("Subject: big\n\n{}", line.repeat((READ_WHOLE as usize / line.len()) * 2));
        std::fs::write(root.join("cur/1002.C.host:2,S"), &big).unwrap();
        let out = dialogue(ctx(Store::Maildir(root)), "USER bob\r\nPASS pw\r\nRETR 3\r\nRETR 1\r\nRETR 3\r\nQUIT\r\n").await;
        let stuffed = big.replace("\n.", "\n..").replace('\n', "\r\n");
        let want_big = format!("+OK {} octets\r\n{stuffed}.\r\n", big.len() + big.matches('\n').count());
        let small = "+OK 39 octets\r\nSubject: one\r\n\r\nfirst body\r\n..dot line\r\n.\r\n";
        assert!(out.contains(&format!("{want_big}{small}{want_big}+OK bye")), "{}", &out[..300.min(out.len())]);
    }

    #[tokio::test]
    async fn maildir_session_transaction_and_update() {
        let (_d, root) = maildir();
        let c = ctx(Store::Maildir(root.clone()));
        let out = dialogue(
            c.clone(),
            "CAPA\r\nSTAT\r\nUSER bob\r\nPASS pw\r\nSTAT\r\nLIST\r\nUIDL\r\nTOP 2 1\r\nRETR 1\r\nDELE 1\r\nSTAT\r\nRETR 1\r\nRSET\r\nDELE 2\r\nLIST 2\r\nQUIT\r\n",
        )
        .await;
        // Sizes count CRLF line endings: 12+2 + 0+2 + 10+2 + 9+2 = 39; 12+2 + 2 + 4+4+4 = 28.
        for want in [
            "+OK Capability list follows\r\nUSER\r\nUIDL\r\nTOP\r\n",
            "-ERR unknown command or not allowed before login",
            "+OK maildrop has 2 messages (67 octets)",
            "+OK 2 67\r\n",
            "+OK listing follows\r\n1 39\r\n2 28\r\n.\r\n",
            "+OK listing follows\r\n1 1000.A.host\r\n2 1001.B.host\r\n.\r\n",
            "+OK 28 octets\r\nSubject: two\r\n\r\nl1\r\n.\r\n",
            "+OK 39 octets\r\nSubject: one\r\n\r\nfirst body\r\n..dot line\r\n.\r\n",
            "+OK message 1 deleted\r\n+OK 1 28\r\n-ERR message is deleted\r\n+OK\r\n+OK message 2 deleted\r\n-ERR message is deleted\r\n",
            "+OK bye (1 messages deleted)",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        assert!(root.join("new/1000.A.host").exists(), "RSET undid the first DELE");
        assert!(!root.join("cur/1001.B.host:2,S").exists(), "QUIT removed message 2");
        // A dropped connection is not QUIT: nothing is deleted.
        let out = dialogue(c, "USER bob\r\nPASS pw\r\nDELE 1\r\n").await;
        assert!(out.contains("+OK message 1 deleted"));
        assert!(root.join("new/1000.A.host").exists());
    }

    #[tokio::test]
    async fn one_session_per_mailbox_and_bad_passwords() {
        let (_d, root) = maildir();
        let c = ctx(Store::Maildir(root.clone()));
        let held = Open::lock(&Store::Maildir(root)).ok().unwrap();
        let out = dialogue(c.clone(), "USER bob\r\nPASS pw\r\nQUIT\r\n").await;
        assert!(out.contains("-ERR [IN-USE]"), "{out}");
        drop(held);
        let out = dialogue(c.clone(), "USER bob\r\nPASS no\r\nUSER bob\r\nPASS no\r\nUSER bob\r\nPASS no\r\nUSER bob\r\nPASS pw\r\n").await;
        // The first failure is checked; the next attempts come too soon and
        // are refused unchecked; three failures hang up.
        assert_eq!(out.matches("-ERR [AUTH]").count(), 1, "{out}");
        assert_eq!(out.matches("-ERR [SYS/TEMP] too many failed logins").count(), 2, "{out}");
        assert!(!out.contains("maildrop"), "the connection closed after three failures: {out}");
        // Another connection at once: held too, even with the right password.
        let out = dialogue(c.clone(), "USER bob\r\nPASS pw\r\nQUIT\r\n").await;
        assert!(out.contains("-ERR [SYS/TEMP]") && !out.contains("maildrop"), "{out}");
    }

    #[tokio::test]
    async fn http_on_the_pop3_port_is_closed_at_its_first_line() {
        let (_d, root) = maildir();
        let c = ctx(Store::Maildir(root));
        let form = "POST / HTTP/1.1\r\nHost: 127.0.0.1:1110\r\n\r\nUSER bob\r\nPASS pw\r\nDELE 1\r\nQUIT\r\n";
        let out = dialogue(c.clone(), form).await;
        assert!(out.ends_with("-ERR this is a POP3 server, not HTTP\r\n") && !out.contains("maildrop"), "{out}");
        let out = dialogue(c, "USER bob\r\nHost: x\r\nPASS pw\r\n").await;
        assert!(out.ends_with("not HTTP\r\n") && !out.contains("maildrop"), "{out}");
    }

    #[tokio::test]
    async fn mbox_session_unquotes_and_compacts() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("mbox");
        let m1 = "From a@x.org Thu Jan  1 00:00:00 1970\nStubmail-Id: abc\nSubject: one\n\n>From quoted\nbody\n\n";
        let m2 = "From b@x.org Thu Jan  1 00:00:00 1970\nSubject: two\n\nsecond\n\n";
        std::fs::write(&path, format!("{m1}{m2}")).unwrap();
        let c = ctx(Store::Mbox(path.clone()));
        let out = dialogue(c.clone(), "USER bob\r\nPASS pw\r\nUIDL 1\r\nRETR 1\r\nLIST\r\nDELE 1\r\nQUIT\r\n").await;
        assert!(out.contains("+OK 1 abc\r\n"), "{out}");
        assert!(out.contains("+OK 53 octets\r\nStubmail-Id: abc\r\nSubject: one\r\n\r\nFrom quoted\r\nbody\r\n.\r\n"), "{out}");
        assert!(out.contains("+OK bye (1 messages deleted)"), "{out}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), m2, "only message 2 is left, intact");
        let out = dialogue(c, "USER bob\r\nPASS pw\r\nSTAT\r\nQUIT\r\n").await;
        assert!(out.contains("+OK 1 "), "{out}");
    }

    #[tokio::test]
    async fn hostile_lines() {
        let (_d, root) = maildir();
        let out = dialogue(ctx(Store::Maildir(root)), &format!("USER {}\r\n", "x".repeat(5000))).await;
        assert!(out.contains("-ERR line too long"), "{out}");
        let (_d, root) = maildir();
        let out = dialogue(ctx(Store::Maildir(root)), "USER bob\r\nPASS pw\r\nRETR 0\r\nRETR 99\r\nRETR x\r\nTOP 1\r\nFOO\r\nQUIT\r\n").await;
        assert_eq!(out.matches("-ERR").count(), 5, "{out}");
    }
}
