//! Abuse controls (issue #19) end to end with the real programs, for what
//! only unit tests covered before: every kind of `stubmail block`, a
//! blocked contact's stubs, a block surviving a re-import, the operator's
//! `post_manager account suspend`, the bytes-a-minute upload limit, and
//! the quarantine's `max_senders` and `new_strangers_per_source_hour`.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

/// Alice's outbox's log lines of signed polls by `who`.
fn polls_by(outbox: &Outbox, who: &str) -> usize {
    outbox.server.log().lines().filter(|l| l.contains("target=\"/v1/poll\"") && l.contains(who)).count()
}

/// Alice writes to Bob through her smtp2stub.
fn send(smtp: &Server, subject: &str) {
    send_body(smtp, subject, "body");
}

fn send_body(smtp: &Server, subject: &str, body: &str) {
    let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: {subject}\r\n\r\n{body}\r\n");
    let r = smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], &msg).unwrap();
    assert!(r.starts_with("250"), "{r}");
}

/// The subjects in a user's Maildir, sorted.
fn subjects(u: &User) -> Vec<String> {
    let mut v: Vec<String> = u
        .maildir_new()
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok()?.lines().find_map(|l| l.strip_prefix("Subject: ").map(str::to_string)))
        .collect();
    v.sort();
    v
}

/// Wait until Alice's `n` copies have all left her spool (stored at the
/// outbox, or further).
fn wait_all_uploaded(alice: &User, n: usize) {
    wait_for(&format!("{n} message(s) uploaded"), 60, || {
        let st = states(alice);
        (st.len() == n && !st.iter().any(|s| s == "queued")).then_some(())
    });
}

/// The line of `stubmail keys list` naming `fpr`.
fn keys_line(u: &User, fpr: &str) -> String {
    let list = stdout(&ok(u.stubmail().args(["keys", "list"])));
    list.lines().find(|l| l.contains(fpr)).unwrap_or_else(|| panic!("{fpr} not in keys list:\n{list}")).to_string()
}

fn post_manager_account(outbox: &Outbox, verb: &str, fpr: &str, extra: &[&str]) -> String {
    stdout(&ok(bin_cmd("post_manager").args(["account", verb, "--data"]).arg(&outbox.data).arg(fpr).args(extra)))
}

#[test]
fn a_key_blocked_at_one_outbox_is_not_fetched_there_and_unblock_delivers() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    let (f, bob_fpr) = (alice.fingerprint(), bob.fingerprint());

    // Her key blocked at another outbox: her mail at her own still comes.
    ok(bob.stubmail().args(["block", &f, "--at", "http://127.0.0.1:9/"]));
    send(&smtp, "blocked elsewhere only");
    wait_all_uploaded(&alice, 1);
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["blocked elsewhere only"], "a key blocked at another outbox is still fetched here");
    assert!(!keys_line(&bob, &f).contains("BLOCKED"), "blocked at an outbox that is not hers: {}", keys_line(&bob, &f));

    // Now at her own outbox.
    let url = outbox.url();
    let out = stdout(&ok(bob.stubmail().args(["block", &f, "--at", &url])));
    assert!(out.contains("blocked"), "{out}");
    let line = keys_line(&bob, &f);
    assert!(line.contains("BLOCKED") && line.contains("--at"), "{line}");
    let polls_at_block = polls_by(&outbox, &bob_fpr);
    send(&smtp, "blocked at her outbox");
    wait_all_uploaded(&alice, 2);
    bob.http2mbox_once();
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["blocked elsewhere only"], "nothing fetched from a key blocked at this outbox");
    assert_eq!(polls_by(&outbox, &bob_fpr), polls_at_block, "her outbox is not asked about her");
    assert!(states(&alice).contains(&"stored".to_string()), "the message waits at the outbox: {:?}", states(&alice));

    // Unblocking that entry (the other one stays) delivers it.
    let out = stdout(&ok(bob.stubmail().args(["unblock", &f, "--at", &url])));
    assert!(out.contains("unblocked"), "{out}");
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["blocked at her outbox", "blocked elsewhere only"]);
    wait_states(&alice, 2, "retrieved");
    assert!(stdout(&ok(bob.stubmail().arg("blocks"))).contains("127.0.0.1:9"), "the block elsewhere stays");
}

