//! The IMAP commands: a state machine whose states carry their data
//! (RFC 9051 §3: not authenticated, authenticated, selected, logout).

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItemName, Part, Section};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::CommandCodec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::folder::{self, Entry, Flags, Keywords, Locked, Store};
use super::message::{self, Parsed};
use super::search::{self, Candidate};
use super::wire;
use super::{ext, mutf7};
use super::{Buffered, Ctx, Flow, Read, Reader, AUTOLOGOUT, PREAUTH_TIMEOUT};

/// A selected folder, as this session has announced it to the client.
struct Selected {
    /// The folder's IMAP name.
    name: String,
    dir: PathBuf,
    /// EXAMINE: nothing in the folder changes.
    readonly: bool,
    uidvalidity: u32,
    /// The messages the client knows of, by sequence number - 1.
    msgs: Vec<View>,
    /// (new/ mtime, cur/ mtime) at the last look: IDLE looks again only
    /// when they move.
    stamp: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
    /// Messages gone from disk that the client has not been told of yet
    /// (EXPUNGE may not be sent during FETCH, STORE or SEARCH).
    pending_expunge: bool,
    highestmodseq: u64,
    /// When the folder was last looked at (`refresh_now_and_then`).
    last_look: std::time::Instant,
    /// The saved search result (`SEARCH RETURN (SAVE)`, RFC 5182), as
    /// UIDs: `$` names the ones still here.
    saved: Vec<u32>,
}

#[derive(Clone, Debug)]
struct View {
    uid: u32,
    size: u64,
    base: String,
    rel: String,
    flags: Flags,
    recent: bool,
    modseq: u64,
}

impl View {
    fn entry(&self) -> Entry {
        Entry { uid: self.uid, size: self.size, base: self.base.clone(), rel: self.rel.clone(), flags: self.flags.clone(), modseq: self.modseq }
    }
}

enum State {
    NotAuthenticated,
    Authenticated,
    Selected(Box<Selected>),
}

pub struct Session {
    ctx: Arc<Ctx>,
    peer: String,
    pub tls: bool,
    state: State,
    failures: u32,
    bad: u32,
    reader: Reader,
    delivered: Option<tokio::sync::watch::Receiver<u64>>,
    /// CONDSTORE is on (RFC 7162 §3.1: enabled by the first command that
    /// uses it): FETCH responses carry MODSEQ.
    condstore: bool,
    /// The mailbox's keyword letters, read at SELECT and at each look.
    keywords: Keywords,
    /// The client sent `ENABLE IMAP4rev2` (RFC 9051 §6.3.1): no \Recent,
    /// no RECENT, SEARCH answered with ESEARCH, mailbox names in UTF-8.
    rev2: bool,
    /// The RETURN options the pre-parser lifted off this command's SEARCH.
    search_ret: Option<ext::SearchReturn>,
}

/// Messages read whole at once, across all sessions, when they are over
/// [`STREAM_OVER`] and an item needs their MIME tree (a part, BINARY,
/// BODYSTRUCTURE): each costs a few times its size in memory, so many
/// sessions asking at once wait their turn instead (for 10 s at most).
static BIG_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Most `$` (the saved search result) one command may name.
const MAX_DOLLARS: usize = 8;

/// What the pre-parser made of a command.
enum Pre {
    /// For imap-codec to parse (perhaps rewritten).
    Command(Vec<u8>),
    /// Answered already: these bytes go out.
    Answer(Vec<u8>),
}

/// How a LIST answers (plain, LSUB, or with RFC 5258 options).
#[derive(Default)]
struct ListMode {
    lsub: bool,
    select: ext::ListSelect,
    ret: ext::ListReturn,
}

/// What a command handler tells the loop.
enum Next {
    Go,
    Close,
    StartTls,
}

/// A mailbox argument as the client wrote it (a LIST reference).
fn mailbox_text(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".into(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    }
}

fn list_pattern(m: &ListMailbox<'_>) -> String {
    match m {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    }
}

/// IMAP LIST wildcards: `*` matches anything, `%` anything but the
/// hierarchy delimiter.
fn wildmatch(p: &[u8], n: &[u8]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some(b'*') => (0..=n.len()).any(|i| wildmatch(&p[1..], &n[i..])),
        Some(b'%') => (0..=n.len()).take_while(|&i| i == 0 || n[i - 1] != b'.').any(|i| wildmatch(&p[1..], &n[i..])),
        Some(&c) => n.first().is_some_and(|&d| d.eq_ignore_ascii_case(&c)) && wildmatch(&p[1..], &n[1..]),
    }
}

/// A UID set written compactly: `1:3,7`.
fn uid_set(uids: &[u32]) -> String {
    let mut v = uids.to_vec();
    v.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}:{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

fn internaldate(t: std::time::SystemTime) -> String {
    let d: chrono::DateTime<chrono::Utc> = t.into();
    d.format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string()
}

fn section_text(s: &Option<Section<'_>>) -> String {
    let part = |p: &Part| p.0.as_ref().iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".");
    let pre = |p: &Option<Part>| p.as_ref().map(|p| format!("{}.", part(p))).unwrap_or_default();
    let names = |l: &[imap_codec::imap_types::core::AString<'_>]| {
        l.iter()
            .map(|a| {
                let b = a.as_ref();
                if !b.is_empty() && b.iter().all(|c| c.is_ascii_graphic() && !b"(){%*\"\\]".contains(c)) {
                    String::from_utf8_lossy(b).to_ascii_uppercase()
                } else {
                    wire::mailbox(&String::from_utf8_lossy(b))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    match s {
        None => String::new(),
        Some(Section::Part(p)) => part(p),
        Some(Section::Header(p)) => format!("{}HEADER", pre(p)),
        Some(Section::HeaderFields(p, l)) => format!("{}HEADER.FIELDS ({})", pre(p), names(l.as_ref())),
        Some(Section::HeaderFieldsNot(p, l)) => format!("{}HEADER.FIELDS.NOT ({})", pre(p), names(l.as_ref())),
        Some(Section::Text(p)) => format!("{}TEXT", pre(p)),
        Some(Section::Mime(p)) => format!("{}.MIME", part(p)),
    }
}

/// A BINARY section's part numbers as the answer names them (`1.2`).
fn binary_section(section: &[std::num::NonZeroU32]) -> String {
    section.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")
}

/// STATUS items (RFC 9051 §6.3.11, RFC 8438 SIZE, RFC 7162
/// HIGHESTMODSEQ) of a folder, by name; `Err` names an unknown one.
fn status_items(snap: &folder::Snapshot, names: &[String]) -> Result<Vec<String>, String> {
    let mut items = Vec::new();
    for n in names {
        let v = match n.as_str() {
            "MESSAGES" => snap.entries.len() as u64,
            "RECENT" => snap.entries.iter().filter(|e| e.in_new()).count() as u64,
            "UIDNEXT" => u64::from(snap.uidnext),
            "UIDVALIDITY" => u64::from(snap.uidvalidity),
            "UNSEEN" => snap.entries.iter().filter(|e| !e.flags.has('S')).count() as u64,
            "DELETED" => snap.entries.iter().filter(|e| e.flags.has('T')).count() as u64,
            "HIGHESTMODSEQ" => snap.highestmodseq,
            "DELETED-STORAGE" => snap.entries.iter().filter(|e| e.flags.has('T')).map(|e| e.size).sum::<u64>(),
            // RFC 8438: the octets of every message, as RFC822.SIZE counts them.
            "SIZE" => snap.entries.iter().map(|e| e.size).sum::<u64>(),
            other => return Err(format!("STATUS item {other:?} is not offered")),
        };
        items.push(format!("{n} {v}"));
    }
    Ok(items)
}

/// Messages larger than this are streamed from their files for the items
/// that allow it (BODY[], BODY[TEXT], RFC822, with partials).
const STREAM_OVER: u64 = 1 << 20;

/// Can this item be answered from the header and a stream of the file?
fn streamable(i: &MessageDataItemName<'_>) -> bool {
    match i {
        MessageDataItemName::BodyExt { section, .. } => matches!(section, None | Some(Section::Header(None)) | Some(Section::Text(None)) | Some(Section::HeaderFields(None, _)) | Some(Section::HeaderFieldsNot(None, _))),
        // BINARY[] of the whole message is the message, as BODY[] is.
        MessageDataItemName::Binary { section, .. } => section.is_empty(),
        MessageDataItemName::Body | MessageDataItemName::BodyStructure | MessageDataItemName::BinarySize { .. } => false,
        _ => true,
    }
}

/// A partial's (start, length, `<start>` text) within `total` octets.
fn window(partial: Option<(u32, std::num::NonZeroU32)>, total: u64) -> (u64, u64, String) {
    match partial {
        Some((start, len)) => {
            let st = u64::from(start).min(total);
            (st, u64::from(len.get()).min(total - st), format!("<{start}>"))
        }
        None => (0, total, String::new()),
    }
}

/// A message's header with CRLF endings (through the empty line, or the
/// whole message if it has none), read alone; `None` if it is over 1 MiB.
fn read_header_crlf(path: &std::path::Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::BufRead;
    let mut r = std::io::Read::take(std::io::BufReader::new(std::fs::File::open(path)?), 1 << 20);
    let mut raw = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            // The end of the file, or of what we read of it.
            if r.limit() == 0 {
                return Ok(None);
            }
            break;
        }
        raw.extend_from_slice(&line);
        if line == b"\n" || line == b"\r\n" {
            break;
        }
    }
    Ok(Some(folder::to_crlf(&raw)))
}

/// Send `take` octets of the file as IMAP sends it (CRLF endings) from
/// offset `skip`, in chunks. The literal's length was promised already:
/// a file that no longer has them ends the session (an error), rather
/// than a response the client would misread.
/// A message file (LF or CRLF endings) sent with CRLF endings, `take`
/// octets from `skip`; `nul_to_80`: a NUL goes as 0x80, as literals (not
/// literal8) must carry it (wire::literal).
async fn stream_crlf<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut Buffered<S>, path: &std::path::Path, skip: u64, take: u64, nul_to_80: bool) -> io::Result<()> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut conv = Vec::with_capacity(70 * 1024);
    let (mut pos, mut left, mut prev) = (0u64, take, 0u8);
    while left > 0 {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the message file changed while it was being sent"));
        }
        conv.clear();
        let chunk = &buf[..n];
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let before = if nl > 0 { chunk[nl - 1] } else { prev };
            if before == b'\r' {
                continue;
            }
            conv.extend_from_slice(&chunk[start..nl]);
            conv.extend_from_slice(b"\r\n");
            start = nl + 1;
        }
        conv.extend_from_slice(&chunk[start..]);
        if nul_to_80 {
            for b in conv.iter_mut().filter(|b| **b == 0) {
                *b = 0x80;
            }
        }
        prev = chunk[n - 1];
        let len = conv.len() as u64;
        if pos + len > skip {
            let from = skip.saturating_sub(pos) as usize;
            let to = (from as u64 + left).min(len) as usize;
            stream.write_all(&conv[from..to]).await?;
            left -= (to - from) as u64;
        }
        pos += len;
    }
    Ok(())
}

/// `top_section` without a copy where the section is a slice of the
/// message (whole, header, text).
fn top_section_ref<'r>(raw: &'r [u8], s: &Option<Section<'_>>) -> Option<std::borrow::Cow<'r, [u8]>> {
    use std::borrow::Cow;
    match s {
        None => Some(Cow::Borrowed(raw)),
        Some(Section::Header(None)) => Some(Cow::Borrowed(message::split_header(raw).0)),
        Some(Section::Text(None)) => Some(Cow::Borrowed(message::split_header(raw).1)),
        _ => top_section(raw, s).map(Cow::Owned),
    }
}

