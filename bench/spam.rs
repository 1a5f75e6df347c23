//! A simulated spam run (issue #19): one spammer account at a provider's
//! outbox with the default limits, mail for 10,000 recipients. A few of
//! them are real nodes (http2mbox daemons with notify endpoints, default
//! settings: the spammer is a stranger to them); a few are "dead" (real
//! certificates whose notify endpoints nobody listens on); the rest are
//! fingerprints without a node. What the recipients see is measured on
//! the real nodes and in the outbox's log (every request a recipient
//! makes is signed and logged with its signer); what the spammer sees is
//! what its own account may ask the outbox. The anchor is the same run
//! through Postfix's smtp-sink: what a push server accepts.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use crate::common::*;
use crate::suite::{row, Row, Scale};
use stubmail::client::OutboxClient;
use stubmail::protocol::udp::Stub;
use stubmail::protocol::{Fpr, NotifyRequest, NotifyStub};
use stubmail::Identity;

/// Recipients of one spam message (a spammer saves effort: one ciphertext,
/// many recipients).
const PER_MESSAGE: usize = 100;

/// A recipient's node: its home, its daemon, its certificate.
struct Node {
    user: User,
    _daemon: Server,
    cert: stubmail::openpgp::Cert,
}

/// A real node that has a friend at the provider: it polls the provider
/// (for the friend), so the provider knows it and sends it stubs — the
/// case where a spammer's stubs reach a live node. Its daemon makes signed
/// polls only when something makes it (a stub of a contact, the hourly
/// schedule); between those, one UDP datagram per outbox.
fn node(root: &Path, i: usize, first_contact: bool, friend: &Identity, friend_cert: &Path, outbox: &Outbox) -> Node {
    let p = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let user = User::init_with(root, &format!("r{i}"), &format!("r{i}@example.net"), "http://127.0.0.1:9/", &["--notify", &format!("udp://127.0.0.1:{p}")]);
    user.set_pop3_password("pop-secret");
    user.import(friend_cert);
    if first_contact {
        user.edit_config(|t| {
            table(t, "notify").insert("first_contact".into(), true.into());
        });
    }
    let cert = stubmail::pgp::parse_certs(&std::fs::read(user.export()).unwrap()).unwrap().remove(0);
    // The friend's message, fetched at the daemon's first poll.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = OutboxClient::new(stubmail::client::http_client().unwrap(), &outbox.url(), Arc::new(friend.clone())).unwrap();
    let mut sealed = Vec::new();
    let text = format!("From: friend@example.org\r\nTo: r{i}@example.net\r\nSubject: hello\r\n\r\nhello\r\n");
    stubmail::pgp::sign_encrypt(friend, &[cert.clone()], &mut text.as_bytes(), &mut sealed).unwrap();
    let file = root.join(format!("friend-{i}"));
    std::fs::write(&file, &sealed).unwrap();
    rt.block_on(client.upload(&stubmail::client::sha256_hex(&sealed), &[stubmail::pgp::fpr_of(&cert)], &file)).unwrap();
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&user.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let daemon = Server::start(&format!("http2mbox-{}", user.email), c, root);
    wait_for("the friend's message", 60, || (user.maildir_new().len() == 1).then_some(()));
    Node { user, _daemon: daemon, cert }
}

/// One spam message to `to`, with stubs for those whose certificates the
/// spammer has: returns the recipients taken (0 when refused), the
/// requests made, the bytes stored, and the notify answer's `accepted`
/// beside the number of stubs handed over (None: no stubs).
type Spammed = (usize, usize, u64, Option<(usize, usize)>);
fn spam(rt: &tokio::runtime::Runtime, client: &OutboxClient, me: &Identity, dir: &Path, n: usize, to: &[Fpr], certs: &[&stubmail::openpgp::Cert]) -> Spammed {
    let body: Vec<u8> = (0..4096u32).map(|k| (k as usize * 31 + n) as u8).collect();
    let id = stubmail::client::sha256_hex(&body);
    let file = dir.join(format!("spam-{n}"));
    std::fs::write(&file, &body).unwrap();
    let mut requests = 1;
    let Ok(up) = rt.block_on(client.upload(&id, to, &file)) else { return (0, requests, 0, None) };
    let made = stubmail::time::unix_now();
    let stubs: Vec<NotifyStub> = certs
        .iter()
        .map(|c| {
            let s = Stub { sender: me.fpr(), recipient: stubmail::pgp::fpr_of(c), id: id.clone(), size: up.size, made, outbox: client.base().to_string() };
            let sig = me.sign_detached(&s.signed_part().unwrap()).unwrap();
            NotifyStub { cert: stubmail::pgp::armored(c).unwrap(), stub: base64::engine::general_purpose::STANDARD.encode(s.encode(&sig).unwrap()) }
        })
        .collect();
    let mut notified = None;
    if !stubs.is_empty() {
        requests += 1;
        let handed = stubs.len();
        let a = rt.block_on(client.notify(&id, &NotifyRequest { stubs })).unwrap();
        notified = Some((a.accepted, handed));
    }
    (up.recipients.len(), requests, up.size, notified)
}

