//! Abuse controls (issue #19) with the real programs: blocks at the
//! receiver, taking effect before the next poll.

mod common;

use std::time::Duration;

use common::*;

/// Alice's outbox's log lines of signed polls by `who`.
fn polls_by(outbox: &Outbox, who: &str) -> usize {
    outbox
        .server
        .log()
        .lines()
        .filter(|l| l.contains("target=\"/v1/poll\"") && l.contains(who))
        .count()
}

fn send(smtp: &Server, subject: &str) {
    let msg = format!(
        "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: {subject}\r\n\r\nbody\r\n"
    );
    assert!(
        smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], &msg)
            .unwrap()
            .starts_with("250")
    );
}

fn subjects(u: &User) -> Vec<String> {
    let mut v: Vec<String> = u
        .maildir_new()
        .iter()
        .filter_map(|p| {
            std::fs::read_to_string(p)
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_block_takes_effect_before_the_next_poll_and_the_contact_stays_marked() {
    let Pair {
        root,
        outbox,
        alice,
        bob,
    } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    let bob_fpr = bob.fingerprint();
    bob.set_pop3_password("pop-secret");
    // Bob's daemon polls every second.
    let mut c = bin_cmd("http2mbox");
    c.arg("--home")
        .arg(&bob.home)
        .args(["--interval", "1", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let _daemon = Server::start("http2mbox-bob", c, root.path());

    send(&smtp, "before the block");
    wait_for("the first message", 60, || {
        (subjects(&bob) == ["before the block"]).then_some(())
    });

    let out = stdout(&ok(bob.stubmail().args([
        "block",
        "alice@example.org",
        "--note",
        "test",
    ])));
    assert!(out.contains("address:alice@example.org: blocked"), "{out}");
    assert!(
        out.contains("stays in your keyring, marked blocked"),
        "the contact is named: {out}"
    );
    let list = stdout(&ok(bob.stubmail().args(["keys", "list"])));
    assert!(
        list.contains("BLOCKED") && list.contains("unblock alice@example.org` undoes it"),
        "{list}"
    );
    let blocks = stdout(&ok(bob.stubmail().args(["blocks"])));
    assert!(
        blocks.contains("block  address:alice@example.org") && blocks.contains("(test)"),
        "{blocks}"
    );
    // A cycle that began before the block may still be running: let it end.
    std::thread::sleep(Duration::from_millis(1500));
    let polls_at_block = polls_by(&outbox, &bob_fpr);

    send(&smtp, "after the block");
    wait_for("the second message to be stored", 60, || {
        let st = states(&alice);
        (st.len() == 2 && !st.iter().any(|s| s == "queued")).then_some(())
    });
    // Several poll intervals: nothing is asked, nothing fetched.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        subjects(&bob),
        ["before the block"],
        "nothing from a blocked sender is delivered"
    );
    assert_eq!(
        polls_by(&outbox, &bob_fpr),
        polls_at_block,
        "a blocked contact's outbox is not polled for them"
    );
    let st: Vec<String> = states(&alice);
    assert!(
        st.contains(&"stored".to_string()) || st.contains(&"notified".to_string()),
        "the second message waits: {st:?}"
    );

    // The printed hint undoes it, and the mail waiting comes.
    ok(bob.stubmail().args(["unblock", "alice@example.org"]));
    wait_for("the held message after unblock", 60, || {
        (subjects(&bob).len() == 2).then_some(())
    });
    assert!(!stdout(&ok(bob.stubmail().args(["keys", "list"]))).contains("BLOCKED"));
}

/// A static web server (Python's http.server) over `dir`.
fn http_server(dir: &std::path::Path, logs: &std::path::Path) -> (Server, u16) {
    let port = free_port();
    let mut c = std::process::Command::new(require("python3"));
    c.args(["-u", "-c", "import http.server,functools,sys\nh=functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\ns=http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), h)\nprint('static listening on 127.0.0.1:%s' % sys.argv[1], flush=True)\ns.serve_forever()"])
        .arg(port.to_string())
        .arg(dir);
    (Server::start("static", c, logs), port)
}

#[test]
fn a_shared_blocklist_applies_signed_by_its_publisher_only_and_an_own_exception_wins() {
    let Pair {
        root,
        outbox,
        alice,
        bob,
    } = Pair::start(true);
    let _ = &outbox;
    let smtp = alice.smtp2stub(root.path());
    // Carol publishes a list naming Alice.
    let carol = User::init(
        root.path(),
        "carol",
        "carol@example.com",
        "http://127.0.0.1:9/",
    );
    let site = root.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    ok(carol.stubmail().args(["block", "alice@example.org"]));
    ok(carol
        .stubmail()
        .args(["blocklist", "publish", "--out"])
        .arg(site.join("bl.json")));
    let carol_cert = carol.export();
    let mallory = User::init(
        root.path(),
        "mallory",
        "mallory@example.com",
        "http://127.0.0.1:9/",
    );
    let (_web, port) = http_server(&site, root.path());
    let url = format!("http://127.0.0.1:{port}/bl.json");

    // The wrong signer: refused, nothing subscribed.
    let err = fails(
        bob.stubmail()
            .args(["blocklist", "subscribe", &url, "--signer"])
            .arg(mallory.export()),
    );
    assert!(err.contains("signature is not by"), "{err}");
    let out = stdout(&ok(bob
        .stubmail()
        .args(["blocklist", "subscribe", &url, "--signer"])
        .arg(&carol_cert)));
    assert!(out.contains("1 entries"), "{out}");

    send(&smtp, "while listed");
    wait_for("the message to be stored", 60, || {
        (states(&alice)
            .iter()
            .any(|s| s == "stored" || s == "notified"))
        .then_some(())
    });
    bob.http2mbox_once();
    assert!(
        subjects(&bob).is_empty(),
        "a shared list's entry is a block"
    );
    let list = stdout(&ok(bob.stubmail().args(["keys", "list"])));
    assert!(
        list.contains("blocked by the shared list") && list.contains(&url),
        "{list}"
    );

    // The list is replaced by a forgery: refused, the copy held stays.
    let good = std::fs::read(site.join("bl.json")).unwrap();
    std::fs::write(
        site.join("bl.json"),
        String::from_utf8(good.clone())
            .unwrap()
            .replace("alice@example.org", "nobody@example.org"),
    )
    .unwrap();
    let o = bob
        .stubmail()
        .args(["blocklist", "refresh"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("not refreshed"));
    bob.http2mbox_once();
    assert!(subjects(&bob).is_empty(), "the copy held stays in force");

    // Bob's own exception wins over the list.
    let out = stdout(&ok(bob.stubmail().args(["unblock", "alice@example.org"])));
    assert!(out.contains("an exception to"), "{out}");
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["while listed"]);
    // Unsubscribing drops the list's entries.
    ok(bob.stubmail().args(["blocklist", "unsubscribe", &url]));
    assert!(!stdout(&ok(bob.stubmail().args(["blocks"]))).contains(&url));
}

/// The message ids in a user's Maildir, by subject.
fn id_of(u: &User, subject: &str) -> String {
    u.maildir_new()
        .iter()
        .chain(std::fs::read_dir(u.home.join("Maildir/.Junk/new")).into_iter().flatten().flatten().map(|e| e.path()).collect::<Vec<_>>().iter())
        .find_map(|p| {
            let t = std::fs::read_to_string(p).ok()?;
            t.contains(&format!("Subject: {subject}")).then(|| t.lines().find_map(|l| l.strip_prefix("Stubmail-Id: ").map(str::to_string)))?
        })
        .unwrap_or_else(|| panic!("no message {subject:?}"))
}

#[test]
fn a_report_reaches_the_outbox_which_suspends_uploads_while_recipients_still_fetch() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let alice_fpr = alice.fingerprint();
    // The operator: one complaint a day suspends Alice's account.
    ok(bin_cmd("post_manager").args(["account", "add", "--max-complaints-per-day", "1", "--data"]).arg(&outbox.data).arg("--key").arg(alice.export()));
    let carol = User::init(root.path(), "carol", "carol@example.com", "http://127.0.0.1:9/");
    carol.import(&alice.export());
    alice.import(&carol.export());
    let smtp = alice.smtp2stub(root.path());
    let to_carol = |subject: &str| {
        let m = format!("From: alice@example.org\r\nTo: carol@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n");
        assert!(smtplib_send(smtp.port(), "alice@example.org", &["carol@example.com"], &m).unwrap().starts_with("250"));
    };
    // Carol has polled Alice's outbox before (it knows her key).
    to_carol("for carol");
    wait_states(&alice, 1, "stored");
    carol.http2mbox_once();
    wait_states(&alice, 1, "retrieved");
    send(&smtp, "spam one");
    to_carol("for carol later");
    wait_for("both stored", 60, || (states(&alice).iter().filter(|s| *s == "stored" || *s == "notified").count() == 2).then_some(()));
    bob.http2mbox_once();
    let id = id_of(&bob, "spam one");

    // Carol, not a recipient of Bob's message, cannot complain about it:
    // the same 404 as for a message that does not exist.
    let carol_id = std::sync::Arc::new(stubmail::Home::single(&carol.home).load_identity().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let req = stubmail::protocol::ComplaintRequest { sender: Some(stubmail::protocol::Fpr::parse(&alice_fpr).unwrap()), ..Default::default() };
    let client = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &outbox.url(), carol_id).unwrap();
    let err = rt.block_on(client.complain(&id, &req)).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert!(!outbox.server.log().contains("complaint from a recipient"));

    // Bob reports it by a prefix of its id: the outbox records it and, at
    // its limit, suspends Alice; Bob blocks her.
    let out = stdout(&ok(bob.stubmail().args(["report", &id[..12], "--reason", "unsolicited"])));
    assert!(out.contains(&format!("reported {id}")) && out.contains("now blocked"), "{out}");
    let log = outbox.server.log();
    assert!(log.contains("complaint from a recipient") && log.contains("unsolicited") && log.contains("account suspended"), "{log}");
    let show = stdout(&ok(bin_cmd("post_manager").args(["account", "show", "--data"]).arg(&outbox.data).arg(&alice_fpr)));
    // Into a pipe its reader closed (`| head`): it ends on SIGPIPE, as Unix
    // tools do, not with a panic.
    let mut child = bin_cmd("post_manager")
        .args(["account", "show", "--data"])
        .arg(&outbox.data)
        .arg(&alice_fpr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(show.contains("SUSPENDED") && show.contains("complaints: 1 recipient(s) today") && show.contains(&id), "{show}");
    assert!(stdout(&ok(bob.stubmail().args(["blocks"]))).contains(&format!("sender:{alice_fpr}")));
    // A second report of the same message is not counted again.
    let again = stdout(&ok(bob.stubmail().args(["report", &id])));
    assert!(again.contains("not counted again") && again.contains("already blocked"), "{again}");

    // Nor can she point her contacts at another outbox meanwhile.
    let alice_id = std::sync::Arc::new(stubmail::Home::single(&alice.home).load_identity().unwrap());
    let as_alice = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &outbox.url(), alice_id.clone()).unwrap();
    let err = rt.block_on(as_alice.update_account_cert(&alice_id.cert())).unwrap_err();
    assert!(err.to_string().contains("account_suspended"), "{err}");
    // Alice's next message is accepted by her smtp2stub and waits in its
    // spool: the outbox refuses the upload while she is suspended.
    send(&smtp, "while suspended");
    wait_for("the refused upload", 60, || outbox.server.log().contains("account_suspended").then_some(()));
    assert_eq!(states(&alice).iter().filter(|s| *s == "queued").count(), 1, "it waits, it is not lost");
    // What was stored before stays fetchable by its recipients.
    carol.http2mbox_once();
    assert_eq!(subjects(&carol), ["for carol", "for carol later"]);

    // The operator resumes the account: the waiting message goes out.
    let out = stdout(&ok(bin_cmd("post_manager").args(["account", "resume", "--data"]).arg(&outbox.data).arg(&alice_fpr)));
    assert!(out.contains("resumed"), "{out}");
    wait_for("the waiting message to be stored", 90, || (!states(&alice).iter().any(|s| s == "queued")).then_some(()));
}

#[test]
fn a_message_moved_to_junk_is_reported_and_its_sender_blocked() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    bob.set_pop3_password("pop-secret");
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&bob.home).args(["--interval", "1", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let _daemon = Server::start("http2mbox-bob", c, root.path());
    send(&smtp, "junk me");
    wait_for("the message", 60, || (subjects(&bob) == ["junk me"]).then_some(()));
    let id = id_of(&bob, "junk me");
    // A mail client moves it to Junk (Maildir++), marking it seen.
    let from = bob.maildir_new().pop().unwrap();
    let junk = bob.home.join("Maildir/.Junk");
    for d in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(junk.join(d)).unwrap();
    }
    // Found by an attack: files http2mbox did not deliver named whom to
    // report and block (ordinary mail in the same Maildir, a copy), and a
    // FIFO there hung the watch. Neither does anything now.
    let someone = "C".repeat(40);
    std::fs::write(junk.join("new/1.forged.host"), format!("Stubmail-Sender-Fingerprint: {someone}\r\nStubmail-Id: {id}\r\n\r\nspam\r\n")).unwrap();
    let fifo = std::ffi::CString::new(junk.join("new/2.fifo.host").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::rename(&from, junk.join("cur").join(format!("{}:2,S", from.file_name().unwrap().to_string_lossy()))).unwrap();
    wait_for("the report", 30, || outbox.server.log().contains("complaint from a recipient").then_some(()));
    assert!(outbox.server.log().contains(&id));
    wait_for("the block", 10, || stdout(&ok(bob.stubmail().args(["blocks"]))).contains("reported as spam").then_some(()));
    // Once only, however long it stays in Junk; the forgery named no one.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(outbox.server.log().matches("complaint from a recipient").count(), 1);
    assert!(!stdout(&ok(bob.stubmail().arg("blocks"))).contains(&someone));
    // The daemon still serves its mailbox.
    let (ok_, out) = python("import poplib,sys\np=poplib.POP3('127.0.0.1',int(sys.argv[1]),timeout=10)\np.user('bob@example.net');p.pass_('pop-secret');print(p.stat()[0]);p.quit()", &[&_daemon.port().to_string()]);
    assert!(ok_, "POP3 answers beside a FIFO in Junk: {out}");
}

/// The same through IMAP: a mail client's "this is spam" is a MOVE into
/// the Junk folder (RFC 6154 `\Junk`), and the report follows.
#[test]
fn a_message_moved_to_junk_over_imap_is_reported() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    bob.set_pop3_password("pop-secret");
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&bob.home).args(["--interval", "1", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let daemon = Server::start("http2mbox-bob", c, root.path());
    let imap = wait_for("IMAP to listen", 30, || daemon.stdout_after("http2mbox IMAP listening on"));
    send(&smtp, "junk me over imap");
    wait_for("the message", 60, || (subjects(&bob) == ["junk me over imap"]).then_some(()));
    let id = id_of(&bob, "junk me over imap");
    let script = r#"
import imaplib, sys
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
M.login("bob@example.net", "pop-secret")
junk = [l.decode() for l in M.list()[1] if b"\\Junk" in l]
assert junk and junk[0].endswith(" Junk"), junk
M.select("INBOX")
typ, d = M.uid("MOVE", "1", "Junk")
assert typ == "OK", (typ, d)
print(M.select("Junk")[1][0].decode())
M.logout()
"#;
    let (good, out) = python(script, &[imap.rsplit(':').next().unwrap()]);
    assert!(good && out.trim().ends_with('1'), "{out}");
    wait_for("the report", 30, || outbox.server.log().contains("complaint from a recipient").then_some(()));
    assert!(outbox.server.log().contains(&id));
    wait_for("the block", 10, || stdout(&ok(bob.stubmail().args(["blocks"]))).contains("reported as spam").then_some(()));
}

/// Found by an attack from the docs: a damaged `blocks.json` let a freshly
/// started http2mbox (`--once`, a restarted daemon) deliver from blocked
/// senders. Now nothing is polled until the file is fixed, and `stubmail
/// doctor` names it.
#[test]
fn a_damaged_blocklist_stops_polling_rather_than_unblocking_everyone() {
    let Pair { root, outbox: _outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    ok(bob.stubmail().args(["block", "alice@example.org"]));
    send(&smtp, "blocked");
    wait_for("the message to be stored", 60, || (states(&alice) == ["stored"]).then_some(()));
    let file = bob.home.join("blocks.json");
    let good = std::fs::read(&file).unwrap();
    for damaged in [&good[..50], b"", br#"{"blocks":[{"target":"outbox:a_b.example","added":1}]}"#] {
        std::fs::write(&file, damaged).unwrap();
        let err = fails(bin_cmd("http2mbox").arg("--home").arg(&bob.home).arg("--once"));
        assert!(err.contains("blocks.json is damaged") && err.contains("nothing is polled"), "{err}");
        assert!(subjects(&bob).is_empty(), "nothing delivered from a blocked sender");
        let doctor = bob.stubmail().arg("doctor").output().unwrap();
        assert!(!doctor.status.success() && String::from_utf8_lossy(&doctor.stdout).contains("blocks.json"));
    }
    std::fs::write(&file, &good).unwrap();
    bob.http2mbox_once();
    assert!(subjects(&bob).is_empty(), "still blocked once the file is good again");
    ok(bob.stubmail().args(["unblock", "alice@example.org"]));
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["blocked"]);
}

/// Found by the same attack: `stubmail block` of an outbox URL with a host
/// the stored form refused wrote a damaged file. Now such input is
/// refused before anything is written, and every spelling of one host
/// and port blocks the same outbox.
#[test]
fn block_refuses_what_it_cannot_store_and_matches_every_spelling_of_an_outbox() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let port = outbox.url().rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    for bad in ["https://outbox_1.spam.example/", "http://[fe80::1%25eth0]/", "http://*.example/"] {
        let err = fails(bob.stubmail().args(["block", bad]));
        assert!(err.contains("not an outbox URL"), "{bad}: {err}");
    }
    assert!(!bob.home.join("blocks.json").exists() || stdout(&ok(bob.stubmail().arg("blocks"))).contains("nothing blocked"));
    // Alice's outbox is 127.0.0.1:PORT; block it spelled otherwise.
    ok(bob.stubmail().args(["block", &format!("http://0x7f.0.0.1:0{port}/")]));
    let list = stdout(&ok(bob.stubmail().args(["keys", "list"])));
    assert!(list.contains("BLOCKED") && list.contains(&format!("outbox:127.0.0.1:{port}")), "{list}");
    let smtp = alice.smtp2stub(root.path());
    send(&smtp, "blocked outbox");
    wait_for("the message to be stored", 60, || (states(&alice) == ["stored"]).then_some(()));
    bob.http2mbox_once();
    assert!(subjects(&bob).is_empty());
}

/// An outbox without the complaint endpoint (an older one, another
/// program): the report goes by mail in ARF form (RFC 5965) to abuse@ its
/// host through the user's relay, with the message's id and sender only.
#[test]
fn a_report_to_an_outbox_without_the_endpoint_goes_by_mail_as_arf() {
    let Pair { root, outbox: _outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: cheap pills\r\n\r\nthe secret body\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_for("the message to be stored", 60, || (states(&alice) == ["stored"]).then_some(()));
    bob.http2mbox_once();
    let id = id_of(&bob, "cheap pills");
    // The outbox now answers as one without the endpoint would.
    let old = root.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let port = free_port();
    let mut c = std::process::Command::new(require("python3"));
    c.args(["-u", "-c", r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get('Content-Length') or 0)
        self.rfile.read(n)
        b = b'{"error":"not_found","message":"no such endpoint; see docs/PROTOCOL.md"}'
        self.send_response(404); self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)
    do_GET = do_POST = answer
s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H)
print('old outbox listening on 127.0.0.1:%s' % sys.argv[1], flush=True)
s.serve_forever()
"#, &port.to_string()]);
    let _old = Server::start("old-outbox", c, root.path());
    let alice_fpr = alice.fingerprint();
    bob.edit_config(|t| {
        let mut o = toml::Table::new();
        o.insert(alice_fpr.clone(), format!("http://localhost:{port}/").into());
        table(t, "poll").insert("outboxes".into(), o.into());
    });
    // Without a relay: a clear error, and the sender is blocked anyway.
    let err = fails(bob.stubmail().args(["report", &id]));
    assert!(err.contains("no [relay]") && err.contains("abuse@localhost"), "{err}");
    assert!(stdout(&ok(bob.stubmail().arg("blocks"))).contains(&alice_fpr));
    let (_sink, sink_port, dump) = sink(root.path(), &[]);
    bob.edit_config(|t| {
        let r = table(t, "relay");
        r.insert("host".into(), "127.0.0.1".into());
        r.insert("port".into(), (sink_port as i64).into());
        r.insert("tls".into(), "none".into());
    });
    let out = stdout(&ok(bob.stubmail().args(["report", &id, "--reason", "pills"])));
    assert!(out.contains("by mail to abuse@localhost"), "{out}");
    let mails: Vec<String> = wait_for("the report at the relay", 30, || {
        let v: Vec<String> = std::fs::read_dir(&dump).ok()?.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect();
        (!v.is_empty()).then_some(v)
    });
    let arf = &mails[0];
    for want in ["report-type=feedback-report", "Content-Type: message/feedback-report", "Feedback-Type: abuse", "Version: 1", "User-Agent: stubmail/", &format!("Stubmail-Id: {id}"), "Reason given: pills"] {
        assert!(arf.contains(want), "{want:?} missing in:\n{arf}");
    }
    assert!(!arf.contains("the secret body") && !arf.contains("cheap pills"), "never the message unless the user adds it:\n{arf}");
    // A real MIME parser reads it as RFC 5965 lays it out.
    let f = root.path().join("arf.eml");
    std::fs::write(&f, arf).unwrap();
    let (ok_, parts) = python(
        "import email,sys\nm=email.message_from_binary_file(open(sys.argv[1],'rb'))\nprint(m.get_content_type(), m.get_param('report-type'), *[p.get_content_type() for p in m.get_payload()])",
        &[f.to_str().unwrap()],
    );
    assert!(ok_, "{parts}");
    assert_eq!(parts.trim(), "multipart/report feedback-report text/plain message/feedback-report text/rfc822-headers");
    // With --include-message, the whole message goes along.
    ok(bob.stubmail().args(["report", &id, "--include-message"]));
    wait_for("the second report", 30, || {
        std::fs::read_dir(&dump).ok()?.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).any(|m| m.contains("the secret body") && m.contains("message/rfc822")).then_some(())
    });
}

/// Uploads past the account's per-minute limit wait in the sender's
/// spool (the outbox answers 429), they are not lost or refused for good.
#[test]
fn uploads_past_the_minutes_limit_wait_in_the_spool() {
    let Pair { root, outbox, alice, bob: _bob } = Pair::start(true);
    ok(bin_cmd("post_manager").args(["account", "add", "--max-uploads-per-minute", "2", "--data"]).arg(&outbox.data).arg("--key").arg(alice.export()));
    let smtp = alice.smtp2stub(root.path());
    for i in 0..3 {
        send(&smtp, &format!("burst {i}"));
    }
    wait_for("two stored and one waiting", 60, || {
        let st = states(&alice);
        (st.iter().filter(|s| *s == "stored").count() == 2 && st.iter().filter(|s| *s == "queued").count() == 1).then_some(())
    });
    assert!(outbox.server.log().contains("status=429"), "the outbox refused it for now");
    let status = stdout(&ok(alice.stubmail().arg("status")));
    assert!(status.contains("uploads a minute"), "the sender sees why it waits: {status}");
}

/// The daemon refreshes a subscribed list when it is due: the publisher's
/// new entry applies without the user doing anything.
#[test]
fn the_daemon_refreshes_a_shared_list_when_it_is_due() {
    let root = tempfile::tempdir().unwrap();
    let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    bob.set_pop3_password("pop-secret");
    let carol = User::init(root.path(), "carol", "carol@example.com", "http://127.0.0.1:9/");
    let site = root.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    ok(carol.stubmail().args(["block", "one.example"]));
    ok(carol.stubmail().args(["blocklist", "publish", "--out"]).arg(site.join("bl.json")));
    let (_web, port) = http_server(&site, root.path());
    let url = format!("http://127.0.0.1:{port}/bl.json");
    ok(bob.stubmail().args(["blocklist", "subscribe", &url, "--signer"]).arg(carol.export()).args(["--every", "1"]));
    // Carol adds an entry and publishes again (a second later: never older).
    std::thread::sleep(Duration::from_millis(1100));
    ok(carol.stubmail().args(["block", "two.example"]));
    ok(carol.stubmail().args(["blocklist", "publish", "--out"]).arg(site.join("bl.json")));
    // Bob's copy is an hour old.
    let file = bob.home.join("blocks.json");
    let mut b: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    b["subscriptions"][0]["fetched"] = (stubmail::time::unix_now() - 3601).into();
    b["subscriptions"][0]["tried"] = (stubmail::time::unix_now() - 3601).into();
    std::fs::write(&file, serde_json::to_vec(&b).unwrap()).unwrap();
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let _daemon = Server::start("http2mbox-bob", c, root.path());
    wait_for("the refreshed list", 30, || {
        let j: serde_json::Value = serde_json::from_slice(&ok(bob.stubmail().args(["blocks", "--json"])).stdout).ok()?;
        (j["subscriptions"][0]["entries"] == 2).then_some(())
    });
}