/// A section of the whole message, cut without the MIME tree; `None` for
/// sections inside parts.
fn top_section(raw: &[u8], s: &Option<Section<'_>>) -> Option<Vec<u8>> {
    use message::{header_fields, split_header};
    let names = |l: &[imap_codec::imap_types::core::AString<'_>]| l.iter().map(|a| a.as_ref().to_vec()).collect::<Vec<_>>();
    Some(match s {
        None => raw.to_vec(),
        Some(Section::Header(None)) => split_header(raw).0.to_vec(),
        Some(Section::Text(None)) => split_header(raw).1.to_vec(),
        Some(Section::HeaderFields(None, l)) => header_fields(split_header(raw).0, &names(l.as_ref()), false),
        Some(Section::HeaderFieldsNot(None, l)) => header_fields(split_header(raw).0, &names(l.as_ref()), true),
        _ => return None,
    })
}

/// The bytes a section names; empty when the message has no such part
/// (RFC 9051 §6.4.5: an empty string, not an error).
fn section_bytes(p: &Parsed<'_>, s: &Option<Section<'_>>) -> Vec<u8> {
    use message::{header_fields, resolve, split_header};
    let path = |p: &Part| p.0.as_ref().iter().map(|n| n.get()).collect::<Vec<u32>>();
    // The message a HEADER/TEXT refers to: the whole one, or the one
    // inside a message/rfc822 part.
    let inner = |part: &Option<Part>| -> Option<Vec<u8>> {
        match part {
            None => Some(p.raw.to_vec()),
            Some(pp) => resolve(&p.msg, &path(pp)).and_then(|r| r.nested_bytes().map(<[u8]>::to_vec)),
        }
    };
    let names = |l: &[imap_codec::imap_types::core::AString<'_>]| l.iter().map(|a| a.as_ref().to_vec()).collect::<Vec<_>>();
    match s {
        None => p.raw.to_vec(),
        Some(Section::Part(pp)) => resolve(&p.msg, &path(pp)).map(|r| r.body().to_vec()).unwrap_or_default(),
        Some(Section::Mime(pp)) => resolve(&p.msg, &path(pp)).map(|r| r.mime().to_vec()).unwrap_or_default(),
        Some(Section::Header(pp)) => inner(pp).map(|m| split_header(&m).0.to_vec()).unwrap_or_default(),
        Some(Section::Text(pp)) => inner(pp).map(|m| split_header(&m).1.to_vec()).unwrap_or_default(),
        Some(Section::HeaderFields(pp, l)) => inner(pp).map(|m| header_fields(split_header(&m).0, &names(l.as_ref()), false)).unwrap_or_default(),
        Some(Section::HeaderFieldsNot(pp, l)) => inner(pp).map(|m| header_fields(split_header(&m).0, &names(l.as_ref()), true)).unwrap_or_default(),
    }
}

fn stamp(dir: &std::path::Path) -> (Option<std::time::SystemTime>, Option<std::time::SystemTime>) {
    let m = |d: &str| std::fs::metadata(dir.join(d)).and_then(|m| m.modified()).ok();
    (m("new"), m("cur"))
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, peer: String) -> Session {
        let reader = Reader::new(ctx.max_append);
        let delivered = ctx.delivered.clone();
        Session { ctx, peer, tls: false, state: State::NotAuthenticated, failures: 0, bad: 0, reader, delivered, condstore: false, keywords: Keywords::default(), rev2: false, search_ret: None }
    }

    fn store(&self) -> Store {
        Store { root: self.ctx.root.clone() }
    }

    pub fn capabilities(&self) -> String {
        let mut caps = vec![
            "IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "UNSELECT", "MOVE", "SPECIAL-USE", "CHILDREN", "CONDSTORE", "ESEARCH", "SEARCHRES",
            "LIST-EXTENDED", "LIST-STATUS", "BINARY", "STATUS=SIZE",
        ];
        if self.ctx.tls.is_some() && !self.tls {
            caps.push("STARTTLS");
        }
        if self.ctx.require_tls && !self.tls {
            caps.push("LOGINDISABLED");
        } else if matches!(self.state, State::NotAuthenticated) {
            caps.push("AUTH=PLAIN");
        }
        caps.join(" ")
    }

    /// Serve commands until the client logs out, hangs up or idles out.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut Buffered<S>) -> io::Result<Flow> {
        if self.tls {
            // After STARTTLS: nothing the client sent in the clear counts.
            self.reader = Reader::new(self.ctx.max_append);
            self.state = State::NotAuthenticated;
        }
        loop {
            if !self.reader.has_pending() {
                stream.flush().await?;
            }
            let wait = if matches!(self.state, State::NotAuthenticated) { PREAUTH_TIMEOUT } else { AUTOLOGOUT };
            let bytes = match self.reader.next(stream, wait).await? {
                Read::Command(b) => b,
                Read::Eof => return Ok(Flow::Close),
                Read::Timeout => {
                    stream.write_all(b"* BYE autologout: idle for too long\r\n").await?;
                    stream.flush().await?;
                    return Ok(Flow::Close);
                }
                Read::Refused(why) => {
                    tracing::warn!(peer = %self.peer, "IMAP command refused: {why}");
                    stream.write_all(format!("{why}\r\n* BYE closing\r\n").as_bytes()).await?;
                    stream.flush().await?;
                    return Ok(Flow::Close);
                }
                Read::Rejected(why) => {
                    stream.write_all(format!("{why}\r\n").as_bytes()).await?;
                    continue;
                }
                Read::Http => {
                    tracing::warn!(peer = %self.peer, "HTTP request on the IMAP port; closing");
                    stream.write_all(b"* BYE this is an IMAP server, not HTTP\r\n").await?;
                    stream.flush().await?;
                    return Ok(Flow::Close);
                }
            };
            let bytes = match self.preparse(bytes) {
                Pre::Command(b) => b,
                Pre::Answer(a) => {
                    stream.write_all(&a).await?;
                    continue;
                }
            };
            let cmd = match CommandCodec::default().decode(&bytes) {
                Ok((_, c)) => c,
                Err(_) => {
                    self.bad += 1;
                    if self.search_ret.take().is_some_and(|r| r.save) {
                        self.forget_saved();
                    }
                    let tag = super::tag_of(&bytes);
                    stream.write_all(format!("{tag} BAD that is not a command this server understands (RFC 9051 syntax)\r\n").as_bytes()).await?;
                    if self.bad >= 20 && matches!(self.state, State::NotAuthenticated) {
                        stream.write_all(b"* BYE too many bad commands\r\n").await?;
                        stream.flush().await?;
                        return Ok(Flow::Close);
                    }
                    continue;
                }
            };
            let next = match self.command(cmd, stream).await {
                Ok(n) => n,
                // A command that cannot go on (the selected folder deleted
                // by another session, a disk error): say so and close,
                // rather than drop the connection without a word.
                Err(e) => {
                    tracing::warn!(peer = %self.peer, "IMAP session ends: {e}");
                    let why = e.to_string().replace(['\r', '\n'], " ");
                    stream.write_all(format!("* BYE {why}\r\n").as_bytes()).await?;
                    stream.flush().await?;
                    return Ok(Flow::Close);
                }
            };
            match next {
                Next::Go => {}
                Next::Close => {
                    stream.flush().await?;
                    return Ok(Flow::Close);
                }
                Next::StartTls => {
                    stream.flush().await?;
                    return Ok(Flow::StartTls);
                }
            }
        }
    }

    // Arms that end the session return early like `done!` does.
    #[allow(clippy::needless_return)]
    async fn command<S: AsyncRead + AsyncWrite + Unpin>(&mut self, cmd: Command<'_>, stream: &mut Buffered<S>) -> io::Result<Next> {
        let tag = cmd.tag.as_ref().to_string();
        let mut out: Vec<u8> = Vec::new();
        macro_rules! done {
            ($($t:tt)*) => {{
                out.extend_from_slice(format!("{} {}\r\n", tag, format!($($t)*)).as_bytes());
                stream.write_all(&out).await?;
                return Ok(Next::Go);
            }};
        }
        let authenticated = !matches!(self.state, State::NotAuthenticated);
        let cmd_is_examine = matches!(cmd.body, CommandBody::Examine { .. });
        match cmd.body {
            CommandBody::Capability => {
                out.extend_from_slice(format!("* CAPABILITY {}\r\n", self.capabilities()).as_bytes());
                done!("OK CAPABILITY completed")
            }
            CommandBody::Noop => {
                self.refresh(&mut out, true)?;
                done!("OK NOOP completed")
            }
            CommandBody::Logout => {
                out.extend_from_slice(b"* BYE logging out\r\n");
                out.extend_from_slice(format!("{tag} OK LOGOUT completed\r\n").as_bytes());
                stream.write_all(&out).await?;
                return Ok(Next::Close);
            }
            CommandBody::Id { .. } => {
                out.extend_from_slice(b"* ID (\"name\" \"stubmail\")\r\n");
                done!("OK ID completed")
            }
            CommandBody::StartTLS => {
                if authenticated || self.tls || self.ctx.tls.is_none() {
                    done!("BAD STARTTLS is not available here")
                }
                out.extend_from_slice(format!("{tag} OK begin TLS negotiation now\r\n").as_bytes());
                stream.write_all(&out).await?;
                return Ok(Next::StartTls);
            }
            CommandBody::Login { username, password } => {
                if authenticated {
                    done!("BAD already logged in")
                }
                let (u, p) = (username.as_ref().to_vec(), password.declassify().as_ref().to_vec());
                return self.login(&tag, &u, &p, stream).await;
            }
            CommandBody::Authenticate { mechanism, initial_response } => {
                if authenticated {
                    done!("BAD already logged in")
                }
                if !mechanism.as_ref().eq_ignore_ascii_case("PLAIN") {
                    done!("NO [CANNOT] only AUTHENTICATE PLAIN is offered")
                }
                let data: Vec<u8> = match initial_response {
                    Some(r) => r.declassify().to_vec(),
                    None => {
                        stream.write_all(b"+ \r\n").await?;
                        stream.flush().await?;
                        let Some(line) = self.read_line(stream).await? else { return Ok(Next::Close) };
                        let line = line.trim_ascii();
                        if line == b"*" {
                            done!("BAD AUTHENTICATE cancelled")
                        }
                        use base64::Engine;
                        match base64::engine::general_purpose::STANDARD.decode(line) {
                            Ok(d) => d,
                            Err(_) => done!("BAD AUTHENTICATE data is not base64"),
                        }
                    }
                };
                // authzid \0 authcid \0 password; an authzid other than the
                // user is not supported.
                let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
                if parts.len() != 3 || !(parts[0].is_empty() || parts[0].eq_ignore_ascii_case(parts[1])) {
                    done!("BAD AUTHENTICATE PLAIN wants authzid NUL user NUL password")
                }
                let (u, p) = (parts[1].to_vec(), parts[2].to_vec());
                return self.login(&tag, &u, &p, stream).await;
            }
            _ if !authenticated => done!("BAD log in first (LOGIN or AUTHENTICATE PLAIN)"),
            CommandBody::Enable { capabilities } => {
                // CONDSTORE is the one this server can switch on; RFC 5161
                // lists only what was enabled.
                use imap_codec::imap_types::extensions::enable::CapabilityEnable;
                let cond = capabilities.as_ref().iter().any(|c| matches!(c, CapabilityEnable::CondStore));
                let rev2 = capabilities.as_ref().iter().any(|c| c.to_string().eq_ignore_ascii_case("IMAP4rev2"));
                self.condstore |= cond;
                self.rev2 |= rev2;
                let mut enabled = String::from("* ENABLED");
                if cond {
                    enabled += " CONDSTORE";
                }
                if rev2 {
                    enabled += " IMAP4rev2";
                }
                out.extend_from_slice(format!("{enabled}\r\n").as_bytes());
                done!("OK ENABLE completed")
            }
            CommandBody::Namespace => {
                out.extend_from_slice(b"* NAMESPACE ((\"\" \".\")) NIL NIL\r\n");
                done!("OK NAMESPACE completed")
            }
            CommandBody::Select { mailbox, parameters } | CommandBody::Examine { mailbox, parameters } => {
                use imap_codec::imap_types::command::SelectParameter;
                if parameters.iter().any(|p| !matches!(p, SelectParameter::CondStore)) {
                    done!("BAD QRESYNC is not offered by this server")
                }
                self.condstore |= !parameters.is_empty();
                let readonly = cmd_is_examine;
                return self.select(&tag, &self.name_in(&mailbox), readonly, stream).await;
            }
            CommandBody::Create { mailbox } => {
                let name = self.name_in(&mailbox);
                match self.store().create(&name) {
                    Ok(true) => done!("OK CREATE completed"),
                    Ok(false) => done!("NO [ALREADYEXISTS] that folder exists"),
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => done!("NO [CANNOT] {e}"),
                    Err(e) => {
                        tracing::error!("IMAP CREATE {name}: {e}");
                        done!("NO [SERVERBUG] the folder could not be made")
                    }
                }
            }
            CommandBody::Delete { mailbox } => {
                let name = self.name_in(&mailbox);
                if let State::Selected(s) = &self.state
                    && s.name == name
                {
                    self.state = State::Authenticated;
                }
                match self.store().delete(&name) {
                    Ok(()) => done!("OK DELETE completed"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => done!("NO [NONEXISTENT] no such folder"),
                    Err(e) => done!("NO [CANNOT] {e}"),
                }
            }
            CommandBody::Rename { from, to } => match self.store().rename(&self.name_in(&from), &self.name_in(&to)) {
                Ok(()) => done!("OK RENAME completed"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => done!("NO [NONEXISTENT] no such folder"),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => done!("NO [ALREADYEXISTS] {e}"),
                Err(e) => done!("NO [CANNOT] {e}"),
            },
            CommandBody::Subscribe { mailbox } => {
                let store = self.store();
                let name = self.name_in(&mailbox);
                if store.dir(&name).is_err() {
                    done!("NO [CANNOT] that folder name is not allowed here")
                }
                folder::set_subscribed(&store.root, &store.folders(), &name, true)?;
                done!("OK SUBSCRIBE completed")
            }
            CommandBody::Unsubscribe { mailbox } => {
                let store = self.store();
                folder::set_subscribed(&store.root, &store.folders(), &self.name_in(&mailbox), false)?;
                done!("OK UNSUBSCRIBE completed")
            }
            CommandBody::List { reference, mailbox_wildcard, .. } => {
                let mut seen = HashSet::new();
                self.list(&mut out, &mailbox_text(&reference), &list_pattern(&mailbox_wildcard), &ListMode::default(), &mut seen)?;
                done!("OK LIST completed")
            }
            CommandBody::Lsub { reference, mailbox_wildcard } => {
                let mut seen = HashSet::new();
                self.list(&mut out, &mailbox_text(&reference), &list_pattern(&mailbox_wildcard), &ListMode { lsub: true, ..Default::default() }, &mut seen)?;
                done!("OK LSUB completed")
            }
            CommandBody::Status { mailbox, item_names } => {
                let name = self.name_in(&mailbox);
                let Ok(dir) = self.store().dir(&name) else { done!("NO [NONEXISTENT] no such folder") };
                let snap = match Locked::open(&dir).and_then(|l| l.sync()) {
                    Ok(s) => s,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => done!("NO [NONEXISTENT] no such folder"),
                    Err(e) => return Err(e),
                };
                let names: Vec<String> = item_names
                    .iter()
                    .map(|i| {
                        match i {
                            StatusDataItemName::Messages => "MESSAGES",
                            StatusDataItemName::Recent => "RECENT",
                            StatusDataItemName::UidNext => "UIDNEXT",
                            StatusDataItemName::UidValidity => "UIDVALIDITY",
                            StatusDataItemName::Unseen => "UNSEEN",
                            StatusDataItemName::Deleted => "DELETED",
                            StatusDataItemName::DeletedStorage => "DELETED-STORAGE",
                            StatusDataItemName::Size => "SIZE",
                            StatusDataItemName::HighestModSeq => "HIGHESTMODSEQ",
                        }
                        .to_string()
                    })
                    .collect();
                let items = match status_items(&snap, &names) {
                    Ok(v) => v,
                    Err(why) => done!("BAD {why}"),
                };
                out.extend_from_slice(format!("* STATUS {} ({})\r\n", self.name_out(&name), items.join(" ")).as_bytes());
                done!("OK STATUS completed")
            }
            CommandBody::Append { mailbox, flags, date, message } => {
                let name = self.name_in(&mailbox);
                let data: &[u8] = match &message {
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => l.as_ref(),
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
                };
                let Ok(dir) = self.store().dir(&name) else { done!("NO [CANNOT] that folder name is not allowed here") };
                if !dir.join("cur").is_dir() {
                    done!("NO [TRYCREATE] no such folder; CREATE it first")
                }
                if !self.keywords_fit(&flags)? {
                    done!("NO [LIMIT] this mailbox keeps 26 keywords at most, and they are taken; the message was not stored")
                }
                let mut f = Flags::default();
                for fl in &flags {
                    if let Some(l) = self.letter_for(fl)? {
                        f.set(l, true);
                    }
                }
                let when = date.map(|d| std::time::SystemTime::from(*d.as_ref()));
                let (validity, uid) = append(&dir, data, &f, when)?;
                self.refresh(&mut out, false)?;
                done!("OK [APPENDUID {validity} {uid}] APPEND completed")
            }
            CommandBody::Idle => return self.idle(&tag, stream).await,
            _ if !matches!(self.state, State::Selected(_)) => done!("BAD select a folder first"),
            CommandBody::Check => {
                self.refresh(&mut out, true)?;
                done!("OK CHECK completed")
            }
            CommandBody::Unselect => {
                self.state = State::Authenticated;
                done!("OK UNSELECT completed")
            }
            CommandBody::Close => {
                if let State::Selected(s) = &self.state
                    && !s.readonly
                {
                    let mut sink = Vec::new();
                    self.expunge(&mut sink, None)?;
                }
                self.state = State::Authenticated;
                done!("OK CLOSE completed")
            }
            CommandBody::Expunge => {
                if self.readonly() {
                    done!("NO [READ-ONLY] the folder was opened with EXAMINE")
                }
                self.expunge(&mut out, None)?;
                done!("OK EXPUNGE completed")
            }
            CommandBody::ExpungeUid { sequence_set } => {
                if self.readonly() {
                    done!("NO [READ-ONLY] the folder was opened with EXAMINE")
                }
                self.expunge(&mut out, Some(&sequence_set))?;
                done!("OK UID EXPUNGE completed")
            }
            CommandBody::Search { charset, criteria, uid } => {
                let ret = self.search_ret.take();
                if let Some(c) = &charset
                    && !["US-ASCII", "UTF-8"].iter().any(|x| c.as_ref().eq_ignore_ascii_case(x))
                {
                    // A failed SEARCH ... RETURN (SAVE) leaves the saved result empty (RFC 5182 §2.1).
                    if ret.as_ref().is_some_and(|r| r.save) {
                        self.forget_saved();
                    }
                    done!("NO [BADCHARSET (US-ASCII UTF-8)] that charset is not supported")
                }
                let key = SearchKey::And(criteria);
                let found = self.search(&key, uid);
                if ret.is_some() || self.rev2 {
                    let ret = ret.unwrap_or(ext::SearchReturn { all: true, ..Default::default() });
                    self.esearch(&mut out, &tag, &key, &found, uid, &ret);
                    if uid {
                        self.refresh_now_and_then(&mut out)?;
                    }
                    done!("OK SEARCH completed")
                }
                out.extend_from_slice(b"* SEARCH");
                for (n, _) in &found {
                    out.extend_from_slice(format!(" {n}").as_bytes());
                }
                // A search by MODSEQ says the highest of what it found.
                if search::uses_modseq(&key) && !found.is_empty() {
                    self.condstore = true;
                    out.extend_from_slice(format!(" (MODSEQ {})", found.iter().map(|(_, m)| *m).max().unwrap_or(0)).as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                if uid {
                    self.refresh_now_and_then(&mut out)?;
                }
                done!("OK SEARCH completed")
            }
            CommandBody::Fetch { sequence_set, macro_or_item_names, uid, modifiers } => {
                use imap_codec::imap_types::command::FetchModifier;
                let mut changed_since = None;
                for m in &modifiers {
                    match m {
                        FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                        FetchModifier::Vanished => done!("BAD QRESYNC is not offered by this server"),
                    }
                }
                let items = match macro_or_item_names {
                    MacroOrMessageDataItemNames::Macro(m) => match m {
                        Macro::Fast => vec![MessageDataItemName::Flags, MessageDataItemName::InternalDate, MessageDataItemName::Rfc822Size],
                        Macro::All => vec![MessageDataItemName::Flags, MessageDataItemName::InternalDate, MessageDataItemName::Rfc822Size, MessageDataItemName::Envelope],
                        _ => vec![MessageDataItemName::Flags, MessageDataItemName::InternalDate, MessageDataItemName::Rfc822Size, MessageDataItemName::Envelope, MessageDataItemName::Body],
                    },
                    MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
                };
                if changed_since.is_some() || items.iter().any(|i| matches!(i, MessageDataItemName::ModSeq)) {
                    self.condstore = true;
                }
                let refused = self.fetch(&mut out, &sequence_set, &items, uid, changed_since, stream).await?;
                if uid {
                    self.refresh_now_and_then(&mut out)?;
                }
                if let Some(why) = refused {
                    done!("NO {why}")
                }
                done!("OK FETCH completed")
            }
            CommandBody::Store { sequence_set, kind, response, flags, uid, modifiers } => {
                if self.readonly() {
                    done!("NO [READ-ONLY] the folder was opened with EXAMINE")
                }
                use imap_codec::imap_types::command::StoreModifier;
                let unchanged_since = modifiers.iter().map(|StoreModifier::UnchangedSince(n)| *n).next();
                self.condstore |= unchanged_since.is_some();
                if !matches!(kind, StoreType::Remove) && !self.keywords_fit(&flags)? {
                    done!("NO [LIMIT] this mailbox keeps 26 keywords at most, and they are taken; nothing was changed")
                }
                let modified = self.store_flags(&mut out, &sequence_set, kind, response, &flags, uid, unchanged_since)?;
                if uid {
                    self.refresh_now_and_then(&mut out)?;
                }
                if !modified.is_empty() {
                    done!("OK [MODIFIED {}] conditional STORE failed for these", uid_set(&modified))
                }
                done!("OK STORE completed")
            }
            CommandBody::Copy { sequence_set, mailbox, uid } => {
                let r = self.copy(&mut out, &sequence_set, &self.name_in(&mailbox), uid, false)?;
                done!("{r}")
            }
            CommandBody::Move { sequence_set, mailbox, uid } => {
                if self.readonly() {
                    done!("NO [READ-ONLY] the folder was opened with EXAMINE")
                }
                let r = self.copy(&mut out, &sequence_set, &self.name_in(&mailbox), uid, true)?;
                done!("{r}")
            }
            _ => done!("BAD that command is not offered by this server"),
        }
    }

    /// The file-name letter of a flag or keyword (a new keyword is given
    /// one); `None` for what is not kept (`\Recent`, a 27th keyword).
    fn letter_for(&mut self, f: &Flag<'_>) -> io::Result<Option<char>> {
        let name = f.to_string();
        if let Some(l) = Flags::letter(&name) {
            return Ok(Some(l));
        }
        match f {
            Flag::Keyword(_) => self.keywords.letter_or_add(&self.ctx.root, &name),
            _ => Ok(None),
        }
    }

    /// Can every keyword in `flags` be stored (each has, or now gets, a
    /// letter)? No when the mailbox's 26 are taken.
    fn keywords_fit(&mut self, flags: &[Flag<'_>]) -> io::Result<bool> {
        for f in flags {
            if matches!(f, Flag::Keyword(_)) && self.letter_for(f)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn readonly(&self) -> bool {
        matches!(&self.state, State::Selected(s) if s.readonly)
    }

    async fn read_line<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut Buffered<S>) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(l) = self.reader_line() {
                return Ok(Some(l));
            }
            if self.reader.buffered_len() > super::MAX_LINE {
                return Ok(None);
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout(PREAUTH_TIMEOUT, stream.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            };
            if n == 0 {
                return Ok(None);
            }
            self.reader.push(&chunk[..n]);
        }
    }

    fn reader_line(&mut self) -> Option<Vec<u8>> {
        self.reader.take_line()
    }

    async fn login<S: AsyncRead + AsyncWrite + Unpin>(&mut self, tag: &str, user: &[u8], pass: &[u8], stream: &mut Buffered<S>) -> io::Result<Next> {
        if self.ctx.require_tls && !self.tls {
            stream.write_all(format!("{tag} NO [PRIVACYREQUIRED] use STARTTLS first: passwords are not sent in the clear here\r\n").as_bytes()).await?;
            return Ok(Next::Go);
        }
        let user_ok = stubmail::server::constant_eq(&user.to_ascii_lowercase(), self.ctx.username.to_ascii_lowercase().as_bytes());
        let ip = stubmail::guard::peer_ip(&self.peer);
        let account = user_ok.then_some(self.ctx.username.as_str());
        if let Err(t) = self.ctx.throttle.check(ip, account) {
            self.failures += 1;
            tracing::warn!(peer = %self.peer, "IMAP login refused: too many recent failures");
            stream.write_all(format!("{tag} NO [UNAVAILABLE] too many failed logins; try again in {} seconds\r\n", t.secs()).as_bytes()).await?;
            return Ok(if self.failures >= 3 { Next::Close } else { Next::Go });
        }
        let ok = user_ok & stubmail::server::constant_eq(pass, self.ctx.password.as_bytes());
        if !ok {
            self.ctx.throttle.failed(ip, account);
            self.failures += 1;
            tracing::warn!(peer = %self.peer, failures = self.failures, "IMAP login failed");
            stream.write_all(format!("{tag} NO [AUTHENTICATIONFAILED] invalid user name or password\r\n").as_bytes()).await?;
            return Ok(if self.failures >= 3 { Next::Close } else { Next::Go });
        }
        self.ctx.throttle.succeeded(ip, account);
        if let Some(hook) = &self.ctx.on_login {
            hook().await;
        }
        if let Err(e) = self.store().ensure_special() {
            tracing::error!("IMAP: making the special folders: {e}");
        }
        self.state = State::Authenticated;
        stream.write_all(format!("{tag} OK [CAPABILITY {}] logged in\r\n", self.capabilities()).as_bytes()).await?;
        Ok(Next::Go)
    }

    async fn select<S: AsyncRead + AsyncWrite + Unpin>(&mut self, tag: &str, name: &str, readonly: bool, stream: &mut Buffered<S>) -> io::Result<Next> {
        // A failed SELECT leaves no folder selected (RFC 9051 §6.3.2);
        // the one selected is closed, and a client that can tell hears so.
        if matches!(self.state, State::Selected(_)) && (self.rev2 || self.condstore) {
            stream.write_all(b"* OK [CLOSED] the previous folder is closed\r\n").await?;
        }
        self.state = State::Authenticated;
        let Ok(dir) = self.store().dir(name) else {
            stream.write_all(format!("{tag} NO [NONEXISTENT] no such folder\r\n").as_bytes()).await?;
            return Ok(Next::Go);
        };
        let lock = match Locked::open(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                stream.write_all(format!("{tag} NO [NONEXISTENT] no such folder\r\n").as_bytes()).await?;
                return Ok(Next::Go);
            }
            Err(e) => return Err(e),
        };
        let mut snap = lock.sync()?;
        let recent: HashSet<String> = if readonly { HashSet::new() } else { lock.take_new(&mut snap)?.into_iter().collect() };
        drop(lock);
        let msgs: Vec<View> = snap.entries.iter().map(|e| View { uid: e.uid, size: e.size, base: e.base.clone(), rel: e.rel.clone(), flags: e.flags.clone(), recent: recent.contains(&e.base), modseq: e.modseq }).collect();
        self.keywords = Keywords::load(&self.ctx.root);
        let kws: String = self.keywords.all().map(|k| format!(" {k}")).collect();
        let mut out = String::new();
        out += &format!("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded{kws})\r\n");
        out += &format!("* {} EXISTS\r\n", msgs.len());
        if self.rev2 {
            // RFC 9051 §6.3.2: the folder's name as the server spells it.
            out += &format!("* LIST () \".\" {}\r\n", self.name_out(name));
        } else {
            out += &format!("* {} RECENT\r\n", recent.len());
            if let Some(i) = msgs.iter().position(|m| !m.flags.has('S')) {
                out += &format!("* OK [UNSEEN {}] first unseen\r\n", i + 1);
            }
        }
        out += &format!("* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] predicted next UID\r\n", snap.uidvalidity, snap.uidnext);
        out += &format!("* OK [HIGHESTMODSEQ {}] modification sequences\r\n", snap.highestmodseq);
        if readonly {
            out += "* OK [PERMANENTFLAGS ()] read-only\r\n";
        } else {
            // `\*`: new keywords can be made, while there is a letter left.
            let more = if self.keywords.all().count() < 26 { " \\*" } else { "" };
            out += &format!("* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded{kws}{more})] flags and keywords kept\r\n");
        }
        out += &format!("{tag} OK [{}] {} completed\r\n", if readonly { "READ-ONLY" } else { "READ-WRITE" }, if readonly { "EXAMINE" } else { "SELECT" });
        let st = stamp(&dir);
        self.state = State::Selected(Box::new(Selected { name: name.to_string(), dir, readonly, uidvalidity: snap.uidvalidity, msgs, stamp: st, pending_expunge: false, highestmodseq: snap.highestmodseq, last_look: std::time::Instant::now(), saved: Vec::new() }));
        stream.write_all(out.as_bytes()).await?;
        Ok(Next::Go)
    }

    /// LIST and LSUB, plain or with RFC 5258 options: the folders matching
    /// `reference` + `pattern` not in `seen` yet (several patterns name a
    /// folder once).
    fn list(&self, out: &mut Vec<u8>, reference: &str, pattern: &str, mode: &ListMode, seen: &mut HashSet<String>) -> io::Result<()> {
        let word = if mode.lsub { "LSUB" } else { "LIST" };
        if pattern.is_empty() {
            // The hierarchy delimiter and root (RFC 9051 §6.3.9).
            out.extend_from_slice(format!("* {word} (\\Noselect) \".\" \"\"\r\n").as_bytes());
            return Ok(());
        }
        // An IMAP4rev2 client's pattern is UTF-8: matched against the
        // names as it reads them, not their modified UTF-7 spelling.
        let full = format!("{reference}{pattern}");
        let shown = |name: &str| if self.rev2 { mutf7::decode(name).unwrap_or_else(|| name.to_string()) } else { name.to_string() };
        let store = self.store();
        let all = store.folders();
        let want_subs = mode.lsub || mode.select.subscribed || mode.ret.subscribed;
        let subs: HashSet<String> = if want_subs { folder::subscriptions(&store.root, &all).into_iter().collect() } else { HashSet::new() };
        let only_subscribed = mode.lsub || mode.select.subscribed;
        // Parents that are not folders themselves (`a` of `a.b`) are listed
        // as \Noselect where the pattern stops at them (`%`).
        let mut names: Vec<(String, bool)> = all.iter().map(|n| (n.clone(), true)).collect();
        for n in &all {
            let mut p = n.as_str();
            while let Some((parent, _)) = p.rsplit_once('.') {
                if !names.iter().any(|(x, _)| x == parent) {
                    names.push((parent.to_string(), false));
                }
                p = parent;
            }
        }
        // Subscribed names that are no folder (deleted since, or never
        // made): listed too when subscriptions are asked for, as
        // \NonExistent (RFC 5258 §3.4; LSUB: \Noselect).
        let mut gone: HashSet<String> = HashSet::new();
        if only_subscribed {
            for n in &subs {
                if !names.iter().any(|(x, _)| x == n) {
                    gone.insert(n.clone());
                    names.push((n.clone(), false));
                }
            }
        }
        names.sort_by(|a, b| (a.0 != "INBOX", &a.0).cmp(&(b.0 != "INBOX", &b.0)));
        for (name, selectable) in &names {
            let matched = if name == "INBOX" { wildmatch(full.to_ascii_uppercase().as_bytes(), b"INBOX") } else { wildmatch(full.as_bytes(), shown(name).as_bytes()) };
            if !matched || seen.contains(name) {
                continue;
            }
            let special = Store::special_use(name);
            let prefix = format!("{name}.");
            // RECURSIVEMATCH: a folder left out by the selection is named
            // when a folder below it is selected (RFC 5258 §3.5 CHILDINFO).
            let mut childinfo = Vec::new();
            if only_subscribed && !subs.contains(name.as_str()) {
                if mode.select.recursive_match && subs.iter().any(|x| x.starts_with(&prefix)) {
                    childinfo.push("\"SUBSCRIBED\"");
                } else {
                    continue;
                }
            }
            if mode.select.special_use && special.is_none() {
                if mode.select.recursive_match && all.iter().any(|x| x.starts_with(&prefix) && Store::special_use(x).is_some()) {
                    childinfo.push("\"SPECIAL-USE\"");
                } else {
                    continue;
                }
            }
            seen.insert(name.clone());
            let children = all.iter().any(|n| n.starts_with(&prefix));
            let mut attrs = if gone.contains(name) {
                vec![if mode.lsub { "\\Noselect" } else { "\\NonExistent" }]
            } else if *selectable {
                vec![]
            } else {
                vec!["\\Noselect"]
            };
            if !gone.contains(name) || children {
                attrs.push(if children { "\\HasChildren" } else { "\\HasNoChildren" });
            }
            if !mode.lsub && (mode.select.subscribed || mode.ret.subscribed) && subs.contains(name.as_str()) {
                attrs.push("\\Subscribed");
            }
            if let Some(u) = special {
                attrs.push(u);
            }
            let ext = if childinfo.is_empty() { String::new() } else { format!(" (\"CHILDINFO\" ({}))", childinfo.join(" ")) };
            out.extend_from_slice(format!("* {word} ({}) \".\" {}{ext}\r\n", attrs.join(" "), self.name_out(name)).as_bytes());
            // LIST-STATUS (RFC 5819): the folder's STATUS right after it.
            if let (Some(items), true) = (&mode.ret.status, *selectable)
                && let Ok(dir) = store.dir(name)
                && let Ok(snap) = Locked::open(&dir).and_then(|l| l.sync())
                && let Ok(items) = status_items(&snap, items)
            {
                out.extend_from_slice(format!("* STATUS {} ({})\r\n", self.name_out(name), items.join(" ")).as_bytes());
            }
        }
        Ok(())
    }

    /// A LIST the pre-parser took (RFC 5258 options, several patterns).
    fn list_extended(&self, tag: &str, l: &ext::ListExtended) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(items) = &l.ret.status
            && let Err(why) = status_items(&folder::Snapshot::default(), items)
        {
            return format!("{tag} BAD {why}\r\n").into_bytes();
        }
        let mode = ListMode { lsub: false, select: l.select.clone(), ret: l.ret.clone() };
        let mut seen = HashSet::new();
        for p in &l.patterns {
            if let Err(e) = self.list(&mut out, &l.reference, p, &mode, &mut seen) {
                return format!("{tag} NO [SERVERBUG] {e}\r\n").into_bytes();
            }
        }
        out.extend_from_slice(format!("{tag} OK LIST completed\r\n").as_bytes());
        out
    }

    /// A mailbox name as the client wrote it, as the store names it
    /// (modified UTF-7; an IMAP4rev2 client writes UTF-8).
    fn name_in(&self, m: &Mailbox<'_>) -> String {
        match m {
            Mailbox::Inbox => "INBOX".into(),
            Mailbox::Other(_) => self.text_in(&mailbox_text(m)),
        }
    }

    /// An IMAP4rev2 client's names are UTF-8 throughout: `&` is an
    /// ordinary character there, written `&-` on disk.
    fn text_in(&self, t: &str) -> String {
        if self.rev2 { mutf7::encode(t) } else { t.to_string() }
    }

    /// A stored name as this client reads names.
    fn name_out(&self, name: &str) -> String {
        if self.rev2 {
            match mutf7::decode(name) {
                Some(u) => wire::mailbox_utf8(&u),
                None => wire::mailbox(name),
            }
        } else {
            wire::mailbox(name)
        }
    }

    /// The pre-parser: what imap-codec cannot parse yet is lifted off or
    /// answered here (ext.rs).
    fn preparse(&mut self, mut bytes: Vec<u8>) -> Pre {
        self.search_ret = None;
        if matches!(self.state, State::NotAuthenticated) {
            return Pre::Command(bytes);
        }
        let tag = super::tag_of(&bytes);
        if self.rev2
            && let Some(b) = ext::quoted_utf8_as_literals(&bytes)
        {
            bytes = b;
        }
        if let Some(l) = ext::list_extended(&bytes) {
            return Pre::Answer(match l {
                Ok(l) => self.list_extended(&tag, &l),
                Err(why) => format!("{tag} BAD {why}\r\n").into_bytes(),
            });
        }
        let ds = ext::dollars(&bytes);
        if !ds.is_empty() {
            let State::Selected(s) = &self.state else { return Pre::Answer(format!("{tag} BAD select a folder first\r\n").into_bytes()) };
            // Bounded: a saved result of many scattered messages, named
            // again and again, must not become a command of megabytes.
            if ds.len() > MAX_DOLLARS {
                return Pre::Answer(format!("{tag} NO [LIMIT] at most {MAX_DOLLARS} $ in one command\r\n").into_bytes());
            }
            let here: HashSet<u32> = s.saved.iter().copied().collect();
            let uids: Vec<u32> = s.msgs.iter().filter(|m| here.contains(&m.uid)).map(|m| m.uid).collect();
            let seqs: Vec<u32> = s.msgs.iter().enumerate().filter(|(_, m)| here.contains(&m.uid)).map(|(i, _)| i as u32 + 1).collect();
            for d in ds.iter().rev() {
                let set = if d.uid { &uids } else { &seqs };
                let text = match (set.is_empty(), d.in_search, d.uid) {
                    (false, true, true) => format!("UID {}", uid_set(set)),
                    (false, _, _) => uid_set(set),
                    // Nothing saved (or all of it expunged): a key that
                    // matches nothing, or nothing to do (RFC 5182 §2.1).
                    (true, true, _) => "(NOT ALL)".into(),
                    (true, false, _) => return Pre::Answer(format!("{tag} OK nothing done: the saved search result ($) is empty\r\n").into_bytes()),
                };
                bytes.splice(d.range.clone(), text.into_bytes());
            }
        }
        match ext::search_return(&bytes) {
            None => {}
            Some(Ok((b, r))) => {
                bytes = b;
                self.search_ret = Some(r);
            }
            Some(Err(why)) => {
                // A SEARCH ... RETURN (SAVE) that fails empties the saved
                // result (RFC 5182 §2.1); one whose options cannot be read
                // may have asked for it.
                if memchr::memmem::find(&bytes.to_ascii_uppercase(), b"SAVE").is_some() {
                    self.forget_saved();
                }
                return Pre::Answer(format!("{tag} BAD {why}\r\n").into_bytes());
            }
        }
        Pre::Command(bytes)
    }

    fn forget_saved(&mut self) {
        if let State::Selected(s) = &mut self.state {
            s.saved.clear();
        }
    }

    /// A SEARCH answered as ESEARCH (RFC 4731; always under IMAP4rev2),
    /// and its result saved for `$` if asked (RFC 5182).
    fn esearch(&mut self, out: &mut Vec<u8>, tag: &str, key: &SearchKey<'_>, found: &[(u32, u64)], uid: bool, r: &ext::SearchReturn) {
        let State::Selected(s) = &mut self.state else { return };
        let nums: Vec<u32> = found.iter().map(|(n, _)| *n).collect();
        let (min, max) = (nums.iter().min().copied(), nums.iter().max().copied());
        if r.save {
            // With MIN and/or MAX alone, only those are saved (§2.4).
            let keep: Vec<u32> = if (r.min || r.max) && !(r.all || r.count) {
                nums.iter().copied().filter(|n| (r.min && Some(*n) == min) || (r.max && Some(*n) == max)).collect()
            } else {
                nums.clone()
            };
            s.saved = if uid { keep } else { keep.iter().filter_map(|n| s.msgs.get(*n as usize - 1).map(|m| m.uid)).collect() };
        }
        if r.only_save() {
            return;
        }
        // A tag holds no quoted-specials (RFC 9051 §9 `tag`).
        let mut line = format!("* ESEARCH (TAG \"{tag}\")");
        if uid {
            line += " UID";
        }
        if let (true, Some(m)) = (r.min, min) {
            line += &format!(" MIN {m}");
        }
        if let (true, Some(m)) = (r.max, max) {
            line += &format!(" MAX {m}");
        }
        // In Dovecot's order (RFC 4731 leaves it free).
        if r.all && !nums.is_empty() {
            line += &format!(" ALL {}", uid_set(&nums));
        }
        if r.count {
            line += &format!(" COUNT {}", nums.len());
        }
        if search::uses_modseq(key) && !found.is_empty() {
            self.condstore = true;
            line += &format!(" MODSEQ {}", found.iter().map(|(_, m)| *m).max().unwrap_or(0));
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// After a UID command (where EXPUNGE may be sent): a look at the
    /// folder at most once a second. A sync client sends ten thousand
    /// `UID FETCH n` in a row; NOOP, CHECK and IDLE always look.
    fn refresh_now_and_then(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if let State::Selected(s) = &self.state
            && s.last_look.elapsed() < Duration::from_secs(1)
        {
            return Ok(());
        }
        self.refresh(out, true)
    }

    /// Bring the session's view up to date with the folder on disk:
    /// new messages (EXISTS, RECENT), flag changes others made (FETCH),
    /// and, where the command allows it, messages gone (EXPUNGE).
    fn refresh(&mut self, out: &mut Vec<u8>, allow_expunge: bool) -> io::Result<()> {
        let State::Selected(s) = &mut self.state else { return Ok(()) };
        // Nothing changed since the last look (neither directory's mtime
        // moved, and both are older than the clock's granularity could
        // hide): skip reading the folder, the cost of every command.
        s.last_look = std::time::Instant::now();
        let now = stamp(&s.dir);
        let settled = |t: Option<std::time::SystemTime>| t.is_some_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_secs(2)));
        if now == s.stamp && settled(now.0) && settled(now.1) && !(allow_expunge && s.pending_expunge) {
            return Ok(());
        }
        s.stamp = now;
        let lock = match Locked::open(&s.dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The folder itself was deleted under us.
                return Err(io::Error::new(io::ErrorKind::NotFound, "the selected folder was deleted by another session"));
            }
            Err(e) => return Err(e),
        };
        let mut snap = lock.sync()?;
        let recent: HashSet<String> = if s.readonly { HashSet::new() } else { lock.take_new(&mut snap)?.into_iter().collect() };
        drop(lock);
        if snap.uidvalidity != s.uidvalidity {
            return Err(io::Error::other("the folder's UIDs were renumbered (its uid list was lost); please reconnect"));
        }
        let by_uid: std::collections::HashMap<u32, &Entry> = snap.entries.iter().map(|e| (e.uid, e)).collect();
        s.pending_expunge = !allow_expunge && s.msgs.iter().any(|m| !by_uid.contains_key(&m.uid));
        if allow_expunge {
            for i in (0..s.msgs.len()).rev() {
                if !by_uid.contains_key(&s.msgs[i].uid) {
                    s.msgs.remove(i);
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
        }
        s.highestmodseq = snap.highestmodseq;
        let condstore = self.condstore;
        let rev2 = self.rev2;
        self.keywords = Keywords::load(&self.ctx.root);
        let kw = &self.keywords;
        for (i, m) in s.msgs.iter_mut().enumerate() {
            if let Some(e) = by_uid.get(&m.uid) {
                m.rel = e.rel.clone();
                if e.flags != m.flags {
                    m.flags = e.flags.clone();
                    m.modseq = e.modseq;
                    let ms = if condstore { format!(" MODSEQ ({})", m.modseq) } else { String::new() };
                    out.extend_from_slice(format!("* {} FETCH (FLAGS ({}){ms})\r\n", i + 1, m.flags.imap(m.recent && !rev2, kw)).as_bytes());
                } else {
                    m.modseq = e.modseq;
                }
            }
        }
        let last = s.msgs.last().map_or(0, |m| m.uid);
        let mut added = 0;
        let mut new_recent = 0;
        for e in snap.entries.iter().filter(|e| e.uid > last) {
            let r = recent.contains(&e.base);
            new_recent += usize::from(r);
            s.msgs.push(View { uid: e.uid, size: e.size, base: e.base.clone(), rel: e.rel.clone(), flags: e.flags.clone(), recent: r, modseq: e.modseq });
            added += 1;
        }
        if added > 0 {
            out.extend_from_slice(format!("* {} EXISTS\r\n", s.msgs.len()).as_bytes());
            if new_recent > 0 && !rev2 {
                out.extend_from_slice(format!("* {} RECENT\r\n", s.msgs.iter().filter(|m| m.recent).count()).as_bytes());
            }
        }
        Ok(())
    }

    /// Indices (into the view) a sequence set names.
    fn pick(&self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        let State::Selected(s) = &self.state else { return Vec::new() };
        let max = if uid { s.msgs.last().map_or(0, |m| m.uid) } else { s.msgs.len() as u32 };
        if max == 0 {
            return Vec::new();
        }
        use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
        let v = |x: &SeqOrUid| match x {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => max,
        };
        // Range by range (a sync client asks for one UID at a time, of
        // ten thousand): a binary search, not a pass over the folder.
        let n = s.msgs.len();
        let mut out = Vec::new();
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(x) => (v(x), v(x)),
                Sequence::Range(x, y) => (v(x), v(y)),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            if uid {
                let start = s.msgs.partition_point(|m| m.uid < lo);
                out.extend((start..n).take_while(|&i| s.msgs[i].uid <= hi));
            } else {
                out.extend((lo.max(1) as usize..=(hi as usize).min(n)).map(|i| i - 1));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// What matches, as (number, modification sequence).
    fn search(&mut self, key: &SearchKey<'_>, uid: bool) -> Vec<(u32, u64)> {
        let State::Selected(s) = &self.state else { return Vec::new() };
        let (max_seq, max_uid) = (s.msgs.len() as u32, s.msgs.last().map_or(0, |m| m.uid));
        let sets = search::SetCache::default();
        let mut found = Vec::new();
        for (i, m) in s.msgs.iter().enumerate() {
            let path = s.dir.join(&m.rel);
            let (dir, base) = (s.dir.clone(), m.base.clone());
            let max = self.ctx.max_message;
            let mut load = move || -> Option<Vec<u8>> {
                let p = if path.exists() { path.clone() } else { dir.join(folder::find(&dir, &base)?) };
                folder::read_crlf(&p, max, 0).ok()
            };
            let internal = std::fs::metadata(s.dir.join(&m.rel)).and_then(|md| md.modified()).ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs() as i64);
            let mut c = Candidate { seq: i as u32 + 1, uid: m.uid, flags: &m.flags, recent: m.recent, size: m.size, modseq: m.modseq, keywords: &self.keywords, internal, load: &mut load, loaded: None, max_seq, max_uid, sets: &sets };
            if search::matches(key, &mut c) {
                found.push((if uid { m.uid } else { i as u32 + 1 }, m.modseq));
            }
        }
        found
    }

    /// FETCH; `Some(why)` when the command ends NO (a BINARY item whose
    /// part cannot be decoded: RFC 3516 `[UNKNOWN-CTE]`).
    async fn fetch<S: AsyncRead + AsyncWrite + Unpin>(&mut self, out: &mut Vec<u8>, set: &SequenceSet, items: &[MessageDataItemName<'_>], uid: bool, changed_since: Option<u64>, stream: &mut Buffered<S>) -> io::Result<Option<String>> {
        let mut picked = self.pick(set, uid);
        let max = self.ctx.max_message;
        let condstore = self.condstore;
        let rev2 = self.rev2;
        let State::Selected(s) = &mut self.state else { return Ok(None) };
        let needs_content = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Envelope
                    | MessageDataItemName::Body
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
                    | MessageDataItemName::Binary { .. }
                    | MessageDataItemName::BinarySize { .. }
            )
        });
        // Items that set \Seen (RFC 9051 §6.4.5): done before the answer is
        // written, so the FLAGS it carries are the new ones.
        let sets_seen = !s.readonly
            && items.iter().any(|i| {
                matches!(i, MessageDataItemName::BodyExt { peek: false, .. } | MessageDataItemName::Binary { peek: false, .. } | MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text)
            });
        if let Some(n) = changed_since {
            picked.retain(|&i| s.msgs[i].modseq > n);
        }
        let mut seen_set: Vec<usize> = Vec::new();
        let mut refused = None;
        for i in picked {
            let m = &mut s.msgs[i];
            let mut path = s.dir.join(&m.rel);
            // Renamed by another client since our last look (a flag
            // change): found again by its base name.
            let relocate = |m: &mut View| -> Option<std::path::PathBuf> {
                m.rel = folder::find(&s.dir, &m.base)?;
                Some(s.dir.join(&m.rel))
            };
            if !needs_content && !path.exists() {
                match relocate(m) {
                    Some(p) => path = p,
                    // Gone (another client expunged it): nothing to say
                    // until the next EXPUNGE may be sent.
                    None => continue,
                }
            }
            // A large message whose items need no MIME tree is streamed
            // from its file (memory does not grow with it); only its
            // header is read.
            let mut large = needs_content && m.size > STREAM_OVER && items.iter().all(streamable);
            let mut header = None;
            if large {
                let mut h = read_header_crlf(&path);
                if matches!(&h, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                    let Some(p) = relocate(m) else { continue };
                    path = p;
                    h = read_header_crlf(&path);
                }
                match h {
                    Ok(Some(h)) => header = Some(h),
                    // A header over 1 MiB: read the message whole instead.
                    Ok(None) => large = false,
                    Err(e) => {
                        tracing::warn!("IMAP FETCH {}: {e}", path.display());
                        continue;
                    }
                }
            }
            // Waited for at most 10 s: a client that reads its answer
            // slowly (or never) keeps a turn, and must not stall everyone.
            let _big = if needs_content && !large && m.size > STREAM_OVER {
                tokio::time::timeout(Duration::from_secs(10), BIG_READS.acquire()).await.ok().and_then(Result::ok)
            } else {
                None
            };
            let raw = if large {
                header
            } else if needs_content {
                let mut r = folder::read_crlf(&path, max, m.size);
                if matches!(&r, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                    match relocate(m) {
                        Some(p) => {
                            path = p;
                            r = folder::read_crlf(&path, max, m.size);
                        }
                        None => continue,
                    }
                }
                match r {
                    Ok(r) => Some(r),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        tracing::warn!("IMAP FETCH {}: {e}", path.display());
                        continue;
                    }
                }
            } else {
                None
            };
            // The MIME tree only for what needs it (a whole-header fetch,
            // what sync clients ask for, does not).
            let parsed_cell: std::sync::OnceLock<Parsed<'_>> = std::sync::OnceLock::new();
            let parsed = || parsed_cell.get_or_init(|| Parsed::new(raw.as_deref().expect("read")));
            // The header's length as sent (large mode: `raw` is the header).
            let hlen = raw.as_ref().map_or(0, |r| r.len() as u64).min(m.size);
            // BINARY items decoded before anything of this message is
            // written (or \Seen set): one that cannot be ends the command
            // with NO. Each part named is decoded once, however often it
            // is named; BINARY.SIZE keeps only the size.
            let mut decoded: std::collections::HashMap<Vec<u32>, Arc<Vec<u8>>> = std::collections::HashMap::new();
            let mut binaries: Vec<Option<Arc<Vec<u8>>>> = Vec::new();
            let mut sizes: Vec<u64> = Vec::new();
            for item in items {
                let (section, size_only) = match item {
                    // Streamed from the file below.
                    MessageDataItemName::Binary { section, .. } if large && section.is_empty() => (None, false),
                    MessageDataItemName::Binary { section, .. } => (Some(section), false),
                    MessageDataItemName::BinarySize { section } => (Some(section), true),
                    _ => (None, false),
                };
                let Some(section) = section else {
                    binaries.push(None);
                    sizes.push(0);
                    continue;
                };
                let raw = raw.as_deref().expect("read");
                let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
                if path.is_empty() && size_only {
                    binaries.push(None);
                    sizes.push(raw.len() as u64);
                    continue;
                }
                if !decoded.contains_key(&path) {
                    let value = if path.is_empty() {
                        Ok(raw.to_vec())
                    } else {
                        match message::resolve(&parsed().msg, &path) {
                            Some(r) => message::decoded(&r),
                            // No such part: empty, as for BODY[] (RFC 9051 §6.4.5).
                            None => Ok(Vec::new()),
                        }
                    };
                    match value {
                        Ok(v) => {
                            decoded.insert(path.clone(), Arc::new(v));
                        }
                        Err(message::Undecodable::UnknownCte(c)) => {
                            refused = Some(format!("[UNKNOWN-CTE] message {} has a part in the encoding {c:?}, which this server cannot undo; fetch it with BODY[]", i + 1));
                            break;
                        }
                        Err(message::Undecodable::Corrupt(c)) => {
                            refused = Some(format!("[UNKNOWN-CTE] message {} has a part that is not valid {c}; fetch it with BODY[]", i + 1));
                            break;
                        }
                    }
                }
                let v = decoded[&path].clone();
                sizes.push(v.len() as u64);
                binaries.push((!size_only).then_some(v));
            }
            if refused.is_some() {
                break;
            }
            drop(decoded);
            // \Seen (RFC 9051 §6.4.5), set before the answer is written so
            // the FLAGS it carries are the new ones: under the folder's lock,
            // on top of the file's current name (another session or mutt
            // may have changed its flags since our look), the lock held for
            // this rename only, never across a wait.
            if sets_seen && !m.flags.has('S') {
                let l = Locked::open(&s.dir)?;
                let current = if s.dir.join(&m.rel).exists() { Some(m.rel.clone()) } else { folder::find(&s.dir, &m.base) };
                if let Some(rel) = current {
                    m.flags = Flags::from_info(&rel);
                    m.rel = rel;
                    let mut f = m.flags.clone();
                    f.set('S', true);
                    if f != m.flags
                        && let Some(rel) = l.set_flags(&m.entry(), &f)?
                    {
                        m.rel = rel;
                        m.flags = f;
                        seen_set.push(i);
                    }
                }
                drop(l);
                path = s.dir.join(&m.rel);
            }
            // Written item by item, going out whenever it grows large: a
            // FETCH naming one part many times costs one part at a time.
            out.extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
            let mut first = true;
            let mut sep = |out: &mut Vec<u8>| {
                if !std::mem::replace(&mut first, false) {
                    out.push(b' ');
                }
            };
            if uid && !items.iter().any(|i| matches!(i, MessageDataItemName::Uid)) {
                sep(out);
                out.extend_from_slice(format!("UID {}", m.uid).as_bytes());
            }
            let flags = format!("FLAGS ({})", m.flags.imap(m.recent && !rev2, &self.keywords));
            for (k, item) in items.iter().enumerate() {
                sep(out);
                match item {
                    MessageDataItemName::Binary { partial, .. } if large => {
                        // The whole message (streamable says so), as a
                        // literal8: it may hold a NUL, sent as it is.
                        let (st, n, origin) = window(*partial, m.size);
                        out.extend_from_slice(format!("BINARY[]{origin} ~{{{n}}}\r\n").as_bytes());
                        stream.write_all(out).await?;
                        out.clear();
                        stream_crlf(stream, &path, st, n, false).await?;
                    }
                    MessageDataItemName::Binary { section, partial, .. } => {
                        // Written from the decoded part straight out (no copy
                        // into the answer), and let go of at once.
                        let bytes = binaries[k].take().unwrap_or_default();
                        let (st, n, origin) = window(*partial, bytes.len() as u64);
                        let piece = &bytes[st as usize..(st + n) as usize];
                        out.extend_from_slice(format!("BINARY[{}]{origin} ", binary_section(section)).as_bytes());
                        wire::literal8_head(out, piece);
                        if piece.len() > 64 * 1024 {
                            stream.write_all(out).await?;
                            out.clear();
                            stream.write_all(piece).await?;
                        } else {
                            out.extend_from_slice(piece);
                        }
                    }
                    MessageDataItemName::BinarySize { section } => {
                        let n = sizes[k];
                        out.extend_from_slice(format!("BINARY.SIZE[{}] {n}", binary_section(section)).as_bytes());
                    }
                    MessageDataItemName::Uid => out.extend_from_slice(format!("UID {}", m.uid).as_bytes()),
                    MessageDataItemName::ModSeq => out.extend_from_slice(format!("MODSEQ ({})", m.modseq).as_bytes()),
                    MessageDataItemName::Flags => out.extend_from_slice(flags.as_bytes()),
                    MessageDataItemName::Rfc822Size => out.extend_from_slice(format!("RFC822.SIZE {}", m.size).as_bytes()),
                    MessageDataItemName::InternalDate => {
                        let t = std::fs::metadata(&path).and_then(|md| md.modified()).unwrap_or(std::time::UNIX_EPOCH);
                        out.extend_from_slice(format!("INTERNALDATE {}", internaldate(t)).as_bytes());
                    }
                    MessageDataItemName::Envelope => {
                        out.extend_from_slice(b"ENVELOPE ");
                        message::envelope(out, &parsed().msg);
                    }
                    MessageDataItemName::Body => {
                        out.extend_from_slice(b"BODY ");
                        message::bodystructure(out, &parsed().msg, false);
                    }
                    MessageDataItemName::BodyStructure => {
                        out.extend_from_slice(b"BODYSTRUCTURE ");
                        message::bodystructure(out, &parsed().msg, true);
                    }
                    MessageDataItemName::BodyExt { section, partial, .. } if large && matches!(section, None | Some(Section::Text(None))) => {
                        let (base, total) = if section.is_none() { (0, m.size) } else { (hlen, m.size - hlen) };
                        let (st, n, origin) = window(*partial, total);
                        out.extend_from_slice(format!("BODY[{}]{origin} {{{n}}}\r\n", section_text(section)).as_bytes());
                        stream.write_all(out).await?;
                        out.clear();
                        stream_crlf(stream, &path, base + st, n, true).await?;
                    }
                    MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text if large => {
                        let text = matches!(item, MessageDataItemName::Rfc822Text);
                        let (base, n) = if text { (hlen, m.size - hlen) } else { (0, m.size) };
                        out.extend_from_slice(format!("{} {{{n}}}\r\n", if text { "RFC822.TEXT" } else { "RFC822" }).as_bytes());
                        stream.write_all(out).await?;
                        out.clear();
                        stream_crlf(stream, &path, base, n, true).await?;
                    }
                    MessageDataItemName::BodyExt { section, partial, .. } => {
                        let raw = raw.as_deref().expect("read");
                        let bytes = match top_section_ref(raw, section) {
                            Some(b) => b,
                            None => std::borrow::Cow::Owned(section_bytes(parsed(), section)),
                        };
                        let (st, n, origin) = window(*partial, bytes.len() as u64);
                        out.extend_from_slice(format!("BODY[{}]{origin} ", section_text(section)).as_bytes());
                        wire::literal(out, &bytes[st as usize..(st + n) as usize]);
                    }
                    MessageDataItemName::Rfc822 => {
                        out.extend_from_slice(b"RFC822 ");
                        wire::literal(out, raw.as_deref().expect("read"));
                    }
                    MessageDataItemName::Rfc822Header => {
                        out.extend_from_slice(b"RFC822.HEADER ");
                        wire::literal(out, message::split_header(raw.as_deref().expect("read")).0);
                    }
                    MessageDataItemName::Rfc822Text => {
                        out.extend_from_slice(b"RFC822.TEXT ");
                        wire::literal(out, message::split_header(raw.as_deref().expect("read")).1);
                    }
                }
                // Bounded memory: large answers go out as they are made.
                if out.len() > 256 * 1024 {
                    stream.write_all(out).await?;
                    out.clear();
                }
            }
            if seen_set.last() == Some(&i) && !items.iter().any(|i| matches!(i, MessageDataItemName::Flags)) {
                sep(out);
                out.extend_from_slice(flags.as_bytes());
            }
            if changed_since.is_some() && !items.iter().any(|i| matches!(i, MessageDataItemName::ModSeq)) {
                sep(out);
                out.extend_from_slice(format!("MODSEQ ({})", m.modseq).as_bytes());
            }
            out.extend_from_slice(b")\r\n");
            if out.len() > 256 * 1024 {
                stream.write_all(out).await?;
                out.clear();
            }
        }
        // \Seen set by BODY[]: the new modification sequences.
        if !seen_set.is_empty() {
            let snap = Locked::open(&s.dir)?.sync()?;
            s.highestmodseq = snap.highestmodseq;
            for i in seen_set {
                let m = &mut s.msgs[i];
                if let Ok(k) = snap.entries.binary_search_by_key(&m.uid, |e| e.uid) {
                    m.modseq = snap.entries[k].modseq;
                    if condstore {
                        let u = if uid { format!("UID {} ", m.uid) } else { String::new() };
                        out.extend_from_slice(format!("* {} FETCH ({u}MODSEQ ({}))\r\n", i + 1, m.modseq).as_bytes());
                    }
                }
            }
        }
        Ok(refused)
    }

    /// STORE; returns what UNCHANGEDSINCE kept from being changed (UIDs
    /// or sequence numbers, as the command named them).
    #[allow(clippy::too_many_arguments)]
    fn store_flags(&mut self, out: &mut Vec<u8>, set: &SequenceSet, kind: StoreType, response: StoreResponse, flags: &[Flag<'_>], uid: bool, unchanged_since: Option<u64>) -> io::Result<Vec<u32>> {
        let picked = self.pick(set, uid);
        let condstore = self.condstore;
        let mut letters: Vec<char> = Vec::new();
        for f in flags {
            match (f, kind) {
                // Removing a keyword the mailbox never had is nothing to do.
                (Flag::Keyword(_), StoreType::Remove) => letters.extend(self.keywords.letter(&f.to_string()).or(Flags::letter(&f.to_string()))),
                _ => letters.extend(self.letter_for(f)?),
            }
        }
        let State::Selected(s) = &mut self.state else { return Ok(Vec::new()) };
        let lock = Locked::open(&s.dir)?;
        // Flags are changed on top of the folder as it is now, under its
        // lock: another session's or mutt's change since our last look is
        // kept, not overwritten (found by an attack), and UNCHANGEDSINCE
        // compares with the current modification sequence.
        let now: std::collections::HashMap<u32, Entry> = lock.sync()?.entries.into_iter().map(|e| (e.uid, e)).collect();
        let (mut modified, mut touched, mut answered) = (Vec::new(), Vec::new(), Vec::new());
        for i in picked {
            let m = &mut s.msgs[i];
            if let Some(e) = now.get(&m.uid) {
                m.flags = e.flags.clone();
                m.rel = e.rel.clone();
                m.modseq = e.modseq;
            }
            if let Some(n) = unchanged_since
                && m.modseq > n
            {
                modified.push(if uid { m.uid } else { i as u32 + 1 });
                continue;
            }
            let mut f = match kind {
                StoreType::Replace => Flags::default(),
                _ => m.flags.clone(),
            };
            if matches!(kind, StoreType::Replace) {
                // Letters this server does not know (another program's)
                // stay.
                for c in m.flags.0.chars().filter(|c| if c.is_ascii_lowercase() { self.keywords.name(*c).is_none() } else { !"DFPRST".contains(*c) }) {
                    f.set(c, true);
                }
            }
            for &l in &letters {
                f.set(l, !matches!(kind, StoreType::Remove));
            }
            if f != m.flags {
                match lock.set_flags(&m.entry(), &f)? {
                    Some(rel) => {
                        m.rel = rel;
                        m.flags = f;
                        touched.push(i);
                    }
                    None => continue,
                }
            }
            answered.push(i);
        }
        if !touched.is_empty() {
            let snap = lock.sync()?;
            s.highestmodseq = snap.highestmodseq;
            for &i in &touched {
                if let Ok(k) = snap.entries.binary_search_by_key(&s.msgs[i].uid, |e| e.uid) {
                    s.msgs[i].modseq = snap.entries[k].modseq;
                }
            }
        }
        for i in answered {
            let m = &s.msgs[i];
            // .SILENT still reports the new MODSEQ under CONDSTORE (RFC
            // 7162 §3.1.3), without the flags.
            let silent = matches!(response, StoreResponse::Silent);
            if silent && !(condstore && touched.contains(&i)) {
                continue;
            }
            let u = if uid { format!(" UID {}", m.uid) } else { String::new() };
            let ms = if condstore { format!(" MODSEQ ({})", m.modseq) } else { String::new() };
            let fl = if silent { String::new() } else { format!("FLAGS ({})", m.flags.imap(m.recent && !self.rev2, &self.keywords)) };
            let body = format!("{fl}{u}{ms}");
            out.extend_from_slice(format!("* {} FETCH ({})\r\n", i + 1, body.trim_start()).as_bytes());
        }
        Ok(modified)
    }

    fn expunge(&mut self, out: &mut Vec<u8>, only: Option<&SequenceSet>) -> io::Result<()> {
        let picked: Option<HashSet<usize>> = only.map(|set| self.pick(set, true).into_iter().collect());
        // Flags may have changed elsewhere: look first.
        self.refresh(out, true)?;
        let State::Selected(s) = &mut self.state else { return Ok(()) };
        let gone: Vec<usize> = (0..s.msgs.len()).filter(|&i| s.msgs[i].flags.has('T') && picked.as_ref().is_none_or(|p| p.contains(&i))).collect();
        if gone.is_empty() {
            return Ok(());
        }
        let lock = Locked::open(&s.dir)?;
        lock.remove(&gone.iter().map(|&i| s.msgs[i].entry()).collect::<Vec<_>>())?;
        for &i in gone.iter().rev() {
            s.msgs.remove(i);
            out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
        }
        lock.sync()?;
        Ok(())
    }

    /// COPY or MOVE; returns the tagged answer.
    fn copy(&mut self, out: &mut Vec<u8>, set: &SequenceSet, target: &str, uid: bool, remove: bool) -> io::Result<String> {
        let picked = self.pick(set, uid);
        let store = self.store();
        let State::Selected(s) = &mut self.state else { return Ok("BAD select a folder first".into()) };
        let Ok(dest) = store.dir(target) else { return Ok("NO [CANNOT] that folder name is not allowed here".into()) };
        if !dest.join("cur").is_dir() {
            return Ok("NO [TRYCREATE] no such folder; CREATE it first".into());
        }
        if picked.is_empty() {
            return Ok(format!("OK {} completed (nothing matched)", if remove { "MOVE" } else { "COPY" }));
        }
        let entries: Vec<Entry> = picked.iter().map(|&i| s.msgs[i].entry()).collect();
        let validity;
        let pairs = {
            let l = Locked::open(&dest)?;
            let p = l.link_from(&s.dir, &entries, remove && dest != s.dir)?;
            validity = l.sync()?.uidvalidity;
            p
        };
        let (src, dst): (Vec<u32>, Vec<u32>) = pairs.iter().copied().unzip();
        let code = if pairs.is_empty() { String::new() } else { format!("[COPYUID {validity} {} {}] ", uid_set(&src), uid_set(&dst)) };
        if !remove {
            return Ok(format!("OK {code}COPY completed"));
        }
        if dest == s.dir {
            // MOVE into the folder itself: copies, then the originals go.
            let l = Locked::open(&s.dir)?;
            l.remove(&entries)?;
        }
        out.extend_from_slice(format!("* OK {code}moved\r\n").as_bytes());
        let moved: HashSet<u32> = src.into_iter().collect();
        for i in (0..s.msgs.len()).rev() {
            if moved.contains(&s.msgs[i].uid) {
                s.msgs.remove(i);
                out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
            }
        }
        Locked::open(&s.dir)?.sync()?;
        Ok("OK MOVE completed".into())
    }

    /// IDLE (RFC 2177): announce changes as they happen until DONE.
    async fn idle<S: AsyncRead + AsyncWrite + Unpin>(&mut self, tag: &str, stream: &mut Buffered<S>) -> io::Result<Next> {
        stream.write_all(b"+ idling\r\n").await?;
        stream.flush().await?;
        let deadline = tokio::time::Instant::now() + AUTOLOGOUT;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delivered = self.delivered.clone();
        loop {
            if let Some(done) = self.reader.take_line() {
                let ok = done.trim_ascii().eq_ignore_ascii_case(b"DONE");
                let msg = if ok { format!("{tag} OK IDLE terminated\r\n") } else { format!("{tag} BAD expected DONE\r\n") };
                stream.write_all(msg.as_bytes()).await?;
                return Ok(Next::Go);
            }
            if self.reader.buffered_len() > super::MAX_LINE {
                stream.write_all(b"* BYE line too long\r\n").await?;
                return Ok(Next::Close);
            }
            let mut chunk = [0u8; 4096];
            let look = tokio::select! {
                r = stream.read(&mut chunk) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(Next::Close);
                    }
                    self.reader.push(&chunk[..n]);
                    false
                }
                _ = async { match &mut delivered { Some(d) => { let _ = d.changed().await; } None => std::future::pending().await } } => true,
                _ = tick.tick() => match &self.state {
                    State::Selected(s) => stamp(&s.dir) != s.stamp,
                    _ => false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    stream.write_all(b"* BYE autologout: idle for too long\r\n").await?;
                    return Ok(Next::Close);
                }
            };
            if look {
                let mut out = Vec::new();
                self.refresh(&mut out, true)?;
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                }
            }
        }
    }
}

