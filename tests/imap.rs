//! http2mbox's IMAP server against real clients: Python's imaplib (and
//! IDLE over a plain socket), mbsync and offlineimap syncing both ways,
//! fetchmail over IMAP with IDLE, neomutt under tmux, and Dovecot's imapd
//! serving the same Maildir for the same commands.

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
    // POP3 says it listens first; IMAP's line follows.
    let imap = wait_for("IMAP to listen", 30, || s.stdout_after("http2mbox IMAP listening on"));
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

/// Bob's fixtures served by our daemon (its IMAP port) and by Dovecot's
/// imapd from a copy of the same Maildir (Dovecot writes its index and
/// uid list there).
fn ours_and_dovecot(root: &Path) -> (User, Server, u16, common::dovecot::Dovecot) {
    let bob = bob_with_fixtures(root);
    let theirs = root.join("dovecot-maildir");
    ok(Command::new("cp").arg("-a").arg(bob.home.join("Maildir")).arg(&theirs));
    let (ours, port) = daemon(root, &bob, "3600");
    let dovecot = common::dovecot::start(root, &theirs, "imap").unwrap_or_else(|e| panic!("Dovecot did not start: {e}"));
    (bob, ours, port, dovecot)
}

#[test]
fn imaplib_sees_what_dovecot_shows_of_the_same_maildir() {
    let root = tempfile::tempdir().unwrap();
    let (bob, _ours, port, dovecot) = ours_and_dovecot(root.path());
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

/// Commands of the extensions IMAP4rev2 folds in (ESEARCH, SEARCHRES,
/// BINARY, LIST-EXTENDED, LIST-STATUS, STATUS=SIZE), sent as they are over
/// a socket; each command's untagged answers and its tagged status.
const REV2_SESSION: &str = r#"
import socket, sys, json, re
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
f = s.makefile("rb")
def line():
    l = f.readline()
    m = re.search(rb"~?\{(\d+)\}\r\n$", l)
    if m:
        l = l + f.read(int(m.group(1))) + line()
    return l
line()
def cmd(tag, text):
    s.sendall(f"{tag} {text}\r\n".encode())
    out = []
    while True:
        l = line()
        if l.startswith(tag.encode() + b" "):
            return out, l.split()[1].decode()
        out.append(l.decode("latin-1").replace("\\Recent", "").replace("( ", "(").replace(" )", ")").strip())
cmd("a", f"LOGIN {sys.argv[2]} pop-secret")
cmd("b", "SELECT INBOX")
res = {}
for i, c in enumerate([
    "SEARCH RETURN (MIN MAX COUNT ALL) ALL",
    "UID SEARCH RETURN (COUNT ALL) BODY needle",
    "SEARCH RETURN (SAVE) OR SUBJECT first FROM dan",
    "FETCH $ (UID RFC822.SIZE)",
    "SEARCH RETURN (ALL) NOT $",
    "UID SEARCH RETURN (ALL) UID $",
    "SEARCH RETURN (MAX SAVE) ALL",
    "FETCH $ (UID)",
    "FETCH 2 (BINARY.PEEK[1] BINARY.PEEK[2] BINARY.SIZE[2])",
    "FETCH 3 (BINARY.PEEK[2.1] BINARY.SIZE[1])",
    "FETCH 1 (BINARY.PEEK[1]<0.5>)",
    "STATUS INBOX (MESSAGES SIZE)",
    'LIST "" (INBOX) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))',
    "SEARCH RETURN (BOGUS) ALL",
]):
    res[c] = cmd(f"t{i}", c)
cmd("z", "LOGOUT")
print(json.dumps(res))
"#;

#[test]
fn the_rev2_extensions_answer_as_dovecot_answers() {
    let root = tempfile::tempdir().unwrap();
    let (_bob, _ours, port, dovecot) = ours_and_dovecot(root.path());
    let run = |port: u16, user: &str| -> serde_json::Value {
        let (good, out) = python(REV2_SESSION, &[&port.to_string(), user]);
        assert!(good, "{out}");
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let (a, b) = (run(port, "bob@example.net"), run(dovecot.port, "bob"));
    for (cmd, theirs) in b.as_object().unwrap() {
        assert_eq!(&a[cmd], theirs, "{cmd}: ours (left) and Dovecot's (right) differ");
    }
    // And the answers are the right ones, not merely the same.
    assert_eq!(a["SEARCH RETURN (MIN MAX COUNT ALL) ALL"][0][0], "* ESEARCH (TAG \"t0\") MIN 1 MAX 3 ALL 1:3 COUNT 3");
    assert_eq!(a["SEARCH RETURN (ALL) NOT $"][0][0], "* ESEARCH (TAG \"t4\") ALL 2");
    assert!(a["FETCH 2 (BINARY.PEEK[1] BINARY.PEEK[2] BINARY.SIZE[2])"][0][0].as_str().unwrap().contains("BINARY.SIZE[2] 10"), "{a}");
    assert_eq!(a["SEARCH RETURN (BOGUS) ALL"][1], "BAD");
}

/// IDLE over a plain socket: logs in, selects, idles, says so, then prints
/// every untagged line until EXISTS, and leaves IDLE with DONE.
const IDLER: &str = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
f = s.makefile("rb")
def cmd(tag, text):
    s.sendall(f"{tag} {text}\r\n".encode())
    while True:
        l = f.readline().decode()
        if l.startswith(tag + " "):
            assert " OK" in l, l
            return
f.readline()
cmd("a", "LOGIN bob@example.net pop-secret")
cmd("b", "SELECT INBOX")
s.sendall(b"c IDLE\r\n")
assert f.readline().startswith(b"+"), "no continuation"
print("IDLING", flush=True)
t0 = time.time()
while True:
    l = f.readline().decode()
    if l.endswith("EXISTS\r\n"):
        print("NEW", l.strip(), flush=True)
        break
s.sendall(b"DONE\r\n")
l = f.readline().decode()
while l.startswith("* "):
    l = f.readline().decode()
assert l.startswith("c OK"), l
print("DONE", flush=True)
"#;

struct Sending {
    root: tempfile::TempDir,
    _outbox: Outbox,
    alice: User,
    bob: User,
    smtp: Server,
}

fn sending() -> Sending {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    bob.set_pop3_password("pop-secret");
    Sending { root, _outbox: outbox, alice, bob, smtp }
}

impl Sending {
    fn send(&self, subject: &str) {
        let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n");
        assert!(smtplib_send(self.smtp.port(), "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    }
}

#[test]
fn idle_announces_mail_as_http2mbox_delivers_it() {
    let s = sending();
    let (_daemon, port) = daemon(s.root.path(), &s.bob, "1");
    let mut idler = Command::new("python3").arg("-c").arg(IDLER).arg(port.to_string()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(idler.stdout.take().unwrap()).lines();
    let ended = |idler: &mut std::process::Child| -> String {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut idler.stderr.take().unwrap(), &mut err);
        format!("the idling client ended: {err}")
    };
    match lines.next() {
        Some(Ok(l)) => assert_eq!(l, "IDLING"),
        _ => panic!("{}", ended(&mut idler)),
    }
    s.send("while idling");
    let t0 = Instant::now();
    let Some(Ok(new)) = lines.next() else { panic!("{}", ended(&mut idler)) };
    assert_eq!(new, "NEW * 1 EXISTS", "the idling client is told of the message");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(lines.next().unwrap().unwrap(), "DONE");
    assert!(idler.wait().unwrap().success());
    // It was delivered, durably, before it was announced.
    let md = s.bob.home.join("Maildir");
    let n = ["new", "cur"].iter().map(|d| std::fs::read_dir(md.join(d)).unwrap().count()).sum::<usize>();
    assert_eq!(n, 1);
}

/// A Maildir tree as mbsync/offlineimap keep it locally: (folder, flags
/// suffix) of every message.
fn local_messages(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let s = e.to_string_lossy().into_owned();
        if (s.contains("/cur/") || s.contains("/new/")) && e.is_file() {
            let folder = e.parent().unwrap().parent().unwrap().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let name = e.file_name().unwrap().to_string_lossy().into_owned();
            out.push((folder, name.split_once(":2,").map(|(_, f)| f.to_string()).unwrap_or_default()));
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn server_files(bob: &User, folder: &str) -> Vec<String> {
    let md = bob.home.join("Maildir");
    let dir = if folder == "INBOX" { md } else { md.join(format!(".{folder}")) };
    let mut v: Vec<String> = ["new", "cur"].iter().flat_map(|d| std::fs::read_dir(dir.join(d)).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned())).collect();
    v.sort();
    v
}

#[test]
fn mbsync_syncs_both_ways() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    let (_daemon, port) = daemon(root.path(), &bob, "3600");
    let local = root.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let rc = root.path().join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount bob\nHost 127.0.0.1\nPort {port}\nUser bob@example.net\nPass pop-secret\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore remote\nAccount bob\n\n\
             MaildirStore local\nPath {l}/\nInbox {l}/INBOX\nSubFolders Verbatim\n\n\
             Channel all\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n",
            l = local.display()
        ),
    )
    .unwrap();
    let mbsync = |what: &str| {
        let out = Command::new(require("mbsync")).arg("-c").arg(&rc).arg("-a").output().unwrap();
        assert!(out.status.success(), "mbsync ({what}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    };
    mbsync("first");
    let got = local_messages(&local);
    assert_eq!(got.iter().filter(|(f, _)| f == "INBOX").count(), 3, "{got:?}");
    assert!(local.join("Junk").is_dir() && local.join("Sent").is_dir(), "the folders came too");

    // Locally: one read, one deleted, one new message in Sent.
    let inbox = local.join("INBOX");
    let mut files: Vec<_> = ["new", "cur"].iter().flat_map(|d| std::fs::read_dir(inbox.join(d)).unwrap().flatten().map(|e| e.path())).collect();
    files.sort();
    let first = &files[0];
    let name = first.file_name().unwrap().to_string_lossy().into_owned();
    let seen = inbox.join("cur").join(format!("{}:2,S", name.split(":2,").next().unwrap()));
    std::fs::rename(first, &seen).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::write(local.join("Sent/cur/1800000000.local.host:2,S"), "From: bob@example.net\nTo: alice@example.org\nSubject: sent from the laptop\n\nhi\n").unwrap();
    mbsync("second");
    let inbox_now = server_files(&bob, "INBOX");
    assert_eq!(inbox_now.len(), 2, "the deleted one is gone from the server: {inbox_now:?}");
    assert_eq!(inbox_now.iter().filter(|n| n.ends_with(":2,S")).count(), 1, "the read one is \\Seen on the server: {inbox_now:?}");
    let sent = server_files(&bob, "Sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let text = std::fs::read_to_string(bob.home.join("Maildir/.Sent/cur").join(&sent[0])).unwrap();
    assert!(text.contains("sent from the laptop"));
    // Nothing to do a third time, and nothing duplicated.
    mbsync("third");
    assert_eq!(server_files(&bob, "INBOX").len(), 2);
    assert_eq!(local_messages(&local).iter().filter(|(f, _)| f == "INBOX").count(), 2);
}

#[test]
fn offlineimap_syncs_both_ways() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    let (_daemon, port) = daemon(root.path(), &bob, "3600");
    let local = root.path().join("oi-local");
    let meta = root.path().join("oi-meta");
    let rc = root.path().join("offlineimaprc");
    std::fs::write(
        &rc,
        format!(
            "[general]\naccounts = bob\nmetadata = {meta}\n\n[Account bob]\nlocalrepository = local\nremoterepository = remote\n\n\
             [Repository local]\ntype = Maildir\nlocalfolders = {l}\n\n\
             [Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\nremoteport = {port}\nremoteuser = bob@example.net\nremotepass = pop-secret\nssl = no\nstarttls = no\n",
            meta = meta.display(),
            l = local.display()
        ),
    )
    .unwrap();
    let run = |what: &str| {
        let out = Command::new(require("offlineimap")).arg("-c").arg(&rc).args(["-o", "-u", "basic"]).env("HOME", root.path()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && !text.contains("ERROR"), "offlineimap ({what}): {text}");
    };
    run("first");
    let got = local_messages(&local);
    assert_eq!(got.iter().filter(|(f, _)| f == "INBOX").count(), 3, "{got:?}");
    // Flag one as read and delete another locally; sync again.
    let inbox = local.join("INBOX");
    let mut files: Vec<_> = ["new", "cur"].iter().flat_map(|d| std::fs::read_dir(inbox.join(d)).unwrap().flatten().map(|e| e.path())).collect();
    files.sort();
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    std::fs::rename(&files[0], inbox.join("cur").join(format!("{}:2,FS", name.split(":2,").next().unwrap()))).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    run("second");
    let now = server_files(&bob, "INBOX");
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(now.iter().filter(|n| n.ends_with(":2,FS")).count(), 1, "{now:?}");
    // A message that arrives on the server comes down.
    std::fs::write(bob.home.join("Maildir/new/1900000000.later.host"), "From: x@example.org\nSubject: later\n\nlater\n").unwrap();
    run("third");
    assert_eq!(local_messages(&local).iter().filter(|(f, _)| f == "INBOX").count(), 3);
}

#[test]
fn fetchmail_over_imap_with_idle() {
    let s = sending();
    let (_daemon, port) = daemon(s.root.path(), &s.bob, "1");
    let got = s.root.path().join("fetchmail-out");
    std::fs::create_dir_all(&got).unwrap();
    let rc = s.root.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "poll 127.0.0.1 protocol imap port {port} auth password\n  user \"bob@example.net\" password \"pop-secret\"\n  sslproto \"\" idle\n  mda \"/bin/sh -c 'cat > {}/msg.$$'\"\n",
            got.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    // In IDLE, fetchmail stays connected and fetches what arrives.
    let mut fm = Command::new(require("fetchmail"))
        .env("HOME", s.root.path())
        .arg("--fetchmailrc")
        .arg(&rc)
        .args(["--nodetach", "--nosyslog", "--daemon", "300", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    for pipe in [Box::new(fm.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(fm.stderr.take().unwrap())] {
        let log = log.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut g = log.lock().unwrap();
                g.push_str(&l);
                g.push('\n');
            }
        });
    }
    wait_for("fetchmail to idle", 30, || log.lock().unwrap().contains("IDLE").then_some(()));
    s.send("to fetchmail");
    let found = (0..600).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_dir(&got).unwrap().flatten().next().map(|e| e.path())
    });
    let _ = fm.kill();
    let _ = fm.wait();
    let found = found.unwrap_or_else(|| panic!("fetchmail did not fetch the message; its log:\n{}", log.lock().unwrap()));
    wait_for("the MDA to finish", 10, || std::fs::read_to_string(&found).ok().filter(|t| t.contains("body of to fetchmail")));
    let _ = std::io::stdout().flush();
}

/// Send `bytes`, read until the server hangs up (or `secs`).
fn exchange(port: u16, bytes: &[u8], secs: u64) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_clients_meet_bounds_on_the_real_server() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    let (_daemon, port) = daemon(root.path(), &bob, "3600");
    // Nothing before login; then a web page's POST through the browser is
    // closed at its request line, with nothing of its body run.
    let out = exchange(port, b"a SELECT INBOX\r\nb FETCH 1 BODY[]\r\nc LOGOUT\r\n", 10);
    assert!(out.contains("a BAD log in first") && out.contains("b BAD log in first") && !out.contains("Hello Bob"), "{out}");
    let body = "a LOGIN bob@example.net pop-secret\r\nb SELECT INBOX\r\nc STORE 1:* +FLAGS (\\Deleted)\r\nd EXPUNGE\r\n";
    let post = format!("POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let out = exchange(port, post.as_bytes(), 10);
    assert!(out.contains("* BYE this is an IMAP server, not HTTP") && !out.contains("OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS UNSELECT MOVE SPECIAL-USE CHILDREN] logged in"), "{out}");
    assert_eq!(server_files(&bob, "INBOX").len(), 3, "nothing expunged");
    // A literal-size lie: a terabyte APPEND is refused before it is sent
    // (synchronizing), or ends the connection (non-synchronizing).
    let out = exchange(port, b"a LOGIN bob@example.net pop-secret\r\nb APPEND INBOX {1099511627776}\r\n", 3);
    assert!(out.contains("b NO [TOOBIG]") && !out.contains("+ go ahead"), "{out}");
    let out = exchange(port, b"a LOGIN bob@example.net pop-secret\r\nb APPEND INBOX {1099511627776+}\r\nxxxx", 10);
    assert!(out.contains("b NO [TOOBIG]") && out.contains("* BYE"), "{out}");
    // A command line without end, and a password literal larger than any.
    let mut long = b"a LOGIN bob@example.net pop-secret\r\nb NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 1 << 20));
    let out = exchange(port, &long, 10);
    assert!(out.contains("* BAD command line too long") && out.contains("* BYE"), "{out}");
    let out = exchange(port, b"a LOGIN bob@example.net {9999999}\r\n", 3);
    assert!(out.contains("a NO [TOOBIG]"), "{out}");
    // A sequence set as large as it can be, nested sections, deep
    // BODYSTRUCTURE: answered, and the server still serves.
    let out = exchange(
        port,
        b"a LOGIN bob@example.net pop-secret\r\nb EXAMINE INBOX\r\nc FETCH 1:4294967295 (UID)\r\nd UID FETCH 1:4294967295,1:*,5,7:9 (FLAGS)\r\ne FETCH 3 (BODYSTRUCTURE BODY.PEEK[2.2.MIME] BODY.PEEK[2.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1])\r\nf LOGOUT\r\n",
        10,
    );
    assert!(out.contains("c OK") && out.contains("d OK") && out.contains("e OK") && out.contains("BODY[2.2.MIME] {27}\r\nContent-Type: text/html\r\n\r\n"), "{out}");
    // Wrong passwords: throttled across connections, then refused even
    // with the right one for a while (the count POP3 shares).
    let mut answers = String::new();
    for i in 0..4 {
        answers += &exchange(port, format!("a LOGIN bob@example.net wrong{i}\r\nb LOGOUT\r\n").as_bytes(), 40);
    }
    assert!(answers.contains("NO [AUTHENTICATIONFAILED]") && answers.contains("NO [UNAVAILABLE] too many failed logins"), "{answers}");
    let out = exchange(port, b"a LOGIN bob@example.net pop-secret\r\nb LOGOUT\r\n", 10);
    assert!(out.contains("a NO [UNAVAILABLE]"), "right password, during the hold: {out}");
}

#[test]
fn starttls_with_imaplib_and_pipelined_bytes_dropped() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    let (cert, key) = self_signed(root.path());
    bob.edit_config(|t| {
        let mut imap = toml::Table::new();
        imap.insert("tls_cert".into(), cert.display().to_string().into());
        imap.insert("tls_key".into(), key.display().to_string().into());
        table(t, "poll").insert("imap".into(), imap.into());
    });
    let (_daemon, port) = daemon(root.path(), &bob, "3600");
    let script = r#"
import imaplib, ssl, sys
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
assert "STARTTLS" in M.capabilities, M.capabilities
ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
M.starttls(ssl_context=ctx)
assert "STARTTLS" not in M.capabilities, M.capabilities
M.login("bob@example.net", "pop-secret")
print(M.select("INBOX")[1][0].decode())
M.logout()
"#;
    let (good, out) = python(script, &[&port.to_string(), &cert.display().to_string()]);
    assert!(good, "{out}");
    assert_eq!(out.trim(), "3");
    // A command pipelined after STARTTLS, in the clear, is never run
    // inside the TLS session (RFC 9051 §11.1): the handshake fails on it.
    let out = exchange(port, b"a STARTTLS\r\nb LOGIN bob@example.net pop-secret\r\n", 5);
    assert!(out.contains("a OK begin TLS") && !out.contains("b OK"), "{out}");
}

/// neomutt, a terminal client, under tmux: it lists the INBOX over IMAP,
/// opens a message, and deletes one (synced at quit).
#[test]
fn neomutt_reads_and_deletes_over_imap() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    let (_daemon, port) = daemon(root.path(), &bob, "3600");
    let rc = root.path().join("neomuttrc");
    std::fs::write(
        &rc,
        format!(
            "set folder = \"imap://bob%40example.net@127.0.0.1:{port}/\"\nset imap_pass = \"pop-secret\"\nset spoolfile = +INBOX\n\
             set ssl_starttls = no\nset ssl_force_tls = no\nset imap_idle = yes\nset sort = date-sent\nset delete = yes\nset mark_old = no\n\
             set header_cache = \"\"\nset message_cachedir = \"\"\nset quit = yes\nset confirmappend = no\n"
        ),
    )
    .unwrap();
    let session = format!("stubmail-neomutt-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new(require("tmux")).args(args).output().unwrap();
    let started = tmux(&["new-session", "-d", "-s", &session, "-x", "160", "-y", "40", &format!("{} -n -F {} ; sleep 30", require("neomutt").display(), rc.display())]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
        }
    }
    let _kill = Kill(session.clone());
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
    let index = wait_for("neomutt's index", 30, || Some(screen()).filter(|s| s.contains("first") && s.contains("fwd")));
    assert!(index.contains("Gr") && index.contains("mixed"), "the encoded subject is shown: {index}");
    // Open the first message (sorted by date: "first").
    tmux(&["send-keys", "-t", &session, "Enter"]);
    wait_for("the message", 30, || Some(screen()).filter(|s| s.contains("Hello Bob.")));
    // Back to the index, delete it, quit (expunging on the way out).
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_for("the index again", 30, || Some(screen()).filter(|s| s.contains("fwd")));
    tmux(&["send-keys", "-t", &session, "d"]);
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_for("the deletion on the server", 30, || (server_files(&bob, "INBOX").len() == 2).then_some(()));
    let left = server_files(&bob, "INBOX");
    assert!(!left.iter().any(|n| n.starts_with("1700000001.")), "{left:?}");
}

/// POP3 deleting, delivery adding and an IMAP session selected, all at
/// once: the IMAP client is told of both, and nothing is lost or shown
/// twice.
#[test]
fn pop3_delivery_and_imap_at_once() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    let (daemon, port) = daemon(root.path(), &bob, "3600");
    let script = r#"
import imaplib, poplib, sys, os
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
M.login("bob@example.net", "pop-secret")
assert M.select("INBOX")[1][0] == b"3"
uids = M.uid("SEARCH", None, "ALL")[1][0].split()
M.untagged_responses.clear()
# POP3 deletes the message UIDL sorts first; delivery adds one.
p = poplib.POP3("127.0.0.1", int(sys.argv[2]), timeout=30)
p.user("bob@example.net"); p.pass_("pop-secret")
p.dele(1); p.quit()
open(os.path.join(sys.argv[3], "new", "1900000000.late.host"), "w").write("Subject: late\n\nlate\n")
typ, d = M.noop()
print(sorted(x.decode() for x in M.untagged_responses.get("EXPUNGE", [])), sorted(x.decode() for x in M.untagged_responses.get("EXISTS", [])))
print(M.uid("SEARCH", None, "ALL")[1][0].decode())
print(M.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1])
M.logout()
"#;
    let md = bob.home.join("Maildir");
    let (good, out) = python(script, &[&port.to_string(), &daemon.port().to_string(), md.to_str().unwrap()]);
    assert!(good, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "['1'] ['3']", "one EXPUNGE, then 3 EXISTS: {out}");
    assert_eq!(lines[1], "2 3 4", "UIDs kept, the new one numbered next: {out}");
    assert!(lines[2].contains("mixed") && lines[2].contains("fwd") && lines[2].contains("late") && !lines[2].contains("first"), "{out}");
    assert_eq!(server_files(&bob, "INBOX").len(), 3);
}

