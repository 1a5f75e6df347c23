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
        .args(["--interval", "1", "--pop3-listen", "127.0.0.1:0"]);
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
        list.contains("BLOCKED") && list.contains("`stubmail unblock alice@example.org`"),
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