/// Store an APPENDed message in `dir`: LF line endings like delivered
/// mail, fsync'd before its name is visible. Returns (UIDVALIDITY, UID).
fn append(dir: &std::path::Path, data: &[u8], flags: &Flags, when: Option<std::time::SystemTime>) -> io::Result<(u32, u32)> {
    use std::io::Write;
    let base = stubmail::maildir::Maildir::unique_name();
    let tmp = dir.join("tmp").join(&base);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let mut w = stubmail::maildir::CrlfToLf::new(io::BufWriter::new(&mut f));
    w.write_all(data)?;
    w.finish()?.flush()?;
    if let Some(t) = when {
        f.set_modified(t)?;
    }
    f.sync_all()?;
    drop(f);
    let size = folder::crlf_size(&tmp)?;
    let l = Locked::open(dir)?;
    let uid = l.add(&base, &base, flags, size)?;
    let validity = l.sync()?.uidvalidity;
    Ok((validity, uid))
}

#[cfg(test)]
pub(super) mod tests_support {
    pub use super::tests::{ctx, dialogue, maildir};
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use tokio::io::AsyncWriteExt;

    pub fn ctx(root: &std::path::Path) -> Arc<Ctx> {
        Arc::new(Ctx {
            root: root.to_path_buf(),
            username: "bob@example.org".into(),
            password: "pw".into(),
            tls: None,
            require_tls: false,
            on_login: None,
            throttle: Default::default(),
            delivered: None,
            max_message: 1 << 20,
            max_append: 1 << 16,
        })
    }