#[test]
fn a_domain_block_stops_fetches_from_a_contact_in_that_domain_and_unblock_delivers() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    let (f, bob_fpr) = (alice.fingerprint(), bob.fingerprint());

    // A subdomain of hers is not her domain: she is still fetched.
    ok(bob.stubmail().args(["block", "sub.example.org"]));
    send(&smtp, "subdomain blocked");
    wait_all_uploaded(&alice, 1);
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["subdomain blocked"]);

    // Her domain, spelled in capitals.
    let out = stdout(&ok(bob.stubmail().args(["block", "EXAMPLE.org"])));
    assert!(out.contains("domain:example.org: blocked") && out.contains(&f), "the contact is named: {out}");
    assert!(keys_line(&bob, &f).contains("BLOCKED"), "{}", keys_line(&bob, &f));
    let polls_at_block = polls_by(&outbox, &bob_fpr);
    send(&smtp, "domain blocked");
    wait_all_uploaded(&alice, 2);
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["subdomain blocked"], "nothing fetched from a blocked domain");
    assert_eq!(polls_by(&outbox, &bob_fpr), polls_at_block, "her outbox is not asked about her");

    let out = stdout(&ok(bob.stubmail().args(["unblock", "example.org"])));
    assert!(out.contains("unblocked"), "{out}");
    assert!(!keys_line(&bob, &f).contains("BLOCKED"));
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["domain blocked", "subdomain blocked"]);
}

#[test]
fn a_fingerprint_block_leaves_the_message_stored_at_the_senders_outbox_and_marks_the_contact() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    let (f, bob_fpr) = (alice.fingerprint(), bob.fingerprint());
    let out = stdout(&ok(bob.stubmail().args(["block", &f, "--note", "by key"])));
    assert!(out.contains(&format!("sender:{f}: blocked")) && out.contains("stays in your keyring, marked blocked"), "{out}");
    let line = keys_line(&bob, &f);
    assert!(line.contains("BLOCKED") && line.contains(&format!("unblock {f}")), "{line}");
    let blocks = stdout(&ok(bob.stubmail().arg("blocks")));
    assert!(blocks.contains(&format!("block  sender:{f}")) && blocks.contains("(by key)"), "{blocks}");

    let polls_at_block = polls_by(&outbox, &bob_fpr);
    send(&smtp, "to a blocker");
    wait_for("the message to be stored", 60, || (states(&alice) == ["stored"]).then_some(()));
    for _ in 0..2 {
        bob.http2mbox_once();
    }
    assert!(bob.maildir_new().is_empty(), "nothing lands in Bob's Maildir");
    assert_eq!(states(&alice), ["stored"], "the message stays stored, unfetched, at Alice's outbox");
    assert_eq!(polls_by(&outbox, &bob_fpr), polls_at_block, "her outbox is not asked about her");

    ok(bob.stubmail().args(["unblock", &f]));
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["to a blocker"]);
    wait_states(&alice, 1, "retrieved");
}

/// Alice (with her outbox) and Bob, who know each other; Bob's
/// certificate binds `udp://127.0.0.1:<port>`, where his http2mbox hears
/// stubs (as in tests/udp.rs).
struct Net {
    root: tempfile::TempDir,
    outbox: Outbox,
    alice: User,
    bob: User,
    /// Where Bob hears stubs.
    port: u16,
}

