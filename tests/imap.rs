//! http2mbox's IMAP server against real clients: Python's imaplib (and
//! IDLE over a plain socket), mbsync and offlineimap syncing both ways,
//! fetchmail over IMAP with IDLE, and Dovecot's imapd serving the same
//! Maildir for the same commands.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Messages of the shapes mail clients meet: plain, multipart with a
/// base64 attachment, a forwarded message (message/rfc822), encoded words
/// and 8-bit UTF-8, a group in To.
pub const FIXTURES: &[(&str, &str)] = &[
    (
        "1700000001.M1P1.host",
        "From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: first\nDate: Mon, 7 Dec 2026 10:00:00 +0000\nMessage-ID: <1@a>\n\nHello Bob.\nSecond line.\n",
    ),
    (
        "1700000002.M2P1.host",
        "From: Carol <carol@example.net>\nTo: Friends: bob@example.net, dan@example.com;\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= mixed\nDate: Tue, 8 Dec 2026 11:00:00 +0100\nMessage-ID: <2@c>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\nPreamble.\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nKäse und needle.\n--b1\nContent-Type: application/octet-stream; name=\"x.bin\"\nContent-Disposition: attachment; filename=\"x.bin\"\nContent-Transfer-Encoding: base64\n\nAAECAwQFBgcICQ==\n--b1--\n",
    ),
    (
        "1700000003.M3P1.host",
        "From: Dan <dan@example.com>\nTo: bob@example.net\nCc: \"Eve, E.\" <eve@example.org>\nSubject: fwd\nDate: Wed, 9 Dec 2026 12:00:00 -0500\nMessage-ID: <3@d>\nIn-Reply-To: <2@c>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n\n--outer\nContent-Type: text/plain\n\nSee below.\n--outer\nContent-Type: message/rfc822\n\nFrom: Frank <frank@example.org>\nSubject: inner\nDate: Thu, 10 Dec 2026 09:00:00 +0000\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"alt\"\n\n--alt\nContent-Type: text/plain\n\ninner text\n--alt\nContent-Type: text/html\n\n<p>inner html</p>\n--alt--\n--outer--\n",
    ),
];

/// Bob's home with POP3/IMAP on, and the fixtures in his Maildir.
fn bob_with_fixtures(root: &Path) -> User {
    let bob = User::init(root, "bob", "bob@example.net", "http://127.0.0.1:9/");
    bob.set_pop3_password("pop-secret");
    let md = bob.home.join("Maildir");
    for d in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(d)).unwrap();
    }
    for (name, text) in FIXTURES {
        std::fs::write(md.join("new").join(name), text).unwrap();
    }
    bob
}

fn daemon(root: &Path, u: &User, interval: &str) -> (Server, u16) {
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&u.home).args(["--interval", interval, "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let s = Server::start("http2mbox-bob", c, root);
    let imap = s.stdout_after("http2mbox IMAP listening on").expect("IMAP is on");
    let port = imap.rsplit(':').next().unwrap().parse().unwrap();
    (s, port)
}

/// The same commands a mail client sends, through imaplib; the answers as
/// JSON.
const IMAPLIB_SESSION: &str = r#"
import imaplib, sys, json
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
M.login(sys.argv[2], "pop-secret")
out = {}
out["list"] = sorted(x.decode() for x in M.list()[1])
typ, d = M.select("INBOX"); out["exists"] = d[0].decode()
typ, d = M.fetch("1:*", "(RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[1] BODY.PEEK[2.1] BODY.PEEK[TEXT]<0.20>)")
out["fetch"] = [(x if isinstance(x, bytes) else b"|".join(x)).decode(errors="replace") for x in d]
for crit in ["ALL", "UNSEEN", 'SUBJECT "mixed"', 'FROM "carol"', "BODY needle", "TEXT Frank", "LARGER 500", "NOT SMALLER 300", "OR SUBJECT first FROM carol", "SENTSINCE 9-Dec-2026", "SENTBEFORE 9-Dec-2026", 'HEADER Message-ID "<1@a>"', "UID 2:*", "2,3 NOT 3"]:
    out["search " + crit] = M.search(None, crit)[1][0].decode()
M.store("1", "+FLAGS", "(\\Flagged \\Seen)")
M.store("2", "+FLAGS.SILENT", "(\\Answered)")
out["flags"] = [x.decode() for x in M.fetch("1:*", "(FLAGS)")[1]]
out["status"] = M.status("INBOX", "(MESSAGES UNSEEN)")[1][0].decode()
M.logout()
print(json.dumps(out))
"#;

fn imaplib_session(port: u16, user: &str) -> serde_json::Value {
    let (good, out) = python(IMAPLIB_SESSION, &[&port.to_string(), user]);
    assert!(good, "{out}");
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// Everything but what servers may choose freely (`\Recent`), and one
/// known difference: Dovecot counts the CRLF before the outer boundary
/// into a message/rfc822 part that is itself multipart (271 octets, 15
/// lines here); RFC 2046 §5.1.1 gives that CRLF to the boundary, and so
/// do we, as Dovecot does for every other part.
fn normalise(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(f) = v["fetch"].as_array_mut() {
        for x in f {
            *x = x.as_str().unwrap().replace("\"7bit\" 271 (", "\"7bit\" 269 (").replace("NIL NIL NIL) 15 NIL", "NIL NIL NIL) 14 NIL").into();
        }
    }
    if let Some(f) = v["flags"].as_array_mut() {
        for x in f {
            *x = x.as_str().unwrap().replace(" \\Recent", "").replace("\\Recent", "").into();
        }
    }
    v
}

#[test]
fn imaplib_sees_what_dovecot_shows_of_the_same_maildir() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    // Dovecot gets its own copy (it writes its index and uid list there).
    let theirs = root.path().join("dovecot-maildir");
    ok(Command::new("cp").arg("-a").arg(bob.home.join("Maildir")).arg(&theirs));
    let (_ours, port) = daemon(root.path(), &bob, "3600");
    let dovecot = common::dovecot::start(root.path(), &theirs, "imap").unwrap_or_else(|e| panic!("Dovecot did not start: {e}"));
    let a = normalise(&imaplib_session(port, "bob@example.net"));
    let b = normalise(&imaplib_session(dovecot.port, "bob"));
    for key in b.as_object().unwrap().keys() {
        if key == "list" {
            // Dovecot lists only what exists; ours makes the special-use
            // folders at login.
            continue;
        }
        assert_eq!(a[key], b[key], "{key}: ours (left) and Dovecot's (right) differ");
    }
    assert!(a["list"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("\\Junk")), "{}", a["list"]);
    // Flags are in the file names, where mutt reads them.
    let cur: Vec<String> = std::fs::read_dir(bob.home.join("Maildir/cur")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(cur.iter().any(|n| n == "1700000001.M1P1.host:2,FS"), "{cur:?}");
    assert!(cur.iter().any(|n| n == "1700000002.M2P1.host:2,R"), "{cur:?}");
}