    /// A whole dialogue: the client's lines go in at once (pipelined, as
    /// the tests can), the server's answers come back.
    pub async fn dialogue(ctx: Arc<Ctx>, input: &str) -> String {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut r, mut w) = tokio::io::split(client);
        let input = input.replace('\n', "\r\n");
        let writer = tokio::spawn(async move {
            w.write_all(input.as_bytes()).await.unwrap();
            let _ = w.shutdown().await;
        });
        let srv = tokio::spawn(serve(server, "127.0.0.1:5".into(), ctx));
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut out).await.unwrap();
        srv.await.unwrap().unwrap();
        writer.await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn maildir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        stubmail::maildir::Maildir::open(d.path()).unwrap();
        std::fs::write(d.path().join("new/1000.a.host"), "From: Alice <alice@example.org>\nTo: bob@example.org\nSubject: first\nDate: Mon, 7 Dec 2026 10:00:00 +0000\nMessage-ID: <1@a>\n\nHello Bob.\n").unwrap();
        std::fs::write(d.path().join("new/1001.b.host"), "From: Carol <carol@example.net>\nSubject: second\n\nAnother body with needle.\n").unwrap();
        d
    }

    #[tokio::test]
    async fn nothing_before_login_and_bad_passwords_refused() {
        let d = maildir();
        let out = dialogue(ctx(d.path()), "a SELECT INBOX\nb LOGIN bob@example.org wrong\nc CAPABILITY\nd LOGOUT\n").await;
        assert!(out.starts_with("* OK [CAPABILITY IMAP4rev1 "), "{out}");
        assert!(out.contains("a BAD log in first"), "{out}");
        assert!(out.contains("b NO [AUTHENTICATIONFAILED]"), "{out}");
        assert!(out.contains("AUTH=PLAIN"), "{out}");
        assert!(out.contains("d OK LOGOUT"), "{out}");
    }

    #[tokio::test]
    async fn select_fetch_store_search_expunge() {
        let d = maildir();
        let script = "a LOGIN bob@example.org pw\n\
                      b SELECT INBOX\n\
                      c FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)\n\
                      d UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (Subject)] BODY[TEXT]<0.7>)\n\
                      e SEARCH BODY needle\n\
                      f STORE 1 +FLAGS (\\Deleted)\n\
                      g UID SEARCH DELETED\n\
                      h EXPUNGE\n\
                      i FETCH 1 (UID FLAGS)\n\
                      j LOGOUT\n";
        let out = dialogue(ctx(d.path()), script).await;
        assert!(out.contains("* 2 EXISTS\r\n* 2 RECENT\r\n"), "{out}");
        assert!(out.contains("b OK [READ-WRITE] SELECT completed"), "{out}");
        assert!(out.contains("* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE 141 ENVELOPE (\"Mon, 7 Dec 2026 10:00:00 +0000\" \"first\" ((\"Alice\" NIL \"alice\" \"example.org\"))"), "{out}");
        assert!(out.contains("* 2 FETCH (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: second\r\n\r\n BODY[TEXT]<0> {7}\r\nAnother FLAGS (\\Seen \\Recent))"), "{out}");
        assert!(out.contains("* SEARCH 2\r\ne OK"), "{out}");
        assert!(out.contains("* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\nf OK"), "{out}");
        assert!(out.contains("* SEARCH 1\r\ng OK"), "{out}");
        assert!(out.contains("* 1 EXPUNGE\r\nh OK"), "{out}");
        assert!(out.contains("* 1 FETCH (UID 2 FLAGS (\\Seen \\Recent))"), "{out}");
        // On disk: the first is gone; the second is in cur/ with S.
        let cur: Vec<String> = std::fs::read_dir(d.path().join("cur")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(cur, vec!["1001.b.host:2,S".to_string()]);
    }

    #[tokio::test]
    async fn append_copy_move_and_list() {
        let d = maildir();
        let msg = "Subject: draft\r\n\r\nbody\r\n";
        let script = format!(
            "a LOGIN bob@example.org pw\n\
             b LIST \"\" *\n\
             c APPEND Drafts (\\Draft) {{{}}}\n{msg}\n\
             d APPEND Nowhere {{1+}}\nx\n\
             e SELECT INBOX\n\
             f UID COPY 1 Archive\n\
             g UID MOVE 2 Junk\n\
             h STATUS Junk (MESSAGES UIDNEXT UNSEEN)\n\
             i LOGOUT\n",
            msg.len()
        );
        let out = dialogue(ctx(d.path()), &script.replace("\r\n", "\n")).await;
        assert!(out.contains("* LIST (\\HasNoChildren) \".\" INBOX\r\n"), "{out}");
        assert!(out.contains("* LIST (\\HasNoChildren \\Junk) \".\" Junk\r\n"), "{out}");
        assert!(out.contains("c OK [APPENDUID "), "{out}");
        assert!(out.contains("d NO [TRYCREATE]"), "{out}");
        assert!(out.contains("f OK [COPYUID ") && out.contains(" 1 1] COPY completed"), "{out}");
        assert!(out.contains("* OK [COPYUID ") && out.contains("* 2 EXPUNGE\r\ng OK MOVE completed"), "{out}");
        assert!(out.contains("* STATUS Junk (MESSAGES 1 UIDNEXT 2 UNSEEN 1)"), "{out}");
        // The draft is stored with LF endings and its flag in the name.
        let drafts: Vec<_> = std::fs::read_dir(d.path().join(".Drafts/cur")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(drafts.len(), 1);
        assert!(drafts[0].to_string_lossy().ends_with(":2,D"));
        assert_eq!(std::fs::read_to_string(&drafts[0]).unwrap(), "Subject: draft\n\nbody\n");
        // The moved message kept its name (a report finds it in Junk).
        assert!(std::fs::read_dir(d.path().join(".Junk/cur")).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("1001.b.host:2,")));
    }

    #[tokio::test]
    async fn hostile_input_is_bounded() {
        let d = maildir();
        // A literal larger than APPEND takes: refused before it is sent.
        let out = dialogue(ctx(d.path()), "a LOGIN bob@example.org pw\nb APPEND INBOX {999999999}\n").await;
        assert!(out.contains("b NO [TOOBIG]") && !out.contains("BYE"), "{out}");
        // A non-synchronizing literal that is too large: the connection ends.
        let out = dialogue(ctx(d.path()), "a LOGIN bob@example.org pw\nb APPEND INBOX {999999999+}\nxx\n").await;
        assert!(out.contains("b NO [TOOBIG]") && out.contains("* BYE"), "{out}");
        // A line without end.
        let out = dialogue(ctx(d.path()), &format!("a LOGIN bob@example.org pw\nb NOOP {}", "x".repeat(200_000))).await;
        assert!(out.contains("* BAD command line too long"), "{out}");
        // Garbage and an HTTP request.
        let out = dialogue(ctx(d.path()), "?? what\n").await;
        assert!(out.contains("?? BAD") || out.contains("* BAD"), "{out}");
        let out = dialogue(ctx(d.path()), "GET / HTTP/1.1\nHost: x\n").await;
        assert!(out.contains("* BYE this is an IMAP server"), "{out}");
        // A huge sequence set on an empty view, and deep section numbers.
        let out = dialogue(ctx(d.path()), "a LOGIN bob@example.org pw\nb SELECT INBOX\nc FETCH 1:4294967295 (UID)\nd FETCH 1 (BODY.PEEK[1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1])\ne LOGOUT\n").await;
        assert!(out.contains("c OK") && out.contains("d OK") && out.contains("BODY[1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1] {0}"), "{out}");
    }

    #[tokio::test]
    async fn authenticate_plain_and_the_small_commands() {
        let d = maildir();
        use base64::Engine;
        let plain = base64::engine::general_purpose::STANDARD.encode("\0bob@example.org\0pw");
        let script = format!(
            "a AUTHENTICATE PLAIN {plain}\n\
             b ID (\"name\" \"test\")\n\
             c NAMESPACE\n\
             d ENABLE CONDSTORE\n\
             e CREATE Lists.rust\n\
             f RENAME Lists.rust Lists.go\n\
             g UNSUBSCRIBE Trash\n\
             h LSUB \"\" *\n\
             i LIST \"\" %\n\
             j SELECT INBOX\n\
             k STORE 1:2 +FLAGS.SILENT (\\Deleted)\n\
             l UID EXPUNGE 2\n\
             m CLOSE\n\
             n CHECK\n\
             o EXAMINE INBOX\n\
             p STORE 1 +FLAGS (\\Seen)\n\
             q UNSELECT\n\
             r LOGOUT\n"
        );
        let out = dialogue(ctx(d.path()), &script).await;
        assert!(out.contains("a OK [CAPABILITY"), "{out}");
        assert!(out.contains("* ID (\"name\" \"stubmail\")"), "{out}");
        assert!(out.contains("* NAMESPACE ((\"\" \".\")) NIL NIL"), "{out}");
        assert!(out.contains("* ENABLED CONDSTORE\r\nd OK"), "{out}");
        assert!(out.contains("f OK RENAME") && d.path().join(".Lists.go/cur").is_dir() && !d.path().join(".Lists.rust").exists(), "{out}");
        assert!(out.contains("* LSUB (\\HasNoChildren \\Junk) \".\" Junk") && !out.contains("* LSUB (\\HasNoChildren \\Trash)"), "{out}");
        // `%` stops at the delimiter: the parent no folder is, \Noselect.
        assert!(out.contains("* LIST (\\Noselect \\HasChildren) \".\" Lists\r\n") && !out.contains("LIST (\\HasNoChildren) \".\" Lists.go"), "{out}");
        // UID EXPUNGE removes only the named one; CLOSE the rest of \Deleted.
        assert!(out.contains("* 2 EXPUNGE\r\nl OK"), "{out}");
        assert!(out.contains("m OK CLOSE") && out.contains("n BAD select a folder first"), "{out}");
        assert!(out.contains("* 0 EXISTS"), "CLOSE expunged the other: {out}");
        assert!(out.contains("o OK [READ-ONLY]") && out.contains("p NO [READ-ONLY]") && out.contains("q OK UNSELECT"), "{out}");
        // A second AUTHENTICATE, without an initial response, answered by
        // the client after "+"; and a cancelled one.
        let out = dialogue(ctx(d.path()), &format!("a AUTHENTICATE PLAIN\n{plain}\nb AUTHENTICATE PLAIN\n*\nc LOGOUT\n")).await;
        assert!(out.contains("+ \r\na OK [CAPABILITY"), "{out}");
        assert!(out.contains("b BAD already logged in"), "{out}");
        let out = dialogue(ctx(d.path()), "a AUTHENTICATE PLAIN\n*\nb LOGOUT\n").await;
        assert!(out.contains("a BAD AUTHENTICATE cancelled"), "{out}");
    }

    #[tokio::test]
    async fn condstore_tracks_every_flag_change() {
        let d = maildir();
        let script = "a LOGIN bob@example.org pw\n\
                      b SELECT INBOX (CONDSTORE)\n\
                      c FETCH 1:* (UID MODSEQ)\n\
                      d STORE 1 +FLAGS (\\Flagged)\n\
                      e UID FETCH 1:* (FLAGS) (CHANGEDSINCE 3)\n\
                      f STORE 2 (UNCHANGEDSINCE 1) +FLAGS (\\Seen)\n\
                      g SEARCH MODSEQ 4\n\
                      h STATUS Junk (HIGHESTMODSEQ)\n\
                      i LOGOUT\n";
        let out = dialogue(ctx(d.path()), script).await;
        assert!(out.contains("* OK [HIGHESTMODSEQ 3]"), "{out}");
        assert!(out.contains("* 1 FETCH (UID 1 MODSEQ (2))") && out.contains("* 2 FETCH (UID 2 MODSEQ (3))"), "{out}");
        assert!(out.contains("* 1 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (4))"), "{out}");
        assert!(out.contains("* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (4))\r\ne OK"), "{out}");
        assert!(out.contains("f OK [MODIFIED 2]"), "{out}");
        assert!(out.contains("* SEARCH 1 (MODSEQ 4)"), "{out}");
        assert!(out.contains("* STATUS Junk (HIGHESTMODSEQ 1)"), "{out}");
        // A flag set by another program (mutt renaming the file) gets its
        // own modification sequence at the next look.
        let cur = d.path().join("cur");
        let name = std::fs::read_dir(&cur).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).find(|n| n.starts_with("1001.")).unwrap();
        std::fs::rename(cur.join(&name), cur.join("1001.b.host:2,R")).unwrap();
        let out = dialogue(ctx(d.path()), "a LOGIN bob@example.org pw\nb SELECT INBOX\nc FETCH 2 (FLAGS MODSEQ)\nd LOGOUT\n").await;
        assert!(out.contains("* 2 FETCH (FLAGS (\\Answered) MODSEQ (5))"), "{out}");
    }

    #[tokio::test]
    async fn keywords_are_kept_in_the_file_names() {
        let d = maildir();
        let script = "a LOGIN bob@example.org pw\n\
                      b SELECT INBOX\n\
                      c STORE 1 +FLAGS ($Junk $Label1)\n\
                      d SEARCH KEYWORD $junk\n\
                      e UID COPY 1 Archive\n\
                      f STORE 1 FLAGS (\\Seen $Label1)\n\
                      g SELECT Archive\n\
                      h FETCH 1 (FLAGS)\n\
                      i LOGOUT\n";
        let out = dialogue(ctx(d.path()), script).await;
        assert!(out.contains("PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)"), "{out}");
        assert!(out.contains("* 1 FETCH (FLAGS ($Junk $Label1 \\Recent))"), "{out}");
        assert!(out.contains("* SEARCH 1\r\nd OK"), "{out}");
        assert!(out.contains("* 1 FETCH (FLAGS (\\Seen $Label1 \\Recent))\r\nf OK"), "{out}");
        // The copy kept its keywords (one table for the whole mailbox).
        assert!(out.contains("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk $Label1)"), "{out}");
        assert!(out.contains("* 1 FETCH (FLAGS ($Junk $Label1))"), "{out}");
        let cur: Vec<String> = std::fs::read_dir(d.path().join("cur")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(cur.iter().any(|n| n.ends_with(":2,Sb")), "{cur:?}");
    }

    #[tokio::test]
    async fn off_loopback_passwords_wait_for_tls() {
        let d = maildir();
        let mut c = Arc::try_unwrap(ctx(d.path())).ok().unwrap();
        c.require_tls = true;
        let out = dialogue(Arc::new(c), "a CAPABILITY\nb LOGIN bob@example.org pw\nc LOGOUT\n").await;
        assert!(out.contains("LOGINDISABLED") && !out.contains("AUTH=PLAIN"), "{out}");
        assert!(out.contains("b NO [PRIVACYREQUIRED]"), "{out}");
    }

    #[test]
    fn list_wildcards() {
        assert!(super::wildmatch(b"*", b"a.b"));
        assert!(!super::wildmatch(b"%", b"a.b"));
        assert!(super::wildmatch(b"a.%", b"a.b"));
        assert!(super::wildmatch(b"inbox", b"INBOX"));
        assert_eq!(super::uid_set(&[5, 1, 2, 3, 7]), "1:3,5,7");
    }
}