fn net(notify: &[(&str, toml::Value)]) -> Net {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start(root.path(), "alice-outbox");
    let alice = User::init(root.path(), "alice", "alice@example.org", &outbox.url());
    let endpoint = format!("udp://127.0.0.1:{port}");
    let bob = User::init_with(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/", &["--notify", &endpoint]);
    bob.edit_config(|t| {
        let n = table(t, "notify");
        n.insert("listen".into(), format!("127.0.0.1:{port}").into());
        for (k, v) in notify {
            n.insert((*k).into(), v.clone());
        }
    });
    outbox.add_account(&alice);
    alice.import(&bob.export());
    bob.import(&alice.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    had_mail_before(&outbox.url(), &outbox.data, &bob.fingerprint());
    Net { root, outbox, alice, bob, port }
}

impl Net {
    /// Bob's daemon, polling every `interval` s, its stub decisions logged.
    fn daemon(&self, interval: &str) -> Server {
        let mut c = bin_cmd("http2mbox");
        c.arg("--home")
            .arg(&self.bob.home)
            .args(["--interval", interval, "--imap-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info,http2mbox::notify=debug");
        let d = Server::start("http2mbox-bob", c, self.root.path());
        wait_for("Bob's first signed poll", 60, || std::fs::read_dir(self.outbox.data.join("cookies/current")).ok()?.next().map(|_| ()));
        d
    }

    /// A stranger to Bob with an account on Alice's outbox, who knows Bob.
    fn stranger(&self, name: &str) -> User {
        let u = User::init(self.root.path(), name, &format!("{name}@example.com"), &self.outbox.url());
        self.outbox.add_account(&u);
        u.import(&self.bob.export());
        u.edit_config(|t| {
            table(t, "discovery").insert("wkd".into(), false.into());
        });
        u
    }

    /// The stranger writes to Bob; returns once the outbox sent the stub.
    fn stranger_writes(&self, u: &User) {
        let smtp = u.smtp2stub(self.root.path());
        let from = u.email.clone();
        let msg = format!("From: {from}\r\nTo: bob@example.net\r\nSubject: hello from {from}\r\n\r\nhi\r\n");
        assert!(smtplib_send(smtp.port(), &from, &["bob@example.net"], &msg).unwrap().starts_with("250"));
        wait_stubs_sent(&self.outbox.data, u, 1);
    }

    fn intro_list(&self) -> String {
        stdout(&ok(self.bob.stubmail().args(["intro", "list"])))
    }

    /// All strangers but the last write and are held, one after the
    /// other; then the last one writes.
    fn hold_then_write(&self, strangers: &[User]) {
        let (last, first) = strangers.split_last().expect("strangers");
        for u in first {
            self.stranger_writes(u);
            let fpr = u.fingerprint();
            wait_for("the introduction to be held", 30, || self.intro_list().contains(&fpr).then_some(()));
        }
        self.stranger_writes(last);
    }
}

/// The introductions `stubmail intro list` shows (lines naming a sender).

fn held(list: &str) -> usize {
    list.lines().filter(|l| l.contains("message(s)") && l.contains("(unverified until accepted)")).count()
}

#[test]
fn a_blocked_contacts_stub_causes_no_fetch_and_after_unblock_the_mail_comes() {
    let n = net(&[]);
    // An hour between polls: only a stub can bring mail during the test.
    let daemon = n.daemon("3600");
    let f = n.alice.fingerprint();
    ok(n.bob.stubmail().args(["block", &f]));
    let smtp = n.alice.smtp2stub(n.root.path());
    send(&smtp, "stub while blocked");
    wait_stubs_sent(&n.outbox.data, &n.alice, 1);
    wait_for("the stub to reach Bob's listener and be dropped", 30, || daemon.log().contains("stub dropped: blocked").then_some(()));
    assert!(!daemon.log().contains("stub: polling now"), "a blocked contact's stub causes no poll:\n{}", daemon.log());
    // The outbox resends unacknowledged stubs: none of them fetches either.
    std::thread::sleep(Duration::from_secs(4));
    assert!(n.bob.maildir_new().is_empty(), "nothing fetched on a blocked contact's stub");
    assert_eq!(states(&n.alice), ["stored"]);

    // Unblocked: the next stub the outbox resends brings the mail, with no
    // poll interval passing.
    ok(n.bob.stubmail().args(["unblock", &f]));
    wait_for("the message after unblock, brought by a stub", 40, || (subjects(&n.bob) == ["stub while blocked"]).then_some(()));
    assert!(daemon.log().contains("stub: polling now"), "{}", daemon.log());
    wait_states(&n.alice, 1, "retrieved");
}

#[test]
fn a_block_survives_a_reimport_of_the_blocked_contacts_certificate() {
    let Pair { root, outbox: _outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    let f = alice.fingerprint();
    ok(bob.stubmail().args(["block", &f]));
    ok(bob.stubmail().args(["block", "alice@example.org"]));
    // Bob imports her certificate again, as one does from a business card.
    let out = stdout(&ok(bob.stubmail().args(["keys", "import"]).arg(alice.export())));
    assert!(out.contains(&f), "{out}");
    let line = keys_line(&bob, &f);
    assert!(line.contains("BLOCKED"), "a re-import does not undo the block: {line}");
    let blocks = stdout(&ok(bob.stubmail().arg("blocks")));
    assert!(blocks.contains(&format!("sender:{f}")) && blocks.contains("address:alice@example.org"), "{blocks}");
    send(&smtp, "after the reimport");
    wait_for("the message to be stored", 60, || (states(&alice) == ["stored"]).then_some(()));
    bob.http2mbox_once();
    assert!(bob.maildir_new().is_empty(), "still blocked after the re-import");
    // Undoing one block of two is not enough; undoing both is.
    ok(bob.stubmail().args(["unblock", &f]));
    bob.http2mbox_once();
    assert!(bob.maildir_new().is_empty(), "the address block still holds");
    ok(bob.stubmail().args(["unblock", "alice@example.org"]));
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["after the reimport"]);
}

#[test]
fn an_account_suspended_by_the_operator_uploads_nothing_while_its_stored_mail_is_still_fetched() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let smtp = alice.smtp2stub(root.path());
    let f = alice.fingerprint();
    send(&smtp, "stored before");
    wait_for("the first message to be stored", 60, || (states(&alice) == ["stored"]).then_some(()));

    let out = post_manager_account(&outbox, "suspend", &f, &["--reason", "spam run seen"]);
    assert!(out.contains(&format!("suspended {f}")), "{out}");
    let show = post_manager_account(&outbox, "show", &f, &[]);
    assert!(show.contains("SUSPENDED since") && show.contains("spam run seen"), "{show}");

    send(&smtp, "sent while suspended");
    wait_for("the refused upload", 60, || outbox.server.log().contains("account_suspended").then_some(()));
    let log = outbox.server.log();
    assert!(log.lines().any(|l| l.contains("status=403") && l.contains("/v1/messages/")), "refused with 403:\n{log}");
    let st = states(&alice);
    assert_eq!(st.iter().filter(|s| *s == "queued").count(), 1, "it waits in the spool, it is not lost: {st:?}");
    let json = alice.status_json();
    let waiting = json.as_array().unwrap().iter().find(|l| l["state"] == "queued").unwrap();
    assert!(waiting["detail"].as_str().unwrap_or("").contains("account_suspended"), "the sender sees why it waits: {waiting}");

    // What she stored before stays fetchable by its recipient.
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["stored before"]);

    let out = post_manager_account(&outbox, "resume", &f, &[]);
    assert!(out.contains(&format!("resumed {f}")), "{out}");
    assert!(post_manager_account(&outbox, "show", &f, &[]).contains("active"));
    wait_for("the waiting message to be uploaded", 40, || (!states(&alice).iter().any(|s| s == "queued")).then_some(()));
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["sent while suspended", "stored before"]);
}

