//! http2mbox against real clients: POP3 with Python's poplib, fetchmail and
//! mpop; mbox delivery; several devices for one identity; a stalling
//! outbox; a broken download resumed with Range.

mod common;

use std::process::Command;

use common::*;

struct Setup {
    root: tempfile::TempDir,
    outbox: Outbox,
    alice: User,
    bob: User,
    smtp: Server,
}

fn setup() -> Setup {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    Setup { root, outbox, alice, bob, smtp }
}

impl Setup {
    /// Alice sends `n` messages to Bob; returns when all are stored.
    fn send(&self, n: usize) {
        for i in 0..n {
            let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: note {i}\r\n\r\nbody {i}\r\n.leading dot\r\nFrom the start\r\n");
            assert!(smtplib_send(self.smtp.port(), "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
        }
        wait_for("the messages to be stored", 60, || {
            let st = self.alice.status_json();
            let a = st.as_array().unwrap();
            (a.len() >= n && a.iter().all(|l| l["state"] != "queued")).then_some(())
        });
    }

    /// Bob's http2mbox daemon with POP3 on a port chosen at run time.
    fn pop3_daemon(&self) -> Server {
        self.bob.edit_config(|t| {
            let poll = table(t, "poll");
            let mut pop3 = toml::Table::new();
            pop3.insert("password".into(), "pop-secret".into());
            poll.insert("pop3".into(), pop3.into());
        });
        let mut c = bin_cmd("http2mbox");
        c.arg("--home").arg(&self.bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
        Server::start("http2mbox-bob", c, self.root.path())
    }
}

const POPLIB: &str = r#"
import poplib, sys, json
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=60)
p.user("bob@example.net"); p.pass_("pop-secret")
count, size = p.stat()
uidls = [l.decode().split()[1] for l in p.uidl()[1]]
msg = b"\n".join(p.retr(1)[1]).decode() if count else ""
if len(sys.argv) > 2 and sys.argv[2] == "delete":
    for i in range(1, count + 1): p.dele(i)
p.quit()
print(json.dumps({"count": count, "size": size, "uidls": uidls, "first": msg}))
"#;

fn poplib(port: u16, delete: bool) -> serde_json::Value {
    let (good, out) = python(POPLIB, &[&port.to_string(), if delete { "delete" } else { "keep" }]);
    assert!(good, "{out}");
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
fn pop3_serves_the_maildir_to_poplib_mpop_and_fetchmail() {
    let s = setup();
    s.send(3);
    let pop = s.pop3_daemon();
    // The login itself polls: the three messages are there at once.
    let r = poplib(pop.port(), false);
    assert_eq!(r["count"], 3, "{r}");
    let first = r["first"].as_str().unwrap();
    assert!(first.contains("Subject: note") && first.contains("\n.leading dot\n") && first.contains("Stubmail-Sender-Fingerprint"), "{first}");
    let uidls = r["uidls"].clone();
    wait_for("the outbox to say retrieved", 30, || {
        let st = s.alice.status_json();
        st.as_array().unwrap().iter().all(|l| l["state"] == "retrieved").then_some(())
    });

    // UIDLs are stable across sessions and restarts.
    drop(pop);
    let pop = s.pop3_daemon();
    assert_eq!(poplib(pop.port(), false)["uidls"], uidls);

    // mpop: USER auth without TLS, into a Maildir of its own, keeping mail.
    let mpop_dir = s.root.path().join("mpop-maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(mpop_dir.join(sub)).unwrap();
    }
    let out = Command::new(require("mpop"))
        .env("HOME", s.root.path())
        .args(["--host=127.0.0.1", &format!("--port={}", pop.port()), "--tls=off", "--auth=user", "--user=bob@example.net"])
        .arg("--passwordeval=echo pop-secret")
        .arg(format!("--delivery=maildir,{}", mpop_dir.display()))
        .arg(format!("--uidls-file={}", s.root.path().join("mpop-uidls").display()))
        .arg("--keep=on")
        .output()
        .unwrap();
    assert!(out.status.success(), "mpop: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(mpop_dir.join("new")).unwrap().count(), 3);

    // fetchmail: fetches, hands each message to an MDA, deletes from the server.
    let got = s.root.path().join("fetchmail-out");
    std::fs::create_dir_all(&got).unwrap();
    let rc = s.root.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "poll 127.0.0.1 protocol pop3 port {} auth password\n  user \"bob@example.net\" password \"pop-secret\"\n  sslproto \"\" mda \"/bin/sh -c 'cat > {}/msg.$$'\"\n",
            pop.port(),
            got.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(require("fetchmail"))
        .env("HOME", s.root.path())
        .arg("--fetchmailrc")
        .arg(&rc)
        .args(["--nodetach", "--nosyslog"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "fetchmail: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(&got).unwrap().count(), 3);
    assert!(s.bob.maildir_new().is_empty() && std::fs::read_dir(s.bob.home.join("Maildir/cur")).unwrap().count() == 0, "fetchmail deleted them");
    // Nothing left: fetchmail says so with exit status 1.
    let out = Command::new(require("fetchmail")).env("HOME", s.root.path()).arg("--fetchmailrc").arg(&rc).args(["--nodetach", "--nosyslog"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mbox_delivery_and_pop3_over_mbox() {
    let s = setup();
    let mbox = s.root.path().join("spool-bob");
    s.bob.edit_config(|t| {
        let poll = table(t, "poll");
        poll.insert("deliver".into(), "mbox".into());
        poll.insert("mbox".into(), mbox.display().to_string().into());
    });
    s.send(2);
    assert!(s.bob.http2mbox_once().contains("delivered 2"));
    let text = std::fs::read_to_string(&mbox).unwrap();
    assert_eq!(text.matches("\nFrom alice@example.org ").count() + text.starts_with("From alice@example.org ") as usize, 2, "{text}");
    assert!(text.contains("\n>From the start\n"), "mboxrd quoting: {text}");
    let pop = s.pop3_daemon();
    let r = poplib(pop.port(), true);
    assert_eq!(r["count"], 2);
    let first = r["first"].as_str().unwrap();
    assert!(first.ends_with("\nFrom the start") && !first.contains(">From"), "unquoted for the client: {r}");
    assert_eq!(std::fs::metadata(&mbox).unwrap().len(), 0, "both deleted at QUIT");
}

#[test]
fn two_devices_each_receive_every_message() {
    let s = setup();
    // Bob's desktop: the same identity and keyring, a separate install.
    let desktop = s.root.path().join("bob-desktop");
    std::fs::create_dir_all(&desktop).unwrap();
    for f in ["secret.pgp", "config.toml"] {
        std::fs::copy(s.bob.home.join(f), desktop.join(f)).unwrap();
    }
    let kr = desktop.join("keyring");
    std::fs::create_dir_all(&kr).unwrap();
    for e in std::fs::read_dir(s.bob.home.join("keyring")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), kr.join(e.file_name())).unwrap();
    }
    let bob2 = User { email: "bob@example.net".into(), home: desktop };
    s.send(2);
    assert!(s.bob.http2mbox_once().contains("delivered 2"));
    assert!(bob2.http2mbox_once().contains("delivered 2"), "the second device gets them too");
    assert!(s.bob.http2mbox_once().contains("delivered 0"));
    assert!(bob2.http2mbox_once().contains("delivered 0"));
    assert_eq!(s.bob.maildir_new().len(), 2);
    assert_eq!(bob2.maildir_new().len(), 2);
}

#[test]
fn a_stalling_outbox_does_not_hold_up_the_others() {
    let s = setup();
    // Carol's "outbox" accepts connections and never answers.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let carol = User::init(s.root.path(), "carol", "carol@example.com", &format!("http://{}/", stall.local_addr().unwrap()));
    s.bob.import(&carol.export());
    s.bob.edit_config(|t| {
        table(t, "poll").insert("timeout_secs".into(), 2i64.into());
    });
    s.send(1);
    let out = s.bob.http2mbox_once();
    // Alice's, Carol's, and Bob's own (mail to himself; not there in these tests).
    assert!(out.contains("polled 3 outbox(es), delivered 1, rejected 0, incomplete 0, unreachable 2"), "{out}");
    drop(stall);
}

#[test]
fn a_fetch_that_fails_is_reported_incomplete_with_a_nonzero_exit() {
    let s = setup();
    s.send(1);
    let id = s.alice.status_json()[0]["id"].as_str().unwrap().to_string();
    // The outbox announces the message but cannot serve it (its file is
    // unreadable: a directory stands in its place).
    let file = s.outbox.data.join("messages").join(&id);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let out = bin_cmd("http2mbox").arg("--home").arg(&s.bob.home).arg("--once").output().unwrap();
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(75), "{text}");
    assert!(text.contains("delivered 0") && text.contains("incomplete 1") && text.contains("next poll"), "{text}");
    // Nothing lost: once the outbox serves it again, it arrives.
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, bytes).unwrap();
    assert!(s.bob.http2mbox_once().contains("delivered 1, rejected 0, incomplete 0"));
}

#[test]
fn a_broken_download_resumes_with_range() {
    let s = setup();
    let big = format!(
        "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <big@example.org>\r\n\r\n{}",
        "resumable line of text, seventy-odd characters long, to make some bytes.\r\n".repeat(40_000)
    );
    assert!(smtplib_send(s.smtp.port(), "alice@example.org", &["bob@example.net"], &big).unwrap().starts_with("250"));
    wait_for("stored", 60, || (s.alice.status_json()[0]["state"] == "stored").then_some(()));
    let id = s.alice.status_json()[0]["id"].as_str().unwrap().to_string();
    // The first half arrived before the connection broke.
    let stored = std::fs::read(s.outbox.data.join("messages").join(&id)).unwrap();
    let staging = s.bob.home.join("state/fetch");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join(format!("{id}.part")), &stored[..stored.len() / 2]).unwrap();
    let out = s.bob.http2mbox_once_with_log();
    assert!(out.contains("delivered 1") && out.contains("resuming a broken download"), "{out}");
    assert!(s.outbox.server.log().contains("status=206"), "the outbox served a range");
    let got = std::fs::read_to_string(&s.bob.maildir_new()[0]).unwrap();
    assert!(got.ends_with(&big[big.find("Subject").unwrap()..].replace("\r\n", "\n")), "intact after resuming");
}

#[test]
fn pop3_stls_with_poplib() {
    let s = setup();
    let (cert, key) = self_signed(s.root.path());
    s.send(1);
    s.bob.edit_config(|t| {
        let mut pop3 = toml::Table::new();
        pop3.insert("password".into(), "pop-secret".into());
        pop3.insert("tls_cert".into(), cert.display().to_string().into());
        pop3.insert("tls_key".into(), key.display().to_string().into());
        table(t, "poll").insert("pop3".into(), pop3.into());
    });
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&s.bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let pop = Server::start("http2mbox-bob", c, s.root.path());
    let script = r#"
import poplib, ssl, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]))
assert "STLS" in p.capa(), p.capa()
ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
p.stls(context=ctx)
assert "STLS" not in p.capa()
p.user("bob@example.net"); p.pass_("pop-secret")
print(p.stat()[0]); p.quit()
"#;
    let (good, out) = python(script, &[&pop.port().to_string(), &cert.display().to_string()]);
    assert!(good, "{out}");
    assert_eq!(out.trim(), "1");
}

#[test]
fn a_large_message_is_fetched_in_bounded_memory() {
    let mut s = setup();
    // One smtp2stub per home: restart it with the larger limit.
    s.smtp.interrupt();
    s.alice.edit_config(|t| {
        table(t, "smtp").insert("max_message_size".into(), (300i64 << 20).into());
    });
    let smtp = s.alice.smtp2stub(s.root.path());
    smtplib_send_big(smtp.port(), 128);
    wait_for("stored", 120, || {
        let st = s.alice.status_json();
        st.as_array().unwrap().iter().any(|l| l["state"] == "stored").then_some(())
    });
    // The daemon polls at POP3 login; measure it and the outbox afterwards.
    let pop = s.pop3_daemon();
    let (good, out) = python("import poplib,sys\np=poplib.POP3('127.0.0.1',int(sys.argv[1]),timeout=600)\np.user('bob@example.net');p.pass_('pop-secret')\nprint(p.stat()[1]);p.quit()", &[&pop.port().to_string()]);
    assert!(good, "{out}");
    assert!(out.trim().parse::<u64>().unwrap() > 128 << 20, "{out}");
    let (poller_kib, outbox_kib) = (peak_rss_kib(pop.pid()), peak_rss_kib(s.outbox.server.pid()));
    println!("peak RSS after a 128 MiB message: http2mbox {poller_kib} KiB, post_manager {outbox_kib} KiB");
    assert!(poller_kib < 64 * 1024, "http2mbox peak RSS {poller_kib} KiB");
    assert!(outbox_kib < 64 * 1024, "post_manager peak RSS {outbox_kib} KiB");
    // Over IMAP too: the whole message (BODY[] and BINARY[]), its text
    // from an offset, and its envelope, streamed from the file (the size is checked octet for
    // octet against RFC822.SIZE).
    let imap = wait_for("IMAP to listen", 30, || pop.stdout_after("http2mbox IMAP listening on"));
    let script = r#"
import imaplib, sys
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=600)
M.login("bob@example.net", "pop-secret")
M.select("INBOX")
typ, d = M.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
size = int(d[0][0].decode().split("RFC822.SIZE ")[1].split()[0])
body = d[0][1]
assert len(body) == size, (len(body), size)
assert body.count(b"\r\n") == body.count(b"\n"), "CRLF throughout"
typ, d = M.fetch("1", "(ENVELOPE BODY.PEEK[TEXT]<1000000.500>)")
assert len(d[0][1]) == 500, len(d[0][1])
assert body.find(d[0][1]) > 0
# BINARY[] of the whole message is streamed as BODY[] is.
typ, d = M.fetch("1", "(BINARY.PEEK[]<0.%d>)" % size)
assert d[0][1] == body, "BINARY[] is the message"
print(size)
M.logout()
"#;
    let (good, out) = python(script, &[imap.rsplit(':').next().unwrap()]);
    assert!(good, "{out}");
    let poller_kib = peak_rss_kib(pop.pid());
    assert!(poller_kib < 64 * 1024, "http2mbox peak RSS {poller_kib} KiB after an IMAP FETCH of the message");
}

