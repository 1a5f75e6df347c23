//! Defences every login listener (SMTP, POP3) shares against hostile
//! clients: HTTP sent to a mail port by a web page, and password guessing
//! spread over many connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Does this command line look like HTTP (or a header of it)? A web page
/// can make the user's browser POST to `127.0.0.1:2525` with
/// `enctype=text/plain`, and the form body then reads as SMTP commands
/// after the HTTP header lines. Such a connection is closed at its first
/// HTTP-looking line, as Postfix's `smtpd_forbidden_commands` does
/// (`CONNECT GET POST regexp:^[^[:space:]]+:`). No SMTP or POP3 verb ends
/// in a colon, and none is an HTTP method.
pub fn looks_like_http(line: &[u8]) -> bool {
    const METHODS: &[&str] = &["GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "DELETE", "PATCH", "TRACE", "PRI"];
    let line = line.trim_ascii();
    // Any request line, whatever its method: `X / HTTP/1.1`.
    let upper = line.to_ascii_uppercase();
    if [&b" HTTP/1.0"[..], b" HTTP/1.1", b" HTTP/2.0", b" HTTP/2"].iter().any(|v| upper.ends_with(v)) {
        return true;
    }
    let first = line.split(|&b| b == b' ' || b == b'\t').next().unwrap_or_default();
    if first.len() > 1 && first.ends_with(b":") {
        return true;
    }
    METHODS.iter().any(|m| first.eq_ignore_ascii_case(m.as_bytes()))
}

/// Failed logins before the key is locked out.
const LOCKOUT_AFTER: u32 = 10;
/// How long a lockout lasts.
const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Keys remembered at most (client addresses and the account); beyond it
/// the settled ones go, then the oldest.
const MAX_KEYS: usize = 4096;

/// Who a failure counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Account(String),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    /// No attempt is checked before this moment.
    next_allowed: Instant,
    last_failure: Instant,
}

/// Limits failed logins per client address and per account, across every
/// connection (and every listener sharing it): each failure makes the next
/// attempt wait longer (0.25 s, doubling up to 30 s), and after ten the
/// key is locked out for fifteen minutes. An attempt made too early is
/// refused without the password being looked at, so parallel connections
/// gain nothing. A success clears both keys.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<Key, Entry>>,
}

/// A login attempt refused without checking: try again after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled(pub Duration);

impl Throttled {
    /// Whole seconds to wait, at least one (for messages to the client).
    pub fn secs(&self) -> u64 {
        self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)
    }
}

fn delay_after(failures: u32) -> Duration {
    if failures >= LOCKOUT_AFTER {
        LOCKOUT
    } else {
        (Duration::from_millis(250) * 2u32.saturating_pow(failures.saturating_sub(1))).min(Duration::from_secs(30))
    }
}

impl LoginThrottle {
    pub fn new() -> LoginThrottle {
        LoginThrottle::default()
    }

    /// Keys for an attempt: the client's address, and the account if the
    /// name given is the real one (other names are only wrong, and must not
    /// grow the table).
    fn keys(ip: IpAddr, account: Option<&str>) -> Vec<Key> {
        let mut k = vec![Key::Addr(ip)];
        if let Some(a) = account {
            k.push(Key::Account(a.to_ascii_lowercase()));
        }
        k
    }

    /// May an attempt be checked now? `account`: the real account, when
    /// the client named it.
    pub fn check(&self, ip: IpAddr, account: Option<&str>) -> Result<(), Throttled> {
        self.check_at(Instant::now(), ip, account)
    }

