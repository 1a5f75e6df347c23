//! CGI mode (RFC 3875): one request per process, from the environment and
//! stdin, answered on stdout, through exactly the handler `serve` uses.
//!
//! Traps handled here: Apache passes a chunked body without CONTENT_LENGTH
//! (read to EOF, under the same limit); repeated `Stubmail-Signature`
//! headers arrive folded into one comma-separated variable (split; the
//! values contain no commas); REMOTE_USER, which nginx+fcgiwrap fills from
//! unchecked credentials, is never read — every request is authenticated
//! by its OpenPGP signature.

use std::io::{self, Write};

use stubmail::protocol;

use crate::handler::{self, Body, Settings};
use crate::store::Store;

/// How much of an unread request body is discarded before answering.
const DRAIN_LIMIT: u64 = 4 * 1024 * 1024;

/// True when started by a web server as a CGI program.
pub fn is_cgi() -> bool {
    std::env::var("GATEWAY_INTERFACE").is_ok_and(|g| g.starts_with("CGI/"))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Settings from the environment the web server sets (see contrib/).
pub fn settings() -> Settings {
    let mut prefix = env("POST_MANAGER_PREFIX").or_else(|| env("SCRIPT_NAME")).unwrap_or_else(|| "/".into());
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let max_message_size = env("POST_MANAGER_MAX_MESSAGE_SIZE")
        .and_then(|v| v.parse().ok())
        .unwrap_or(Settings::default().max_message_size);
    // Base URLs besides the accounts' own, space-separated.
    let public_urls = env("POST_MANAGER_PUBLIC_URL")
        .map(|v| v.split_whitespace().filter_map(stubmail::protocol::outbox_id).collect())
        .unwrap_or_default();
    // A bad address is left out, and said so in the web server's error log
    // (a CGI has nowhere else to say it).
    let abuse_contact = env("POST_MANAGER_ABUSE_CONTACT").filter(|a| {
        let ok = crate::valid_abuse_contact(a);
        if !ok {
            tracing::warn!("POST_MANAGER_ABUSE_CONTACT {a:?} is not a mail address (say abuse@your.domain); no abuse desk is named");
        }
        ok
    });
    Settings { prefix, max_message_size, public_urls, abuse_contact, ..Settings::default() }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

/// Answer one CGI request. Errors go to stderr (the web server's error log).
pub fn run() -> io::Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    // A database (POST_MANAGER_STORE, one connection for this request) or
    // a data directory (POST_MANAGER_DATA).
    let opened = match (env("POST_MANAGER_STORE"), env("POST_MANAGER_DATA")) {
        (Some(url), _) => crate::store::Pg::connect_sized(&url, 1)
            .map(|p| Store::from_backend(std::sync::Arc::new(p)))
            .map_err(|e| io::Error::other(format!("{e:#}"))),
        (None, Some(data)) => Store::open(std::path::Path::new(&data)),
        (None, None) => {
            tracing::error!("neither POST_MANAGER_DATA nor POST_MANAGER_STORE is set: set one in the web server's configuration (see contrib/)");
            return write_head(&mut out, 500, "application/json", None, None, false).and_then(|_| {
                out.write_all(br#"{"error":"internal","message":"the outbox is not configured (POST_MANAGER_DATA)"}"#)
            });
        }
    };
    let store = match opened.and_then(|s| s.check_ready().map(|_| s)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("the outbox's store: {e}");
            write_head(&mut out, 500, "application/json", None, None, false)?;
            return out.write_all(br#"{"error":"internal","message":"the outbox's data directory is not usable; see the server log"}"#);
        }
    };
    let settings = settings();
    let method = env("REQUEST_METHOD").unwrap_or_else(|| "GET".into());
    // REQUEST_URI is the path and query exactly as the client sent them,
    // which is what it signed.
    let target = env("REQUEST_URI").unwrap_or_else(|| {
        let mut t = format!("{}{}", env("SCRIPT_NAME").unwrap_or_default(), env("PATH_INFO").unwrap_or_default());
        if let Some(q) = env("QUERY_STRING") {
            t = format!("{t}?{q}");
        }
        t
    });
    let content_length = env("CONTENT_LENGTH").and_then(|v| v.parse::<u64>().ok());
    let headers = |name: &str| -> Vec<String> {
        let var = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        match env(&var) {
            None => vec![],
            Some(v) if name == protocol::SIGNATURE_HEADER => v.split(',').map(|s| s.trim().to_string()).collect(),
            Some(v) => vec![v],
        }
    };
    let mut stdin = io::stdin().lock();
    let req = handler::Request { method: &method, target: &target, headers: &headers, content_length, body: &mut stdin };
    let resp = handler::handle(&store, &settings, req, stubmail::time::unix_now());
    // A refused request leaves its body unread; web servers then drop the
    // answer. Discard a bounded remainder (never into memory) so the client
    // gets its error; anything larger was refused by the server's limit.
    let _ = io::copy(&mut io::Read::take(&mut stdin, DRAIN_LIMIT), &mut io::sink());
    // The web server's access log has every request; its error log (our
    // stderr) gets the refusals, with the reason the access log lacks.
    // (Each line is a write Apache's cgid reads and logs: at every request
    // that was a measurable share of a CGI request's cost.)
    let signer = resp.signer.as_ref().map(|f| f.to_string());
    if resp.status >= 400 {
        tracing::info!(method, target, status = resp.status, signer, error = resp.error, "request");
    } else {
        tracing::debug!(method, target, status = resp.status, signer, "request");
    }
    let len = match &resp.body {
        Body::Empty => Some(0),
        Body::Json(v) | Body::Key(v) | Body::Doc(v, _) => Some(v.len() as u64),
        Body::Stream(_, n) => Some(*n),
    };
    write_head(&mut out, resp.status, resp.content_type(), len, resp.content_range.as_deref(), resp.cors)?;
    if method != "HEAD" {
        match resp.body {
            // Streamed: memory does not grow with the message.
            body => handler::write_body(body, &mut out)?,
        }
    }
    out.flush()
}

fn write_head(out: &mut dyn Write, status: u16, ct: &str, len: Option<u64>, range: Option<&str>, cors: bool) -> io::Result<()> {
    write!(out, "Status: {status} {}\r\nContent-Type: {ct}\r\nAccept-Ranges: bytes\r\n", reason(status))?;
    if let Some(l) = len {
        write!(out, "Content-Length: {l}\r\n")?;
    }
    if let Some(r) = range {
        write!(out, "Content-Range: {r}\r\n")?;
    }
    if cors {
        out.write_all(b"Access-Control-Allow-Origin: *\r\n")?;
    }
    out.write_all(b"\r\n")
}