#[cfg(test)]
mod attack_tests {
    //! What an attack from the docs found, kept found.
    use super::super::*;
    use super::tests_support::*;

    #[tokio::test]
    async fn a_folder_made_again_gets_a_new_uidvalidity() {
        let d = maildir();
        let out = dialogue(ctx(d.path()), "a LOGIN bob@example.org pw\nb CREATE F1\nc STATUS F1 (UIDVALIDITY)\nd DELETE F1\ne CREATE F1\nf STATUS F1 (UIDVALIDITY)\ng RENAME F1 G1\nh CREATE F1\ni STATUS F1 (UIDVALIDITY)\nj RENAME G1 G1.x\nk LOGOUT\n").await;
        let v: Vec<u64> = out.lines().filter_map(|l| l.strip_prefix("* STATUS F1 (UIDVALIDITY ")).map(|r| r.trim_end_matches(')').parse().unwrap()).collect();
        assert_eq!(v.len(), 3, "{out}");
        assert!(v[0] < v[1] && v[1] < v[2], "{out}");
        assert!(out.contains("j NO [CANNOT]"), "{out}");
    }

    #[tokio::test]
    async fn a_selected_folder_deleted_elsewhere_ends_with_bye() {
        let d = maildir();
        std::fs::create_dir_all(d.path().join(".H2/cur")).unwrap();
        std::fs::create_dir_all(d.path().join(".H2/new")).unwrap();
        let (client, server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(serve(server, "127.0.0.1:5".into(), ctx(d.path())));
        let (r, mut w) = tokio::io::split(client);
        let mut r = tokio::io::BufReader::new(r);
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        w.write_all(b"a LOGIN bob@example.org pw\r\nb SELECT H2\r\n").await.unwrap();
        let mut line = String::new();
        while !line.starts_with("b ") {
            line.clear();
            r.read_line(&mut line).await.unwrap();
        }
        std::fs::remove_dir_all(d.path().join(".H2")).unwrap();
        w.write_all(b"c NOOP\r\n").await.unwrap();
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut rest).await.unwrap();
        assert!(rest.starts_with("* BYE the selected folder was deleted"), "{rest}");
        srv.await.unwrap().unwrap();
    }