pub fn spam_run(s: &Scale) -> Vec<Row> {
    let (n, real_n) = (s.spam_recipients, s.spam_real);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let outbox = Outbox::start(dir, "provider");
    let spammer = Arc::new(Identity::generate(None, "offers@spam.example", &outbox.url()).unwrap());
    let key = dir.join("spammer.asc");
    std::fs::write(&key, stubmail::pgp::armored(&spammer.cert()).unwrap()).unwrap();
    // The provider's defaults: nothing raised for this account.
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&outbox.data).arg("--key").arg(&key));

    let friend = Identity::generate(None, "friend@example.org", &outbox.url()).unwrap();
    let friend_cert = dir.join("friend.asc");
    std::fs::write(&friend_cert, stubmail::pgp::armored(&friend.cert()).unwrap()).unwrap();
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&outbox.data).arg("--key").arg(&friend_cert));
    let real: Vec<Node> = (0..real_n).map(|i| node(dir, i, false, &friend, &friend_cert, &outbox)).collect();
    // From here on, every request a real node makes is counted.
    let log_mark = outbox.server.log().lines().count();
    // Dead addresses: certificates with notify endpoints nobody listens on.
    let dead: Vec<stubmail::openpgp::Cert> = (0..real_n)
        .map(|i| {
            let p = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let id = Identity::generate_with(None, &format!("d{i}@example.net"), "http://127.0.0.1:9/", Some(&format!("udp://127.0.0.1:{p}"))).unwrap();
            id.cert()
        })
        .collect();
    let real_fprs: Vec<Fpr> = real.iter().map(|r| stubmail::pgp::fpr_of(&r.cert)).collect();
    let dead_fprs: Vec<Fpr> = dead.iter().map(stubmail::pgp::fpr_of).collect();
    let mut all: Vec<Fpr> = real_fprs.iter().chain(&dead_fprs).cloned().collect();
    while all.len() < n {
        all.push(Fpr::parse(&hex::encode(rand::random::<[u8; 20]>())).unwrap());
    }

    // The run: messages of up to 100 recipients each, as fast as the
    // spammer's client goes, stubs for every recipient with a certificate.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = OutboxClient::new(stubmail::client::http_client().unwrap(), &outbox.url(), spammer.clone()).unwrap();
    let t = Instant::now();
    let (mut taken, mut requests, mut stored, mut accepted_msgs) = (0, 0, 0u64, Vec::new());
    // The notify answers: `accepted` must count every stub handed over,
    // live recipient or dead, or it tells the spammer which addresses poll.
    let mut notify_answers: Vec<(usize, usize)> = Vec::new();
    for (k, chunk) in all.chunks(PER_MESSAGE).enumerate() {
        let certs: Vec<&stubmail::openpgp::Cert> = real.iter().map(|r| &r.cert).chain(&dead).filter(|c| chunk.contains(&stubmail::pgp::fpr_of(c))).collect();
        let (t_, r_, size, notified) = spam(&rt, &client, &spammer, dir, k, chunk, &certs);
        notify_answers.extend(notified);
        taken += t_;
        requests += r_;
        stored += size;
        if t_ > 0 {
            accepted_msgs.push(k);
        }
    }
    let spam_secs = t.elapsed().as_secs_f64();
    // Several stub rounds: whatever the spam's stubs make the nodes do
    // happens now (a contact's stub causes a poll at once).
    std::thread::sleep(Duration::from_secs(if s.name == "full" { 10 } else { 4 }));
    let log = outbox.server.log();
    let window: Vec<&str> = log.lines().skip(log_mark).collect();
    let by_real = |l: &&&str| l.contains("request ") && real_fprs.iter().any(|f| l.contains(&format!("signer=\"{f}\"")));
    // Requests in that window: the nodes poll hourly, so any is the spam's doing.
    let stub_caused = window.iter().filter(by_real).count();
    let cycle_mark = log.lines().count();
    // Then a whole scheduled poll cycle of every node ("check now" beside
    // its daemon): the polls it makes are for its friend, and none may
    // lead to the spam.
    for r in &real {
        ok(bin_cmd("http2mbox").arg("--home").arg(&r.user.home).arg("--once"));
    }
    // Each real node holds its friend's message, and nothing else.
    let in_inbox: usize = real.iter().map(|r| r.user.maildir_new().len().saturating_sub(1)).sum();
    let log = outbox.server.log();
    let after: Vec<&str> = log.lines().skip(log_mark).collect();
    let cycle: Vec<&str> = log.lines().skip(cycle_mark).collect();
    let scheduled_polls = cycle.iter().filter(by_real).filter(|l| l.contains("/v1/poll")).count();
    // Anything but a poll (a fetch, an ack, a complaint, a certificate
    // lookup) by a real node in the cycle after the run (the run's window
    // is counted whole above).
    let not_polls = cycle.iter().filter(by_real).filter(|l| !l.contains("/v1/poll")).count();
    let fetches = after.iter().filter(by_real).filter(|l| l.contains("method=\"GET\"") && l.contains("/v1/messages/")).count();
    let fetched_bytes = fetches as u64 * 4096;
    let recipient_requests = stub_caused + not_polls;
    let notify_oracle = notify_answers.iter().any(|(accepted, handed)| accepted != handed);
    // The outbox's own view: stubs went to the live nodes.
    let store = post_manager::store::Store::open(&outbox.data).unwrap();
    let live_notified = rt.block_on(client.list()).unwrap().messages.iter().map(|m| {
        real_fprs.iter().filter(|f| store.recipient_state(&m.id, f).ok().flatten() == Some(stubmail::protocol::DeliveryState::Notified)).count()
    }).sum::<usize>();

    // What the spammer can see: its messages' per-recipient states.
    let mut live_states = Vec::new();
    let mut dead_states = Vec::new();
    for m in rt.block_on(client.list()).unwrap().messages {
        for r in m.recipients {
            let st = serde_json::to_string(&r.state).unwrap();
            if real_fprs.contains(&r.fpr) {
                live_states.push(st);
            } else if dead_fprs.contains(&r.fpr) {
                dead_states.push(st);
            }
        }
    }
    live_states.sort();
    live_states.dedup();
    dead_states.sort();
    dead_states.dedup();
    let indistinguishable = live_states == dead_states && !live_states.is_empty() && !notify_answers.is_empty() && !notify_oracle;

    // Anchor: the same deliveries pushed into smtp-sink.
    let (sink, port) = crate::suite::smtp_sink();
    let t = Instant::now();
    ok(Command::new(crate::suite::sbin("smtp-source"))
        .args(["-s", "10", "-m", &n.to_string(), "-l", "4096", "-f", "offers@spam.example", "-t", "victim@example.net"])
        .arg(format!("127.0.0.1:{port}")));
    let sink_secs = t.elapsed().as_secs_f64();
    drop(sink);

    // First contact on: the spam waits in quarantine, nothing is fetched;
    // one block of the outbox and the next wave leaves no trace.
    let fc = node(dir, real_n, true, &friend, &friend_cert, &outbox);
    let fc_fpr = stubmail::pgp::fpr_of(&fc.cert);
    // A second spammer account at the same outbox (the first one has used
    // up its day's recipients).
    let spammer2 = Arc::new(Identity::generate(None, "deals@spam.example", &outbox.url()).unwrap());
    let key2 = dir.join("spammer2.asc");
    std::fs::write(&key2, stubmail::pgp::armored(&spammer2.cert()).unwrap()).unwrap();
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&outbox.data).arg("--key").arg(&key2));
    let client2 = OutboxClient::new(stubmail::client::http_client().unwrap(), &outbox.url(), spammer2.clone()).unwrap();
    let wave = |k: usize| spam(&rt, &client2, &spammer2, dir, 100_000 + k, std::slice::from_ref(&fc_fpr), &[&fc.cert]);
    let (fc_taken, _, _, _) = wave(0);
    let held = || {
        let out = stdout(&ok(fc.user.stubmail().args(["intro", "list"])));
        out.lines().filter(|l| l.contains("message(s)")).map(|l| l.split_whitespace().nth(1).and_then(|x| x.parse::<usize>().ok()).unwrap_or(0)).sum::<usize>()
    };
    let mut held_before = 0;
    if fc_taken > 0 {
        // The outbox spaces stubs per destination address (10, then one per
        // 5 s), and every node here is 127.0.0.1, still being sent the
        // run's stubs again (until retrieved): this one waits its turn.
        held_before = wait_for_value(180, || (held() > 0).then(held));
    }
    ok(fc.user.stubmail().args(["block", &outbox.url()]));
    for k in 1..=3 {
        wave(k);
    }
    std::thread::sleep(Duration::from_secs(3));
    let held_after = held();
    let fc_fetched = outbox.server.log().lines().filter(|l| l.contains(&format!("signer=\"{fc_fpr}\"")) && l.contains("method=\"GET\"") && l.contains("/v1/messages/")).count().saturating_sub(1);
    let fc_inbox = fc.user.maildir_new().len().saturating_sub(1);

    let fc_ok = fc_fetched == 0 && fc_inbox == 0 && held_after == 0 && fc_taken > 0 && held_before > 0;
    vec![
        row(
            &format!("spam run, {n} recipients, default limits: messages in any inbox"),
            format!("{in_inbox} (of {taken} stored for {real_n} real nodes among them)"),
            format!("{n} (smtp-sink accepts every one)"),
            None,
            "0",
            in_inbox == 0,
            format!("{real_n} real http2mbox daemons with notify endpoints and default settings, each with a friend at the same provider (so it polls it, and the spammer's stubs reach it: {live_notified} did); the spammer is a stranger to them"),
        ),
        row(
            "spam run: message bytes fetched and signed requests made by recipients",
            format!("{fetched_bytes} bytes, {recipient_requests} requests"),
            "—".into(),
            None,
            "0 and 0",
            fetched_bytes == 0 && recipient_requests == 0,
            format!(
                "every request a recipient makes is signed and logged by the outbox with its signer: none while the spam's stubs came (they caused no poll), and after a whole poll cycle of every node (`http2mbox --once`: {scheduled_polls} polls, for their friend) no fetch, ack or other request"
            ),
        ),
        row(
            "spam run: can the spammer tell a live address from a dead one?",
            format!(
                "{}: {} live and {} dead recipients, the same states",
                if indistinguishable { "no" } else { "yes" },
                real_fprs.len(),
                dead_fprs.len()
            ),
            "—".into(),
            None,
            "no",
            indistinguishable,
            format!(
                "the spammer's own view (`GET /v1/messages`): live recipients {}, dead ones {}; the notify answers: {} of {} counted every stub handed over; the outbox sent stubs to the live ones only (only they poll it) and keeps that to itself",
                live_states.join("/"),
                dead_states.join("/"),
                notify_answers.iter().filter(|(a, h)| a == h).count(),
                notify_answers.len()
            ),
        ),
        row(
            "spam run: cost to the spammer",
            format!("{taken} of {n} recipients taken, {stored} bytes stored, {requests} signed requests, {spam_secs:.1} s"),
            format!("{n} of {n} delivered, {} bytes sent, nothing stored, {sink_secs:.1} s (smtp-sink)", n * 4096),
            Some(taken as f64 / n as f64),
            "reported",
            true,
            format!(
                "the provider's defaults cap an account at 1,000 distinct recipients a UTC day ({} of {} messages taken); the spammer stores every copy for as long as it waits; ratio: the share of recipients reached",
                accepted_msgs.len(),
                n.div_ceil(PER_MESSAGE)
            ),
        ),
        row(
            "spam run with first contact: held, then one `stubmail block` of the outbox",
            format!("{held_before} stub(s) held, {fc_fetched} fetched; after the block: {held_after} held (the introduction is forgotten), {fc_inbox} in the inbox"),
            "—".into(),
            None,
            "all held, nothing fetched; nothing held after a block",
            fc_ok,
            format!("a node with `notify.first_contact = true`; the first wave {} taken; three more waves after the block", if fc_taken > 0 { "was" } else { "was NOT" }),
        ),
    ]
}

fn wait_for_value<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    wait_for("the quarantine", secs, &mut f)
}