/// Found by an attack: one FETCH naming a part many times held a copy of
/// it per name. Now an answer goes out item by item.
#[test]
fn repeated_parts_in_one_fetch_cost_one_part_at_a_time() {
    let root = tempfile::tempdir().unwrap();
    let bob = bob_with_fixtures(root.path());
    let big = format!("Subject: big\nContent-Type: text/plain\n\n{}", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(100_000));
    std::fs::write(bob.home.join("Maildir/new/1800000000.big.host"), big).unwrap();
    let (daemon, port) = daemon(root.path(), &bob, "3600");
    let items = vec!["BODY.PEEK[1]"; 32].join(" ");
    let script = format!(
        r#"
import imaplib, sys
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=120)
M.login("bob@example.net", "pop-secret")
M.select("INBOX")
typ, d = M.fetch("4", "({items})")
parts = [x for x in d if isinstance(x, tuple)]
print(len(parts), len(parts[0][1]))
M.logout()
"#
    );
    let (good, out) = python(&script, &[&port.to_string()]);
    assert!(good, "{out}");
    assert!(out.trim() == "32 6500000", "{out}");
    let kib = peak_rss_kib(daemon.pid());
    // 32 copies of the 6.5 MB part were over 400 MiB.
    assert!(kib < 160 * 1024, "http2mbox peak RSS {kib} KiB");
}