    #[test]
    fn search_time_is_linear_in_the_message() {
        let hay = vec![b'A'; 5 << 20];
        let mut needle = vec![b'a'; 60_000];
        needle.push(b'b');
        let t = std::time::Instant::now();
        assert!(!super::search::contains_ci(&hay, &needle));
        assert!(super::search::contains_ci(b"xxHeLLo", b"hello"));
        // Quadratic took minutes; linear takes milliseconds (a generous
        // bound for a debug build on a loaded machine).
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    }
}

#[cfg(test)]
mod stream_tests {
    /// Streaming a large message gives exactly the octets of the whole
    /// conversion, whatever the window, with CR and LF split across reads.
    #[tokio::test]
    async fn streamed_windows_equal_the_converted_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m");
        let mut raw = Vec::new();
        for i in 0..40_000u32 {
            // Lines of varying length, LF or CRLF, so boundaries fall
            // everywhere (a CR at a chunk's end, its LF at the next).
            raw.extend(std::iter::repeat_n(b'x', (i % 7) as usize));
            raw.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
        }
        std::fs::write(&path, &raw).unwrap();
        let want = super::folder::to_crlf(&raw);
        for (skip, take) in [(0, want.len() as u64), (1, 10), (65_535, 3), (65_536, 70_000), (want.len() as u64 - 5, 5)] {
            let (client, server) = tokio::io::duplex(1 << 22);
            let mut s = tokio::io::BufReader::new(tokio::io::BufWriter::new(server));
            super::stream_crlf(&mut s, &path, skip, take, true).await.unwrap();
            tokio::io::AsyncWriteExt::shutdown(&mut s).await.unwrap();
            drop(s);
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut { client }, &mut got).await.unwrap();
            assert_eq!(got, &want[skip as usize..(skip + take) as usize], "skip {skip} take {take}");
        }
        // Asked for more than there is: an error, never a short literal.
        let (_client, server) = tokio::io::duplex(1 << 22);
        let mut s = tokio::io::BufReader::new(tokio::io::BufWriter::new(server));
        assert!(super::stream_crlf(&mut s, &path, 0, want.len() as u64 + 1, true).await.is_err());
    }
}