/// Bytes that do not compress: a message's size survives encryption.
fn incompressible(n: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut s = String::with_capacity(n + n / 76 * 2);
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(A[(x % 64) as usize] as char);
        if i % 76 == 75 {
            s.push_str("\r\n");
        }
    }
    s
}

#[test]
fn uploads_past_the_minutes_bytes_wait_in_the_spool_and_go_out_once_allowed() {
    let Pair { root, outbox, alice, bob } = Pair::start(true);
    let f = alice.fingerprint();
    ok(bin_cmd("post_manager").args(["account", "add", "--max-upload-bytes-per-minute", "20000", "--data"]).arg(&outbox.data).arg("--key").arg(alice.export()));
    let show = post_manager_account(&outbox, "show", &f, &[]);
    assert!(show.contains("20000 bytes a minute"), "{show}");
    let smtp = alice.smtp2stub(root.path());
    // The limit is per clock minute: keep the three uploads in one.
    let sec = stubmail::time::unix_now() % 60;
    if sec > 40 {
        std::thread::sleep(Duration::from_secs((61 - sec) as u64));
    }
    send(&smtp, "small 1");
    send(&smtp, "small 2");
    wait_all_uploaded(&alice, 2);
    // Far more than the 20,000 bytes left this minute, far less than a
    // message may be.
    send_body(&smtp, "big", &incompressible(40_000));
    wait_for("the refused upload", 30, || outbox.server.log().contains("status=429").then_some(()));
    let st = states(&alice);
    assert_eq!(st.iter().filter(|s| *s == "stored").count(), 2, "{st:?}");
    assert_eq!(st.iter().filter(|s| *s == "queued").count(), 1, "the big one waits, it is not lost: {st:?}");
    let status = stdout(&ok(alice.stubmail().arg("status")));
    assert!(status.contains("bytes of uploads a minute"), "the sender sees why it waits: {status}");

    // Once uploads are allowed again (the operator raised the limit here,
    // rather than wait out the minute), smtp2stub's retry sends it.
    ok(bin_cmd("post_manager").args(["account", "add", "--max-upload-bytes-per-minute", "100000000", "--data"]).arg(&outbox.data).arg("--key").arg(alice.export()));
    wait_for("the waiting message to be uploaded", 40, || (!states(&alice).iter().any(|s| s == "queued")).then_some(()));
    bob.http2mbox_once();
    assert_eq!(subjects(&bob), ["big", "small 1", "small 2"]);
}

