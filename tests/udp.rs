//! The UDP side end to end (docs/PROTOCOL.md §8), with the real binaries:
//! notification stubs make delivery immediate; mail still arrives when
//! every datagram, or a share of them, is lost; forged, replayed, guessed
//! and oversized datagrams get no answer, and no answer is ever larger than
//! its request; strangers wait in quarantine until accepted.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use stubmail::protocol::udp::{self, PollEntry};

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Net {
    root: tempfile::TempDir,
    outbox: Outbox,
    alice: User,
    bob: User,
}

/// Alice (with her outbox) and Bob, who know each other. Bob's certificate
/// binds `udp://127.0.0.1:<cert_port>` and his http2mbox listens on
/// `<listen_port>` (the same, unless a lossy relay sits between).
fn net(outbox_args: &[&str], cert_port: u16, listen_port: u16) -> Net {
    net_at(outbox_args, cert_port, listen_port, "127.0.0.1")
}

/// [`net`] with Alice's outbox reached by this host name.
fn net_at(outbox_args: &[&str], cert_port: u16, listen_port: u16, host: &str) -> Net {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start_with(root.path(), "alice-outbox", outbox_args);
    let url = format!("http://{host}:{}/", outbox.server.port());
    let alice = User::init(root.path(), "alice", "alice@example.org", &url);
    let notify = format!("udp://127.0.0.1:{cert_port}");
    let bob = User::init_with(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/", &["--notify", &notify]);
    bob.edit_config(|t| {
        table(t, "notify").insert("listen".into(), format!("127.0.0.1:{listen_port}").into());
    });
    outbox.add_account(&alice);
    alice.import(&bob.export());
    bob.import(&alice.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    had_mail_before(&url, &outbox.data, &bob.fingerprint());
    Net { root, outbox, alice, bob }
}

fn http2mbox_daemon(u: &User, root: &std::path::Path, interval: &str) -> Server {
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&u.home).args(["--interval", interval, "--imap-listen", "127.0.0.1:0"]);
    Server::start("http2mbox-bob", c, root)
}

fn send(port: u16, n: usize) {
    for i in 0..n {
        let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: udp {i}\r\n\r\nbody {i}\r\n");
        assert!(smtplib_send(port, "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    }
}

/// Bob's Maildir holds exactly these subjects, each once.
fn assert_exactly_once(bob: &User, n: usize) {
    let mut subjects: Vec<String> = bob
        .maildir_new()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().find(|l| l.starts_with("Subject:")).unwrap().to_string())
        .collect();
    subjects.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("Subject: udp {i}")).collect();
    want.sort();
    assert_eq!(subjects, want);
}

/// Wait until Bob's first poll handed him a UDP cookie (the daemon is up
/// and has polled once).
fn wait_for_cookie(n: &Net) {
    wait_for("Bob's first signed poll", 60, || {
        std::fs::read_dir(n.outbox.data.join("cookies/current")).ok()?.next().map(|_| ())
    });
}

#[test]
fn a_stub_brings_the_mail_at_once_without_waiting_for_the_poll_interval() {
    let p = free_udp_port();
    let n = net(&[], p, p);
    let _bob = http2mbox_daemon(&n.bob, n.root.path(), "3600");
    wait_for_cookie(&n);
    let smtp = n.alice.smtp2stub(n.root.path());
    let t0 = Instant::now();
    send(smtp.port(), 1);
    // The poll interval is an hour: only the stub can bring it now.
    wait_for("the message in Bob's Maildir", 30, || (n.bob.maildir_new().len() == 1).then_some(()));
    let latency = t0.elapsed();
    println!("SMTP 250 to Bob's Maildir with a stub: {latency:?}");
    assert_exactly_once(&n.bob, 1);
    wait_states(&n.alice, 1, "retrieved");
    // Once retrieved, the outbox stops resending the stub.
    wait_for("the stub queue to empty", 30, || {
        (std::fs::read_dir(n.outbox.data.join("notify")).unwrap().filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.')).count() == 0)
            .then_some(())
    });
}

/// While mail flows, Bob polls again right after a poll that delivered
/// instead of waiting for the next stub: a contact's stubs cause at most
/// one poll per 2 s here (and an outbox spaces the stubs it sends one
/// address), so without that the second message would wait about 2 s.
#[test]
fn mail_that_keeps_coming_does_not_wait_for_spaced_stubs() {
    let p = free_udp_port();
    let n = net(&[], p, p);
    let _bob = http2mbox_daemon(&n.bob, n.root.path(), "3600");
    wait_for_cookie(&n);
    let smtp = n.alice.smtp2stub(n.root.path());
    send(smtp.port(), 1);
    wait_for("the first message in Bob's Maildir", 30, || (n.bob.maildir_new().len() == 1).then_some(()));
    let t0 = Instant::now();
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: udp 1\r\n\r\nbody 1\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_for("the second message in Bob's Maildir", 30, || (n.bob.maildir_new().len() == 2).then_some(()));
    let latency = t0.elapsed();
    println!("second message, sent right after the first arrived: {latency:?}");
    assert!(latency < Duration::from_millis(1500), "it waited for a stub: {latency:?}");
    assert_exactly_once(&n.bob, 2);
}

/// Outbox and Bob behind lossy relays dropping `share` of all datagrams.
fn through_lossy_network(share: f64, messages: usize) -> (LossyUdp, LossyUdp) {
    let (outbox_udp, bob_listen) = (free_udp_port(), free_udp_port());
    let to_outbox = LossyUdp::start(SocketAddr::from(([127, 0, 0, 1], outbox_udp)), share, 7);
    let to_bob = LossyUdp::start(SocketAddr::from(([127, 0, 0, 1], bob_listen)), share, 11);
    let udp_arg = format!("127.0.0.1:{outbox_udp}");
    let adv = to_outbox.port.to_string();
    let n = net(&["--udp", &udp_arg, "--udp-advertise-port", &adv], to_bob.port, bob_listen);
    n.bob.edit_config(|t| {
        table(t, "poll").insert("udp_timeout_ms".into(), 200.into());
    });
    let _bob = http2mbox_daemon(&n.bob, n.root.path(), "1");
    wait_for_cookie(&n);
    let smtp = n.alice.smtp2stub(n.root.path());
    send(smtp.port(), messages);
    wait_for("every message in Bob's Maildir", 120, || (n.bob.maildir_new().len() >= messages).then_some(()));
    wait_states(&n.alice, messages, "retrieved");
    // A few more cycles: nothing arrives twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_exactly_once(&n.bob, messages);
    (to_outbox, to_bob)
}

#[test]
fn mail_arrives_when_every_datagram_is_lost() {
    let (to_outbox, to_bob) = through_lossy_network(1.0, 3);
    let (fw, dropped) = to_outbox.counts();
    assert_eq!(fw, 0);
    assert!(dropped > 0, "UDP polls were tried (and all lost)");
    assert!(to_bob.counts().1 > 0, "stubs were sent (and all lost)");
}

#[test]
fn mail_arrives_when_half_the_datagrams_are_lost() {
    let (to_outbox, to_bob) = through_lossy_network(0.5, 8);
    for (name, (fw, dropped)) in [("polls", to_outbox.counts()), ("stubs", to_bob.counts())] {
        println!("{name}: {fw} forwarded, {dropped} dropped");
    }
    let (fw, dropped) = to_outbox.counts();
    assert!(fw > 0 && dropped > 0);
}

/// Bytes in and out of one exchange with the outbox's UDP service.
struct Probe {
    sock: UdpSocket,
    bytes_in: usize,
    bytes_out: usize,
}

impl Probe {
    fn new(port: u16) -> Probe {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        Probe { sock, bytes_in: 0, bytes_out: 0 }
    }
    /// Send; return the reply, if any (checking it is not larger).
    fn ask(&mut self, d: &[u8]) -> Option<Vec<u8>> {
        self.sock.send(d).unwrap();
        self.bytes_out += d.len();
        let mut buf = [0u8; 65536];
        let n = self.sock.recv(&mut buf).ok()?;
        self.bytes_in += n;
        assert!(n <= d.len(), "a {n}-octet answer to a {}-octet request", d.len());
        Some(buf[..n].to_vec())
    }
}

/// `http2mbox --once` beside a running daemon (same home, same device)
/// says it will not poll over UDP: the outbox then issues no cookie, and
/// the daemon's cookie keeps answering (it used to be retired, and the
/// daemon's next UDP poll waited out its timeout).
#[test]
fn a_poll_that_wants_no_cookie_leaves_the_devices_cookie_working() {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start_with(root.path(), "outbox", &["--udp-rate", "10000", "--udp-burst", "10000"]);
    let me = &outbox_accounts(&outbox, 1)[0];
    let first = signed_poll(&outbox, me, true);
    let port = first.udp_port.expect("a UDP port");
    let (id, key) = first.cookies[0].decode().unwrap();
    let mut p = Probe::new(port);
    let answers = |p: &mut Probe, c: u64| {
        p.ask(&udp::encode_poll(&[PollEntry::new(id, &key, c)]).unwrap())
            .is_some_and(|r| udp::decode_reply(&r).unwrap().iter().any(|e| e.verify(&key, c)))
    };
    assert!(answers(&mut p, 1), "the fresh cookie answers");
    let second = signed_poll(&outbox, me, false);
    assert!(second.cookies.is_empty() && second.udp_port.is_none(), "no cookie for a poll that wants none");
    std::thread::sleep(Duration::from_millis(400));
    assert!(answers(&mut p, 2), "the device's cookie still answers after a poll that wants none");
    let third = signed_poll(&outbox, me, true);
    let (id3, key3) = third.cookies[0].decode().unwrap();
    // The service rescans the cookies when it meets a new one (at most
    // every 100 ms); the new cookie answers, and the old one is retired.
    std::thread::sleep(Duration::from_millis(200));
    assert!(p.ask(&udp::encode_poll(&[PollEntry::new(id3, &key3, 3)]).unwrap()).is_some(), "the new cookie answers");
    assert!(!answers(&mut p, 4), "a poll that wants a cookie replaces the old one, as before");
}

#[test]
fn forged_replayed_guessed_and_oversized_datagrams_get_no_answer_and_no_answer_is_larger() {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start_with(root.path(), "outbox", &["--udp-rate", "10000", "--udp-burst", "10000"]);
    let (cs, port) = udp_cookies(&outbox, 30);
    let advertised: u16 = outbox.server.stdout_after("post_manager udp on ").unwrap().rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(port, advertised);
    let mut p = Probe::new(port);
    let (id, key) = cs[0];
    let mut counter = 1_000;
    let mut next = || {
        counter += 1;
        counter
    };

    let c = next();
    let good = udp::encode_poll(&[PollEntry::new(id, &key, c)]).unwrap();
    let reply = p.ask(&good).expect("a valid poll is answered");
    let r = udp::decode_reply(&reply).unwrap();
    assert!(r.len() == 1 && r[0].verify(&key, c) && r[0].status == udp::PollStatus::Nothing);

    assert_eq!(p.ask(&good), None, "a replayed datagram");
    assert_eq!(p.ask(&udp::encode_poll(&[PollEntry::new(id, &key, c - 1)]).unwrap()), None, "an older counter");
    let mut bad_mac = udp::encode_poll(&[PollEntry::new(id, &key, next())]).unwrap();
    *bad_mac.last_mut().unwrap() ^= 0x80;
    assert_eq!(p.ask(&bad_mac), None, "a forged MAC");
    assert_eq!(p.ask(&udp::encode_poll(&[PollEntry::new(rand::random(), &key, next())]).unwrap()), None, "a guessed cookie id");
    assert_eq!(p.ask(&udp::encode_poll(&[PollEntry::new(id, &rand::random(), next())]).unwrap()), None, "a guessed key");
    assert_eq!(p.ask(&vec![0x41; 1400]), None, "oversized garbage");
    let mut oversized = udp::encode_poll(&[PollEntry::new(id, &key, next())]).unwrap();
    oversized.resize(udp::MAX_DATAGRAM + 100, 0);
    assert_eq!(p.ask(&oversized), None, "a valid entry padded past the size limit");
    assert_eq!(p.ask(b""), None, "empty");
    assert_eq!(p.ask(b"SMP1\x00"), None, "no entries");
    let reflected = udp::encode_reply(&[udp::ReplyEntry::new(id, &key, next(), udp::PollStatus::Mail)]).unwrap();
    assert_eq!(p.ask(&reflected), None, "a reply sent back (no reflection loops)");

    // Thirty cookies in one datagram: one answer, smaller than the request.
    let c = next();
    let all: Vec<_> = cs.iter().map(|(i, k)| PollEntry::new(*i, k, c)).collect();
    let req = udp::encode_poll(&all).unwrap();
    let reply = udp::decode_reply(&p.ask(&req).expect("a batched poll is answered")).unwrap();
    assert_eq!(reply.len(), 30);
    assert!(reply.iter().zip(&cs).all(|(r, (i, k))| &r.cookie == i && r.verify(k, c)));
    // Half of them forged: only the authentic half is answered.
    let c = next();
    let mixed: Vec<_> = cs.iter().enumerate().map(|(n, (i, k))| if n % 2 == 0 { PollEntry::new(*i, k, c) } else { PollEntry::new(*i, &[0u8; 32], c) }).collect();
    let reply = udp::decode_reply(&p.ask(&udp::encode_poll(&mixed).unwrap()).unwrap()).unwrap();
    assert_eq!(reply.len(), 15);

    println!("sent {} octets, received {}", p.bytes_out, p.bytes_in);
    assert!(p.bytes_in < p.bytes_out / 2, "the service gave back {} octets for {}", p.bytes_in, p.bytes_out);
}

#[test]
fn one_source_gets_no_more_answers_than_its_rate_allows() {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start_with(root.path(), "outbox", &["--udp-rate", "0.01", "--udp-burst", "3"]);
    let (cs, port) = udp_cookies(&outbox, 1);
    let (id, key) = cs[0];
    let mut p = Probe::new(port);
    let answered = (1..=10u64).filter(|c| p.ask(&udp::encode_poll(&[PollEntry::new(id, &key, *c)]).unwrap()).is_some()).count();
    assert_eq!(answered, 3);
}

#[test]
fn a_stranger_waits_in_quarantine_until_accepted_and_a_rejected_one_stays_out() {
    let p = free_udp_port();
    let n = net(&[], p, p);
    n.bob.edit_config(|t| {
        table(t, "notify").insert("first_contact".into(), true.into());
    });
    // Carol and Mallory: accounts on the same outbox, strangers to Bob.
    let carol = User::init(n.root.path(), "carol", "carol@example.com", &n.outbox.url());
    let mallory = User::init(n.root.path(), "mallory", "mallory@example.com", &n.outbox.url());
    for u in [&carol, &mallory] {
        n.outbox.add_account(u);
        u.import(&n.bob.export());
        u.edit_config(|t| {
            table(t, "discovery").insert("wkd".into(), false.into());
        });
    }
    let _bob = http2mbox_daemon(&n.bob, n.root.path(), "3600");
    wait_for_cookie(&n);
    let intro_list = || stdout(&ok(n.bob.stubmail().args(["intro", "list"])));
    for (u, from) in [(&carol, "carol@example.com"), (&mallory, "mallory@example.com")] {
        let smtp = u.smtp2stub(n.root.path());
        let msg = format!("From: {from}\r\nTo: bob@example.net\r\nSubject: hello from a stranger\r\n\r\nhi\r\n");
        assert!(smtplib_send(smtp.port(), from, &["bob@example.net"], &msg).unwrap().starts_with("250"));
        let f = u.fingerprint();
        wait_for("the introduction to be held", 30, || intro_list().contains(&f).then_some(()));
        wait_stubs_sent(&n.outbox.data, u, 1);
        wait_states(u, 1, "stored");
    }
    assert!(n.bob.maildir_new().is_empty(), "nothing is fetched from a stranger");

    let out = stdout(&ok(n.bob.stubmail().args(["intro", "accept", &carol.fingerprint()])));
    assert!(out.contains("accepted") && out.contains("fetched 1 message"), "{out}");
    assert_eq!(n.bob.maildir_new().len(), 1);
    wait_states(&carol, 1, "retrieved");
    let keys = stdout(&ok(n.bob.stubmail().args(["keys", "list"])));
    assert!(keys.contains("carol@example.com"), "{keys}");

    ok(n.bob.stubmail().args(["intro", "reject", &mallory.fingerprint()]));
    assert!(!intro_list().contains(&mallory.fingerprint()));
    let smtp = mallory.smtp2stub(n.root.path());
    let msg = "From: mallory@example.com\r\nTo: bob@example.net\r\nSubject: again\r\n\r\nhi\r\n";
    assert!(smtplib_send(smtp.port(), "mallory@example.com", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_stubs_sent(&n.outbox.data, &mallory, 2);
    assert!(!intro_list().contains(&mallory.fingerprint()), "a rejected stranger is not held again");
    assert_eq!(n.bob.maildir_new().len(), 1);
    // Accepting someone who never asked is refused with a clear message.
    let e = fails(n.bob.stubmail().args(["intro", "accept", &mallory.fingerprint()]));
    assert!(e.contains("no introduction"), "{e}");
}

/// A stranger past `notify.max_per_sender`: the stubs over the limit are
/// counted, and `stubmail intro list` shows the stranger OVER LIMIT with
/// the `stubmail block` that stops them (issue #19).
#[test]
fn a_stranger_past_the_quarantine_limit_is_shown_over_limit() {
    let p = free_udp_port();
    let n = net(&[], p, p);
    n.bob.edit_config(|t| {
        let notify = table(t, "notify");
        notify.insert("first_contact".into(), true.into());
        notify.insert("max_per_sender".into(), 1.into());
    });
    let carol = User::init(n.root.path(), "carol", "carol@example.com", &n.outbox.url());
    n.outbox.add_account(&carol);
    carol.import(&n.bob.export());
    carol.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    let _bob = http2mbox_daemon(&n.bob, n.root.path(), "3600");
    wait_for_cookie(&n);
    let smtp = carol.smtp2stub(n.root.path());
    for i in 0..3 {
        let msg = format!("From: carol@example.com\r\nTo: bob@example.net\r\nSubject: buy {i}\r\n\r\nhi\r\n");
        assert!(smtplib_send(smtp.port(), "carol@example.com", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    }
    let f = carol.fingerprint();
    let list = wait_for("the stranger over the limit", 60, || {
        let out = stdout(&ok(n.bob.stubmail().args(["intro", "list"])));
        out.contains("OVER LIMIT: 2 more stub(s) refused").then_some(out)
    });
    assert!(list.contains(&format!("{f}  1 message(s)")) && list.contains(&format!(" block {f}` stops them")), "{list}");
    // The hint runs as printed: the stranger is gone, and stays out.
    ok(n.bob.stubmail().args(["block", &f]));
    assert!(!stdout(&ok(n.bob.stubmail().args(["intro", "list"]))).contains(&f));
    assert!(n.bob.maildir_new().is_empty());
}

/// A report carries the sender's signed stub when one came: the outbox
/// checks it is the sender's word that it announced this message to the
/// complainer (issue #19). This outbox names an abuse desk at its own
/// domain: the desk gets a copy by mail, in ARF form, with the stub, signed
/// by the reporter (GnuPG verifies it with the reporter's certificate).
#[test]
fn a_report_carries_the_senders_signed_stub() {
    let p = free_udp_port();
    let n = net_at(&["--abuse-contact", "desk@localhost"], p, p, "localhost");
    let (_sink, sink_port, dump) = sink(n.root.path(), &[]);
    n.bob.edit_config(|t| {
        let r = table(t, "relay");
        r.insert("host".into(), "127.0.0.1".into());
        r.insert("port".into(), (sink_port as i64).into());
        r.insert("tls".into(), "none".into());
    });
    let _bob = http2mbox_daemon(&n.bob, n.root.path(), "3600");
    wait_for_cookie(&n);
    let smtp = n.alice.smtp2stub(n.root.path());
    send(smtp.port(), 1);
    wait_for("the message via its stub", 60, || (n.bob.maildir_new().len() == 1).then_some(()));
    let text = std::fs::read_to_string(&n.bob.maildir_new()[0]).unwrap();
    let id = text.lines().find_map(|l| l.strip_prefix("Stubmail-Id: ")).unwrap().to_string();
    let out = stdout(&ok(n.bob.stubmail().args(["report", &id])));
    assert!(out.contains("reported") && out.contains("a signed copy went by mail to desk@localhost"), "{out}");
    let log = n.outbox.server.log();
    let line = log.lines().find(|l| l.contains("complaint from a recipient")).expect("the complaint is logged");
    assert!(line.contains("stub=\"verified\""), "{line}");
    let arf: String = wait_for("the desk's copy at the relay", 30, || {
        std::fs::read_dir(&dump).ok()?.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).find(|m| m.contains("feedback-report"))
    });
    for want in ["To: <desk@localhost>", "Feedback-Type: abuse", &format!("Stubmail-Id: {id}"), "Stubmail-Stub: ", "this is the desk's copy"] {
        assert!(arf.contains(want), "{want:?} missing in:\n{arf}");
    }
    assert!(!arf.contains("body 0"), "never the message unless the user adds it:\n{arf}");
    // The signed complaint, checked by GnuPG with Bob's certificate.
    let field = |name: &str| -> String {
        let start = arf.find(&format!("\n{name}: ")).unwrap_or_else(|| panic!("{name} in {arf}")) + name.len() + 3;
        let mut v = String::new();
        for (i, l) in arf[start..].split('\n').enumerate() {
            let l = l.trim_end_matches('\r');
            if i > 0 && !l.starts_with(' ') {
                break;
            }
            v.push_str(l.trim_start());
        }
        v
    };
    let complaint = field("Stubmail-Complaint");
    assert!(complaint.contains(&format!("id={id}")) && complaint.contains(&format!("reporter={}", n.bob.fingerprint())), "{complaint}");
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.decode(field("Stubmail-Complaint-Signature")).unwrap();
    let g = n.root.path().join("gnupg-desk");
    ok(gpg(&g).arg("--import").arg(n.bob.export()));
    std::fs::write(n.root.path().join("complaint"), &complaint).unwrap();
    std::fs::write(n.root.path().join("complaint.sig"), &sig).unwrap();
    ok(gpg(&g).arg("--verify").arg(n.root.path().join("complaint.sig")).arg(n.root.path().join("complaint")));
    std::fs::write(n.root.path().join("complaint"), complaint.replace(&id, &"0".repeat(64))).unwrap();
    fails(gpg(&g).arg("--verify").arg(n.root.path().join("complaint.sig")).arg(n.root.path().join("complaint")));
}

/// One address flooding the notify endpoint: past
/// `notify.stubs_per_source_minute` its datagrams are not read at all,
/// valid stubs included (SECURITY.md row 101). Here the flood and the
/// outbox share 127.0.0.1, so the outbox's real stub is the one refused:
/// the message waits for a later poll instead of coming at once.
#[test]
fn a_flood_from_one_address_uses_up_its_stubs_and_no_more_are_read() {
    let p = free_udp_port();
    let n = net(&[], p, p);
    n.bob.edit_config(|t| {
        table(t, "notify").insert("stubs_per_source_minute".into(), 3.into());
    });
    let _bob = http2mbox_daemon(&n.bob, n.root.path(), "3600");
    wait_for_cookie(&n);
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        flood.send_to(b"SMN1 junk", ("127.0.0.1", p)).unwrap();
    }
    let smtp = n.alice.smtp2stub(n.root.path());
    send(smtp.port(), 1);
    wait_stubs_sent(&n.outbox.data, &n.alice, 1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(n.bob.maildir_new().is_empty(), "the stub past the limit caused no poll");
}