#[cfg(test)]
mod attack_tests_2 {
    //! What a second attack from the docs found, kept found.
    use super::super::*;
    use super::tests_support::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// Send one command and read up to its tagged answer.
    async fn say<R: tokio::io::AsyncBufRead + Unpin, W: tokio::io::AsyncWrite + Unpin>(r: &mut R, w: &mut W, tag: &str, cmd: &str) -> String {
        w.write_all(format!("{tag} {cmd}\r\n").as_bytes()).await.unwrap();
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).await.unwrap() > 0, "hung up: {all}");
            all += &line;
            if line.starts_with(&format!("{tag} ")) {
                return all;
            }
        }
    }

    #[tokio::test]
    async fn store_keeps_a_flag_another_program_set_meanwhile() {
        let d = maildir();
        let (client, server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(serve(server, "127.0.0.1:5".into(), ctx(d.path())));
        let (r, mut w) = tokio::io::split(client);
        let mut r = tokio::io::BufReader::new(r);
        let mut greeting = String::new();
        r.read_line(&mut greeting).await.unwrap();
        say(&mut r, &mut w, "a", "LOGIN bob@example.org pw").await;
        say(&mut r, &mut w, "b", "SELECT INBOX").await;
        // mutt flags message 1 while the session looks elsewhere.
        let cur = d.path().join("cur");
        let name = std::fs::read_dir(&cur).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).find(|n| n.starts_with("1000.")).unwrap();
        std::fs::rename(cur.join(&name), cur.join("1000.a.host:2,F")).unwrap();
        let out = say(&mut r, &mut w, "c", "STORE 1 +FLAGS (\\Seen)").await;
        assert!(out.contains("* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))"), "{out}");
        assert!(cur.join("1000.a.host:2,FS").exists(), "mutt's flag kept on disk");
        // The same when \Seen comes from reading it.
        let name = std::fs::read_dir(&cur).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).find(|n| n.starts_with("1001.")).unwrap();
        std::fs::rename(cur.join(&name), cur.join("1001.b.host:2,R")).unwrap();
        let out = say(&mut r, &mut w, "d", "FETCH 2 (FLAGS BODY[TEXT])").await;
        assert!(out.contains("FLAGS (\\Answered \\Seen \\Recent)"), "{out}");
        assert!(cur.join("1001.b.host:2,RS").exists());
        say(&mut r, &mut w, "e", "LOGOUT").await;
        drop(w);
        srv.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_keyword_that_cannot_be_kept_is_refused_not_dropped() {
        let d = maildir();
        let many: Vec<String> = (0..26).map(|i| format!("k{i}")).collect();
        let script = format!(
            "a LOGIN bob@example.org pw\nb SELECT INBOX\nc STORE 1 +FLAGS ({})\nd STORE 1 +FLAGS (one-too-many)\ne APPEND INBOX (another) {{5+}}\nhello\nf STORE 1 -FLAGS (never-had)\ng SELECT INBOX\nh LOGOUT\n",
            many.join(" ")
        );
        let out = dialogue(ctx(d.path()), &script).await;
        assert!(out.contains("c OK STORE"), "{out}");
        assert!(out.contains("d NO [LIMIT]") && out.contains("e NO [LIMIT]") && out.contains("f OK STORE"), "{out}");
        let last_select = out.rsplit("g OK").nth(1).unwrap_or_default().to_string();
        let permanent = out.lines().filter(|l| l.contains("PERMANENTFLAGS")).last().unwrap().to_string();
        assert!(!permanent.contains("\\*") && permanent.contains("k25"), "{permanent} {last_select}");
    }
}

#[cfg(test)]
#[path = "rev2_tests.rs"]
mod rev2_tests;