    pub fn check_at(&self, now: Instant, ip: IpAddr, account: Option<&str>) -> Result<(), Throttled> {
        let e = self.entries.lock().expect("not poisoned");
        let wait = Self::keys(ip, account)
            .iter()
            .filter_map(|k| e.get(k))
            .filter(|x| now.duration_since(x.last_failure) < FORGET_AFTER)
            .map(|x| x.next_allowed.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() { Ok(()) } else { Err(Throttled(wait)) }
    }

    /// A checked attempt failed.
    pub fn failed(&self, ip: IpAddr, account: Option<&str>) {
        self.failed_at(Instant::now(), ip, account)
    }

    pub fn failed_at(&self, now: Instant, ip: IpAddr, account: Option<&str>) {
        let mut e = self.entries.lock().expect("not poisoned");
        if e.len() >= MAX_KEYS {
            e.retain(|_, x| now.duration_since(x.last_failure) < FORGET_AFTER && x.next_allowed > now);
            if e.len() >= MAX_KEYS {
                // Still full (an attack from very many addresses): forget the
                // oldest address; the account's entry is never the one to go.
                if let Some(k) = e.iter().filter(|(k, _)| matches!(k, Key::Addr(_))).min_by_key(|(_, x)| x.last_failure).map(|(k, _)| k.clone()) {
                    e.remove(&k);
                }
            }
        }
        for k in Self::keys(ip, account) {
            let x = e.entry(k).or_insert(Entry { failures: 0, next_allowed: now, last_failure: now });
            if now.duration_since(x.last_failure) >= FORGET_AFTER {
                x.failures = 0;
            }
            x.failures += 1;
            x.last_failure = now;
            x.next_allowed = now + delay_after(x.failures);
        }
    }

    /// A login succeeded: forget this address's and the account's failures.
    pub fn succeeded(&self, ip: IpAddr, account: Option<&str>) {
        let mut e = self.entries.lock().expect("not poisoned");
        for k in Self::keys(ip, account) {
            e.remove(&k);
        }
    }
}

/// The client address of a peer string ("ip:port"), for the throttle.
pub fn peer_ip(peer: &str) -> IpAddr {
    peer.parse::<std::net::SocketAddr>().map(|a| a.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_lines_are_recognised_and_mail_commands_are_not() {
        for l in [
            &b"POST / HTTP/1.1\r\n"[..],
            b"GET /index.html HTTP/1.0",
            b"get / http/1.1",
            b"CONNECT 127.0.0.1:2525 HTTP/1.1",
            b"Host: 127.0.0.1:2525",
            b"User-Agent: Mozilla/5.0",
            b"Content-Type: text/plain",
            b"OPTIONS * HTTP/1.1",
            b"PRI * HTTP/2.0",
            b"  POST / HTTP/1.1",
            b"EHLO / HTTP/1.1\r\n",
            b"USER / http/1.0",
            b"\tHost: x",
        ] {
            assert!(looks_like_http(l), "{:?}", String::from_utf8_lossy(l));
        }
        for l in [
            &b"EHLO client.example"[..],
            b"MAIL FROM:<a@b>",
            b"RCPT TO:<a@b>",
            b"USER bob",
            b"PASS hunter2:x",
            b"AUTH PLAIN AGJvYgBwdw==",
            b"QUIT",
            b"",
            b":",
        ] {
            assert!(!looks_like_http(l), "{:?}", String::from_utf8_lossy(l));
        }
    }

    #[test]
    fn password_guessing_across_connections_is_slowed_then_locked_out() {
        let t = LoginThrottle::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(t.check_at(t0, ip, Some("bob")).is_ok());
        t.failed_at(t0, ip, Some("bob"));
        // Any connection, at once: refused unchecked.
        assert_eq!(t.check_at(t0, ip, None), Err(Throttled(Duration::from_millis(250))));
        // The account is held too, from any address.
        assert!(t.check_at(t0, other, Some("bob")).is_err());
        assert!(t.check_at(t0, other, None).is_ok(), "another address guessing another name is not held");
        let mut now = t0;
        for _ in 1..LOCKOUT_AFTER {
            now += Duration::from_secs(31);
            assert!(t.check_at(now, ip, Some("bob")).is_ok());
            t.failed_at(now, ip, Some("bob"));
        }
        let Err(Throttled(wait)) = t.check_at(now + Duration::from_secs(60), ip, Some("bob")) else { panic!("locked out") };
        assert!(wait > Duration::from_secs(10 * 60));
        assert!(t.check_at(now + LOCKOUT, ip, Some("bob")).is_ok(), "the lockout ends");
        t.succeeded(ip, Some("bob"));
        assert!(t.check_at(now, ip, Some("bob")).is_ok(), "a success clears");
    }

    #[test]
    fn many_addresses_do_not_grow_the_table_without_bound() {
        let t = LoginThrottle::new();
        let now = Instant::now();
        for i in 0..(MAX_KEYS as u32 + 500) {
            t.failed_at(now, IpAddr::V4(i.into()), Some("bob"));
        }
        assert!(t.entries.lock().unwrap().len() <= MAX_KEYS);
        assert!(t.check_at(now, "1.2.3.4".parse().unwrap(), Some("bob")).is_err(), "the account entry stays");
    }
}