#[test]
fn the_quarantine_holds_at_most_max_senders_strangers() {
    let n = net(&[("first_contact", true.into()), ("max_senders", 2.into()), ("new_strangers_per_source_hour", 100.into())]);
    let daemon = n.daemon("3600");
    let strangers: Vec<User> = ["carol", "dave", "erin"].iter().map(|s| n.stranger(s)).collect();
    n.hold_then_write(&strangers);
    wait_for("the third stranger's stub turned away", 30, || daemon.log().contains("stub from a stranger: the quarantine is full").then_some(()));
    let erin = strangers[2].fingerprint();
    // README: more are turned away and `intro list` says QUARANTINE FULL.
    let list = wait_for("intro list to say QUARANTINE FULL", 30, || {
        let l = n.intro_list();
        l.contains("QUARANTINE FULL").then_some(l)
    });
    assert!(list.contains("(notify.max_senders = 2)"), "{list}");
    assert_eq!(held(&list), 2, "{list}");
    assert!(!list.contains(&erin), "the stranger past max_senders is not held: {list}");
    assert!(n.bob.maildir_new().is_empty(), "nothing is fetched from strangers");
    // A place freed: the turned-away stranger's stub, resent by the
    // outbox, is held now, and no more than max_senders still.
    ok(n.bob.stubmail().args(["intro", "reject", &strangers[0].fingerprint()]));
    wait_for("the turned-away stranger held in the freed place", 40, || n.intro_list().contains(&erin).then_some(()));
    let list = n.intro_list();
    assert_eq!(held(&list), 2, "{list}");
    assert!(!list.contains(&strangers[0].fingerprint()), "{list}");
    assert!(n.bob.maildir_new().is_empty());
}

/// A stranger's signed stub to `to`, sent from the loopback address `src`.
fn stub_from(src: &str, sender: &stubmail::Identity, to: &str, port: u16) {
    use stubmail::protocol::udp::Stub;
    let s = Stub {
        sender: sender.fpr(),
        recipient: stubmail::protocol::Fpr::parse(to).unwrap(),
        id: stubmail::client::sha256_hex(sender.fpr().as_str().as_bytes()),
        size: 10,
        made: stubmail::time::unix_now(),
        outbox: "http://127.0.0.1:9/".into(),
    };
    let sig = sender.sign_detached(&s.signed_part().unwrap()).unwrap();
    let sock = UdpSocket::bind((src, 0)).unwrap();
    sock.send_to(&s.encode(&sig).unwrap(), ("127.0.0.1", port)).unwrap();
}

#[test]
fn one_source_introduces_no_more_than_new_strangers_per_source_hour() {
    let n = net(&[("first_contact", true.into()), ("new_strangers_per_source_hour", 2.into())]);
    let daemon = n.daemon("3600");
    // Every stranger here writes through Alice's outbox: one source.
    let strangers: Vec<User> = ["carol", "dave", "erin"].iter().map(|s| n.stranger(s)).collect();
    n.hold_then_write(&strangers);
    wait_for("the third stranger from that source dropped", 30, || daemon.log().contains("stub dropped: too many strangers from this address").then_some(()));
    // README: past it, SOURCE OVER LIMIT in `intro list`, with the address.
    let list = wait_for("intro list to say SOURCE OVER LIMIT", 30, || {
        let l = n.intro_list();
        l.contains("SOURCE OVER LIMIT").then_some(l)
    });
    let line = list.lines().find(|l| l.contains("SOURCE OVER LIMIT")).unwrap();
    assert!(line.contains("(notify.new_strangers_per_source_hour = 2)") && line.contains("from 127.0.0.1 ("), "{list}");
    assert!(!list.contains("QUARANTINE FULL"), "{list}");
    assert_eq!(held(&list), 2, "{list}");
    assert!(!list.contains(&strangers[2].fingerprint()), "the stranger past the source's limit is not held: {list}");
    // The limit is the source's: a stranger's stub from another address is
    // held (the quarantine is not full).
    stubmail::client::init_tls();
    let gina = stubmail::Identity::generate(None, "gina@example.com", "http://127.0.0.1:9/").unwrap();
    stub_from("127.0.0.2", &gina, &n.bob.fingerprint(), n.port);
    let g = gina.fpr().to_string();
    wait_for("the other source's stranger held", 30, || n.intro_list().contains(&g).then_some(()));
    assert_eq!(held(&n.intro_list()), 3);
    assert!(n.bob.maildir_new().is_empty());
}
