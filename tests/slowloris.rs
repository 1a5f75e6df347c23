//! Slowloris: many connections from one address that open and then stall
//! (half a command, half a request header) take only that address's share
//! of a listener; everyone else is still served. Run against smtp2stub,
//! http2mbox's POP3 server and post_manager, the real binaries.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Per-address connection limit of every listener (stubmail::server).
const PER_IP: usize = 32;

/// Open `n` connections from 127.0.0.1 that send `partial` and stall;
/// returns them (held open) and how many were refused with `refusal`.
fn stall(port: u16, n: usize, partial: &[u8], refusal: &str) -> (Vec<TcpStream>, usize) {
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(partial).unwrap();
        held.push(s);
    }
    // Let the server admit or refuse them all.
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 512];
        if let Ok(k) = s.read(&mut buf)
            && String::from_utf8_lossy(&buf[..k]).contains(refusal) {
                refused += 1;
            }
    }
    (held, refused)
}

/// A Python client connecting from 127.0.0.2 (another address, same
/// machine): sends `send` lines, prints what came back.
fn from_other_address(port: u16, send: &str) -> String {
    let script = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20, source_address=("127.0.0.2", 0))
s.sendall(sys.argv[2].encode().replace(b"\\n", b"\r\n"))
time.sleep(0.5)
out = b""
s.settimeout(2)
try:
    while True:
        b = s.recv(65536)
        if not b: break
        out += b
except socket.timeout:
    pass
print(out.decode(errors="replace"))
"#;
    let (good, out) = python(script, &[&port.to_string(), send]);
    assert!(good, "{out}");
    out
}

#[test]
fn smtp_slowloris_takes_only_its_share() {
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    let (_held, refused) = stall(smtp.port(), PER_IP + 8, b"EHLO slow", "421 4.7.0 Too many connections");
    assert_eq!(refused, 8, "connections over the per-address limit get 421");
    // A client from another address sends mail as if nothing happened.
    let script = r#"
import smtplib, sys
s = login_smtp("127.0.0.1", int(sys.argv[1]), timeout=30, source_address=("127.0.0.2", 0))
s.sendmail("alice@example.org", ["bob@example.net"], b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: despite slowloris\r\n\r\nhi\r\n")
s.quit()
print("sent")
"#;
    let (good, out) = python(script, &[&smtp.port().to_string()]);
    assert!(good && out.contains("sent"), "{out}");
    wait_states(&p.alice, 1, "stored");
}

#[test]
fn pop3_slowloris_takes_only_its_share() {
    let p = Pair::start(false);
    p.bob.edit_config(|t| {
        let mut pop3 = toml::Table::new();
        pop3.insert("password".into(), "pop-secret".into());
        table(t, "poll").insert("pop3".into(), pop3.into());
    });
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&p.bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let pop3 = Server::start("http2mbox-bob", c, p.root.path());
    let (_held, refused) = stall(pop3.port(), PER_IP + 5, b"USER bo", "-ERR [SYS/TEMP] too many connections");
    assert_eq!(refused, 5);
    let out = from_other_address(pop3.port(), "USER bob@example.net\nPASS pop-secret\nSTAT\nQUIT\n");
    assert!(out.starts_with("+OK") && out.contains("+OK 0 0"), "{out}");
}

#[test]
fn imap_slowloris_takes_only_its_share() {
    let p = Pair::start(false);
    p.bob.set_pop3_password("pop-secret");
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&p.bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let daemon = Server::start("http2mbox-bob", c, p.root.path());
    let imap: u16 = wait_for("IMAP to listen", 30, || daemon.stdout_after("http2mbox IMAP listening on")).rsplit(':').next().unwrap().parse().unwrap();
    let (_held, refused) = stall(imap, PER_IP + 5, b"a LOGIN bo", "* BYE too many connections");
    assert_eq!(refused, 5);
    let out = from_other_address(imap, "a LOGIN bob@example.net pop-secret\nb SELECT INBOX\nc LOGOUT\n");
    assert!(out.starts_with("* OK") && out.contains("b OK [READ-WRITE]"), "{out}");
}

#[test]
fn http_slowloris_takes_only_its_share() {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start(root.path(), "outbox");
    let (_held, refused) = stall(outbox.server.port(), PER_IP + 6, b"POST /v1/poll HTTP/1.1\r\nHost: x\r\nContent-Le", "503 Service Unavailable");
    assert_eq!(refused, 6);
    let out = from_other_address(outbox.server.port(), "GET /.well-known/openpgpkey/policy HTTP/1.1\nHost: x\nConnection: close\n\n");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
