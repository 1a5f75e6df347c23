//! A post to a list of 10,000 members (issue #18), beside the same list
//! with 100: the list's post goes through smtp2stub's worker as the robot
//! queues it (one ciphertext for every member, uploaded again for each
//! further thousand), into a real post_manager; every member then makes a
//! real signed poll, fetch and ack. Members are simulated cheaply: keys
//! generated in this process, no node of their own. The anchor is the same
//! deliveries as one SMTP message each into Postfix's smtp-sink, what a
//! push list server sends.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use crate::common::*;
use crate::suite::{row, Row, Scale};
use super::sbin;
use futures_util::StreamExt;
use stubmail::client::OutboxClient;
use stubmail::protocol::PollRequest;
use stubmail::spool::{Data, Envelope, Rcpt, Route, Spool};
use stubmail::Identity;

/// Members polling, fetching and acking at once.
const AT_ONCE: usize = 16;

struct Case {
    /// Bytes the post added to the outbox's data directory (file contents
    /// and directory entries, `du --apparent-size`), and the post's size.
    stored: u64,
    post: u64,
    /// Median time of a member's ack, and of a fetch.
    ack_s: f64,
    fetch_s: f64,
    /// From queueing the post to the last member's ack.
    all_s: f64,
}

fn apparent_bytes(dir: &Path) -> u64 {
    let out = stdout(&ok(Command::new("du").args(["-s", "-b", "--apparent-size"]).arg(dir)));
    out.split_whitespace().next().unwrap().parse().unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn case(rt: &tokio::runtime::Runtime, root: &Path, n: usize) -> Case {
    let dir = root.join(format!("list-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let outbox = Outbox::start(&dir, "outbox");
    let list = Arc::new(Identity::generate_list(Some("Bench"), "bench@example.org", &outbox.url(), None).unwrap());
    let key = dir.join("list.asc");
    std::fs::write(&key, stubmail::pgp::armored(&list.cert()).unwrap()).unwrap();
    let cap = (n + 10).to_string();
    ok(bin_cmd("post_manager")
        .args(["account", "add", "--data"])
        .arg(&outbox.data)
        .arg("--key")
        .arg(&key)
        .args(["--max-recipients-per-message", &cap, "--max-recipients-per-day", &cap]));
    // The members: keys made here, in the list's keyring as files (the
    // keyring's import fsyncs each; a list grows one member at a time).
    let members: Vec<Arc<Identity>> = (0..n)
        .map(|i| Arc::new(Identity::generate(None, &format!("m{i}@example.net"), "http://127.0.0.1:9/").unwrap()))
        .collect();
    let keyring_dir = dir.join("keyring");
    std::fs::create_dir_all(&keyring_dir).unwrap();
    for m in &members {
        std::fs::write(keyring_dir.join(format!("{}.pgp", m.fpr())), stubmail::pgp::binary(&m.cert()).unwrap()).unwrap();
    }
    let spool = Spool::open(&dir.join("spool")).unwrap();
    let worker = smtp2stub::worker::Worker {
        spool: spool.clone(),
        keyring: stubmail::keyring::Keyring::new(keyring_dir),
        me: list.clone(),
        outbox: OutboxClient::new(stubmail::client::http_client().unwrap(), &outbox.url(), list.clone()).unwrap(),
        relay: None,
        notices: None,
        unstored: Default::default(),
        stubs: Default::default(),
        others: None,
    };
    // A 4 KB post as the robot publishes it: the list's fields, then the
    // author's message.
    let addrs = stubmail::list::Addresses::of("bench@example.org").unwrap();
    let mut post = addrs.post_fields(Some("Bench"), &members[0].fpr(), &[0x88; 119]);
    post.extend_from_slice(b"From: m0@example.net\r\nTo: bench@example.org\r\nSubject: a post\r\nMessage-ID: <p@example.net>\r\n\r\n");
    while post.len() < 4096 {
        post.extend_from_slice(b"The quick brown fox jumps over the lazy dog. 0123456789\r\n");
    }
    let url = outbox.url();
    let list_fpr = list.fpr();
    // One connection pool for every simulated member (as many connections
    // as members at once): the outbox caps connections per client address.
    let http = stubmail::client::http_client().unwrap();
    let clients: Vec<OutboxClient> = members.iter().map(|m| OutboxClient::new(http.clone(), &url, m.clone()).unwrap()).collect();
    let poll_req = |m: &Identity| PollRequest { senders: Some(vec![list_fpr.clone()]), certs: vec![stubmail::pgp::armored(&m.cert()).unwrap()], device: None, udp: false };
    let publish = |qid: &str| {
        let env = Envelope {
            qid: qid.into(),
            from: addrs.post.clone(),
            rcpts: members.iter().enumerate().map(|(i, m)| Rcpt { addr: format!("m{i}@example.net"), route: Route::Stub { fpr: m.fpr() } }).collect(),
            received: stubmail::time::unix_now(),
            helo: "list".into(),
            peer: "bench".into(),
            jobs: vec![],
            subject: None,
            list: true,
        };
        rt.block_on(async {
            spool.commit(&env, Data::Memory(post.clone())).await.unwrap();
            worker.pass(true).await.unwrap();
        });
        assert!(spool.queued().unwrap().is_empty(), "the post was uploaded");
    };
    // Every member polls and fetches (AT_ONCE at a time): the time until
    // all of them have the post.
    let everyone_fetches = || -> String {
        rt.block_on(async {
            let ids: Vec<String> = futures_util::stream::iter(members.iter().zip(&clients))
                .map(|(m, c)| {
                    let req = poll_req(m);
                    async move {
                        let item = c.poll(&req).await.unwrap().messages.pop().unwrap();
                        let body = c.fetch(&item.id, 0, item.size).await.unwrap().bytes().await.unwrap();
                        assert_eq!(body.len() as u64, item.size);
                        item.id
                    }
                })
                .buffer_unordered(AT_ONCE)
                .collect()
                .await;
            ids[0].clone()
        })
    };
    let everyone_acks = |id: &str| -> Vec<f64> {
        clients
            .iter()
            .map(|c| {
                let t = Instant::now();
                rt.block_on(c.ack(id, None)).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect()
    };
    // A first post: members' first polls leave their certificates and
    // inboxes at the outbox, once. The second is the one measured.
    publish("lbench1");
    let first = everyone_fetches();
    everyone_acks(&first);
    let before = apparent_bytes(&outbox.data);
    let start = Instant::now();
    publish("lbench2");
    let stored = apparent_bytes(&outbox.data) - before;
    let id = everyone_fetches();
    let all_s = start.elapsed().as_secs_f64();
    // A fetch's time, one member at a time (a sample), then every ack.
    let mut fetches: Vec<f64> = clients
        .iter()
        .take(50)
        .map(|c| {
            let t = Instant::now();
            let size = rt.block_on(async { c.fetch(&id, 0, 1 << 26).await.unwrap().bytes().await.unwrap().len() });
            assert!(size > 0);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let mut acks = everyone_acks(&id);
    Case { stored, post: post.len() as u64, ack_s: median(&mut acks), fetch_s: median(&mut fetches), all_s }
}

pub fn lists(scale: &Scale) -> Vec<Row> {
    let (small, large) = scale.list_members;
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s = case(&rt, root.path(), small);
    let l = case(&rt, root.path(), large);

    // Anchor: the same deliveries pushed into smtp-sink, one message each.
    let (sink, port) = super::smtp_sink();
    let t = Instant::now();
    ok(Command::new(sbin("smtp-source"))
        .args(["-s", "10", "-m", &large.to_string(), "-l", &l.post.to_string(), "-f", "bench@example.org", "-t", "member@example.net"])
        .arg(format!("127.0.0.1:{port}")));
    let sink_s = t.elapsed().as_secs_f64();
    drop(sink);

    let budget = 2 * l.post + 200 * large as u64;
    let per_member = l.stored.saturating_sub(l.post) as f64 / large as f64;
    let ack_ratio = s.ack_s / l.ack_s;
    vec![
        row(
            &format!("list post to {large} members: bytes stored in the outbox"),
            format!("{} B ({:.0} B per member beyond the post)", l.stored, per_member),
            format!("{budget} B (2 × the {} B post + 200 B per member)", l.post),
            Some(budget as f64 / l.stored as f64),
            "≤ 2× the post + 200 B per member",
            l.stored <= budget,
            format!(
                "one stored copy, encrypted once to every member (a session key per member, ~96 B) and uploaded once per thousand; \
                 the rest is each member's delivery state; `du --apparent-size` of the data directory before and after the list's second post \
                 (the first leaves each member's certificate and inbox once); {small} members: {} B",
                s.stored
            ),
        ),
        row(
            &format!("list post: a member's ack at {large} members vs {small}"),
            format!("{:.2} ms (fetch {:.2} ms)", l.ack_s * 1e3, l.fetch_s * 1e3),
            format!("{:.2} ms (fetch {:.2} ms, {small} members)", s.ack_s * 1e3, s.fetch_s * 1e3),
            Some(ack_ratio),
            "≤ 1.5× (ratio ≥ 0.67×)",
            ack_ratio >= 0.67,
            format!("median of every member's signed ack, one at a time (the fetch: 50 members, one at a time). A fetch carries every member's session key, so it grows with the list"),
        ),
        row(
            &format!("list post: until all {large} members have it"),
            format!("{:.1} s", l.all_s),
            format!("{sink_s:.1} s ({large} messages of {} B into smtp-sink)", l.post),
            Some(sink_s / l.all_s),
            "reported",
            true,
            format!("from queueing the post to the last member's fetch: encrypt, upload, then every member's signed poll and fetch, {AT_ONCE} at a time; {small} members: {:.1} s", s.all_s),
        ),
    ]
}