#[test]
fn progress_shows_on_a_terminal_and_nowhere_else() {
    let s = setup();
    let big = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n{}", "a line of text to fill a few megabytes of message body......\r\n".repeat(60_000));
    for _ in 0..2 {
        assert!(smtplib_send(s.smtp.port(), "alice@example.org", &["bob@example.net"], &big).unwrap().starts_with("250"));
    }
    wait_for("stored", 60, || {
        let st = s.alice.status_json();
        (st.as_array().unwrap().iter().filter(|l| l["state"] == "stored").count() == 2).then_some(())
    });
    // On a pipe (cron, systemd, this test): no progress output at all.
    let plain = s.bob.http2mbox_once_with_log();
    assert!(plain.contains("delivered 2") && !plain.contains("fetching"), "{plain}");
    // On a terminal (a pseudo-terminal from script(1)): a progress bar.
    let s2 = setup();
    assert!(smtplib_send(s2.smtp.port(), "alice@example.org", &["bob@example.net"], &big).unwrap().starts_with("250"));
    wait_for("stored", 60, || (s2.alice.status_json()[0]["state"] == "stored").then_some(()));
    let cmd = format!("{} --home {} --once", bin("http2mbox").display(), s2.bob.home.display());
    let out = ok(Command::new(require("script")).args(["-qec", &cmd, "/dev/null"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fetching") && text.contains("MiB"), "{text}");
    assert!(text.contains("delivered 1"), "{text}");
}

/// Hostile "outboxes" in one Python process, one port each: `huge` answers
/// a poll with 200 and an endless JSON body, `error` with 500 and an
/// endless error body, `drip` with headers and then one byte a second.
const HOSTILE_OUTBOXES: &str = r#"
import sys, time, threading, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        mode = self.server.mode
        n = int(self.headers.get("Content-Length", "0")); self.rfile.read(n)
        self.send_response(500 if mode == "error" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if mode == "drip":
                for _ in range(120):
                    self.wfile.write(b"1\r\n \r\n"); self.wfile.flush(); time.sleep(1)
            else:
                chunk = b" " * 65536
                line = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
                for _ in range(12288):  # 768 MiB
                    self.wfile.write(line)
        except Exception:
            pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
for mode in sys.argv[1:]:
    s = S(("127.0.0.1", 0), H); s.mode = mode
    print(mode, s.server_address[1], flush=True)
    threading.Thread(target=s.serve_forever, daemon=True).start()
time.sleep(600)
"#;

#[test]
fn hostile_outboxes_cannot_exhaust_memory_or_hold_the_cycle() {
    use std::io::BufRead;
    let s = setup();
    let modes = ["huge", "error", "drip", "drip", "drip", "drip", "drip", "drip", "drip", "drip", "drip", "drip"];
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(HOSTILE_OUTBOXES)
        .args(modes)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for (i, _) in modes.iter().enumerate() {
        let line = lines.next().unwrap().unwrap();
        let port = line.split_whitespace().nth(1).unwrap();
        let c = User::init(s.root.path(), &format!("hostile{i}"), &format!("h{i}@hostile.example"), &format!("http://127.0.0.1:{port}/"));
        s.bob.import(&c.export());
    }
    s.bob.edit_config(|t| {
        table(t, "poll").insert("timeout_secs".into(), 3i64.into());
    });
    s.send(1);
    // http2mbox --once, its peak memory measured by its parent.
    let script = r#"
import resource, subprocess, sys, time
t = time.time()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print("secs", round(time.time() - t, 1), "maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(p.stdout); print(p.stderr[-3000:])
"#;
    let http2mbox = bin("http2mbox");
    let (good, out) = python(script, &[http2mbox.to_str().unwrap(), "--home", s.bob.home.to_str().unwrap(), "--once"]);
    let _ = child.kill();
    assert!(good, "{out}");
    let num = |k: &str| out.split_whitespace().skip_while(|w| *w != k).nth(1).unwrap().parse::<f64>().unwrap();
    // (13: the hostile ones, and Bob's own outbox, which is not there in these tests.)
    assert!(out.contains("delivered 1") && out.contains("unreachable 13"), "Alice's mail arrives; the 12 hostile outboxes fail: {out}");
    assert!(num("maxrss_kib") < 200.0 * 1024.0, "768 MiB answers are not held in memory: {out}");
    // Ten outboxes dripping a byte a second, with a 3 s deadline per request:
    // together they hold the cycle for one deadline, not ten.
    assert!(num("secs") < 12.0, "the cycle is not held by dripping outboxes: {out}");
    assert!(out.contains("larger than"), "the oversized answers are named: {out}");
}

/// The indented code blocks of a section of contrib/mail-clients.md.
fn recipe(section: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/mail-clients.md")).unwrap();
    let body = doc.split("\n## ").find(|s| s.starts_with(section)).unwrap_or_else(|| panic!("no section {section}"));
    let mut blocks: Vec<String> = Vec::new();
    let mut in_block = false;
    for line in body.lines() {
        match line.strip_prefix("    ") {
            Some(code) => {
                if !in_block {
                    blocks.push(String::new());
                }
                in_block = true;
                let b = blocks.last_mut().unwrap();
                b.push_str(code);
                b.push('\n');
            }
            None => in_block = false,
        }
    }
    blocks
}

/// A doc's placeholders made this test's values.
fn ours(text: &str, port: u16) -> String {
    text.replace("1110", &port.to_string()).replace("alice@example.org", "bob@example.net").replace("p9x…", "pop-secret")
}

#[test]
fn the_mail_client_recipes_run_as_written() {
    let s = setup();
    let pop = s.pop3_daemon();
    let path = format!("{}:{}", bin("http2mbox").parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let sh = |home: &std::path::Path, script: &str| {
        let out = Command::new("sh").arg("-c").arg(script).env("HOME", home).env("PATH", &path).env("STUBMAIL_HOME", &s.bob.home).output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let new_in = |home: &std::path::Path| std::fs::read_dir(home.join("Mail/new")).map_or(0, |d| d.count());

    // Two more messages stored (`send` waits for a count it has reached).
    let two_more = |total: usize| {
        s.send(2);
        wait_for("stored", 60, || {
            let st = s.alice.status_json();
            let a = st.as_array().unwrap();
            (a.len() == total && a.iter().all(|l| l["state"] != "queued")).then_some(())
        });
    };
    // mpop, as written: make the Maildir, fetch (and delete) both.
    two_more(2);
    let home = s.root.path().join("mpop-user");
    std::fs::create_dir_all(&home).unwrap();
    let mpop = recipe("mpop");
    assert_eq!(mpop.len(), 1, "{mpop:?}");
    let (code, out) = sh(&home, &ours(&mpop[0], pop.port()));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(new_in(&home), 2, "{out}");

    // fetchmail with procmail, as written.
    two_more(4);
    let home = s.root.path().join("fetchmail-user");
    std::fs::create_dir_all(&home).unwrap();
    let fm = recipe("fetchmail");
    assert_eq!(fm.len(), 1, "{fm:?}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(home.join(".fetchmailrc"), ours(&fm[0], pop.port())).unwrap();
    std::fs::set_permissions(home.join(".fetchmailrc"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out) = sh(&home, "fetchmail --nodetach --nosyslog");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(new_in(&home), 2, "{out}");
    let (code, out) = sh(&home, "fetchmail --nodetach --nosyslog");
    assert_eq!(code, Some(1), "no mail: exit 1, as the recipe says: {out}");

    // "Check now", as written (the daemon stopped: it would poll too).
    drop(pop);
    two_more(6);
    let check = recipe("Check now");
    let (code, out) = sh(s.root.path(), &check[0]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("delivered 2"), "{out}");

    // Without [relay], an ordinary address gets the 550 the page quotes.
    let relay = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/mail-clients.md")).unwrap();
    let quoted = "no Stubmail key for\nthis address and no SMTP relay configured".replace('\n', " ");
    assert!(relay.replace('\n', " ").contains(&quoted));
    let err = smtplib_send(s.smtp.port(), "alice@example.org", &["carol@elsewhere.example"], "Subject: x\r\n\r\nx\r\n").unwrap_err();
    assert!(err.contains("550") && err.contains(&quoted), "{err}");
}
