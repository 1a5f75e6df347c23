//! A provider's outbox: post_manager on PostgreSQL (a real cluster started
//! by the test), several stateless instances sharing it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::pg::Postgres;
use post_manager::store::{contract, Store};

/// The store's whole contract, on PostgreSQL: each part on a fresh database.
#[test]
fn the_postgres_backend_keeps_the_stores_contract() {
    let pg = Postgres::start();
    let n = AtomicUsize::new(0);
    contract::all(&mut || {
        let url = pg.create_db(&format!("contract{}", n.fetch_add(1, Ordering::Relaxed)));
        Store::open_spec(&url).unwrap()
    });
}

/// One outbox instance on the shared database.
fn instance(root: &std::path::Path, name: &str, store: &str, public_url: &str) -> common::Server {
    let mut c = common::bin_cmd("post_manager");
    c.args(["serve", "--listen", "127.0.0.1:0", "--store", store, "--public-url", public_url]);
    common::Server::start(name, c, root)
}

/// A signed GET with an empty body, sent to one instance.
fn signed_get(to: u16, sig: &str, path: &str) -> u16 {
    common::send_signed("GET", &format!("http://127.0.0.1:{to}{path}"), sig, vec![])
}

/// Two stateless instances behind nginx on one PostgreSQL database: mail
/// goes through whichever instance the balancer picks for each request;
/// replay protection and UDP cookie counters hold across instances.
#[test]
fn two_instances_behind_a_balancer_serve_one_outbox() {
    let pg = Postgres::start();
    let store = pg.create_db("outbox");
    let root = tempfile::tempdir().unwrap();
    // The balancer's port is chosen first: it is the outbox's URL.
    let lb_port = common::free_port();
    let lb_url = format!("http://127.0.0.1:{lb_port}/");
    let a = instance(root.path(), "instance-a", &store, &lb_url);
    let b = instance(root.path(), "instance-b", &store, &lb_url);
    let lb_dir = root.path().join("lb");
    std::fs::create_dir_all(&lb_dir).unwrap();
    let lb = common::balancer::Balancer::start(&lb_dir, &[a.port(), b.port()], lb_port);
    assert_eq!(lb.url(), lb_url);
    let alice = common::User::init(root.path(), "alice", "alice@example.org", &lb_url);
    let bob = common::User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    common::ok(common::bin_cmd("post_manager").args(["account", "add", "--store", &store, "--key"]).arg(alice.export()));
    alice.import(&bob.export());
    bob.import(&alice.export());
    alice.edit_config(|t| {
        common::table(t, "discovery").insert("wkd".into(), false.into());
    });
    let smtp = alice.smtp2stub(root.path());
    for i in 0..4 {
        let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: through the balancer {i}\r\n\r\nbody {i}\r\n");
        assert!(common::smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    }
    common::wait_for("four messages stored", 60, || (alice.status_json().as_array().map_or(0, |v| v.len()) == 4).then_some(()));
    let mut delivered = 0;
    for _ in 0..10 {
        let out = bob.http2mbox_once();
        delivered = bob.maildir_new().len();
        if delivered == 4 {
            break;
        }
        println!("{out}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(delivered, 4, "every message delivered once");
    common::wait_for("every message retrieved", 30, || {
        alice.status_json().as_array().unwrap().iter().all(|m| m["state"] == "retrieved").then_some(())
    });
    assert_eq!(pg.query("outbox", "SELECT count(*) FROM recipients WHERE state = 2"), "4");
    // Both instances served requests (their log lines may reach the file
    // a moment after the answers reached us).
    for s in [&a, &b] {
        let served = (0..50).any(|_| s.log().contains("request") || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        });
        assert!(served, "{} served nothing:\n{}", s.name, s.log());
    }
    // A signed request replayed to the other instance is refused there.
    let me = stubmail::Identity::load(&alice.home.join("secret.pgp")).unwrap();
    let sig = stubmail::auth::sign_request(&me, &lb_url, "GET", "/v1/account", &stubmail::client::sha256_hex(b""), stubmail::time::unix_now()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(signed_get(a.port(), &sig, "/v1/account"), 200);
    assert_eq!(signed_get(b.port(), &sig, "/v1/account"), 401, "replayed to the other instance");
    assert_eq!(signed_get(a.port(), &sig, "/v1/account"), 401, "and to the first");

    // UDP: a cookie issued through one instance is known to both; a
    // counter answered by one is not answered again by the other.
    let bob_id = std::sync::Arc::new(stubmail::Identity::load(&bob.home.join("secret.pgp")).unwrap());
    let udp_port = |s: &common::Server| s.stdout_after("post_manager udp on ").unwrap().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (pa, pb) = (udp_port(&a), udp_port(&b));
    rt.block_on(async {
        let client = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &lb_url, bob_id.clone()).unwrap();
        let req = stubmail::protocol::PollRequest { senders: None, certs: vec![stubmail::pgp::armored(&bob_id.cert()).unwrap()], device: None, ..Default::default() };
        let resp = client.poll(&req).await.unwrap();
        assert!(resp.udp_port == Some(pa) || resp.udp_port == Some(pb), "{:?} names one of the instances", resp.udp_port);
        let cookie = resp.cookies[0].decode().unwrap();
        let wait = std::time::Duration::from_secs(2);
        assert!(client.udp_poll(pa, &[cookie], 1, wait).await.is_some(), "answered by A");
        assert_eq!(client.udp_poll(pb, &[cookie], 1, wait).await, None, "the same counter, replayed to B");
        assert!(client.udp_poll(pb, &[cookie], 2, wait).await.is_some(), "a fresh counter, answered by B");
        assert_eq!(client.udp_poll(pa, &[cookie], 2, wait).await, None, "replayed to A");
    });
}

/// Retry a request to the balancer until it succeeds; only temporary
/// failures (an instance killed mid-request: 502) may happen.
async fn until_ok<T, F: std::future::Future<Output = Result<T, stubmail::client::ClientError>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    for _ in 0..200 {
        match f().await {
            Ok(v) => return v,
            Err(e) if e.is_temporary() => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: still failing after 200 tries");
}

/// kill -9 of one of two instances at random moments while 1,000 messages
/// are uploaded, fetched and acked through the balancer: every upload that
/// succeeded is delivered exactly once, every ack that succeeded is recorded.
#[test]
fn killing_an_instance_at_random_loses_and_duplicates_nothing() {
    const N: usize = 1000;
    let pg = Postgres::start();
    let store = pg.create_db("outbox");
    let root = tempfile::tempdir().unwrap();
    let (lb_port, a_port) = (common::free_port(), common::free_port());
    let lb_url = format!("http://127.0.0.1:{lb_port}/");
    let start_a = {
        let (root, store, lb_url) = (root.path().to_path_buf(), store.clone(), lb_url.clone());
        move || {
            let mut c = common::bin_cmd("post_manager");
            c.args(["serve", "--listen", &format!("127.0.0.1:{a_port}"), "--store", &store, "--public-url", &lb_url, "--udp", "off"]);
            common::Server::start("instance-a", c, &root)
        }
    };
    let a = start_a();
    let b = instance(root.path(), "instance-b", &store, &lb_url);
    let lb_dir = root.path().join("lb");
    std::fs::create_dir_all(&lb_dir).unwrap();
    let _lb = common::balancer::Balancer::start(&lb_dir, &[a.port(), b.port()], lb_port);
    let alice = std::sync::Arc::new(stubmail::Identity::generate(None, "alice@example.org", &lb_url).unwrap());
    let bob = std::sync::Arc::new(stubmail::Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap());
    let key = root.path().join("alice.asc");
    std::fs::write(&key, stubmail::pgp::armored(&alice.cert()).unwrap()).unwrap();
    common::ok(common::bin_cmd("post_manager").args(["account", "add", "--store", &store, "--max-messages", "5000", "--max-uploads-per-minute", "1000000", "--key"]).arg(&key));

    // The killer: SIGKILL instance A every 50-300 ms, start it again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kills = std::sync::Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut a = Some(a);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50 + rand::random::<u64>() % 250));
                drop(a.take()); // SIGKILL
                kills.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(rand::random::<u64>() % 100));
                a = Some(start_a());
            }
        })
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = stubmail::client::http_client().unwrap();
    let as_alice = stubmail::client::OutboxClient::new(http.clone(), &lb_url, alice.clone()).unwrap();
    let as_bob = stubmail::client::OutboxClient::new(http, &lb_url, bob.clone()).unwrap();
    let bob_fpr = bob.fpr();
    let mut uploaded = std::collections::BTreeSet::new();
    rt.block_on(async {
        for i in 0..N {
            let body = format!("message {i} {}", hex::encode(rand::random::<[u8; 16]>())).into_bytes();
            let id = stubmail::client::sha256_hex(&body);
            let file = root.path().join("upload");
            std::fs::write(&file, &body).unwrap();
            until_ok("upload", || as_alice.upload(&id, std::slice::from_ref(&bob_fpr), &file)).await;
            uploaded.insert(id);
        }
    });
    // Bob polls, fetches, checks and acks until nothing is left.
    let mut delivered = std::collections::BTreeMap::<String, usize>::new();
    let poll = stubmail::protocol::PollRequest { senders: None, certs: vec![stubmail::pgp::armored(&bob.cert()).unwrap()], device: None, ..Default::default() };
    rt.block_on(async {
        loop {
            let listed = until_ok("poll", || as_bob.poll(&poll)).await.messages;
            if listed.is_empty() {
                break;
            }
            for item in listed {
                assert!(!delivered.contains_key(&item.id), "{} offered again after its ack succeeded", item.id);
                let bytes = until_ok("fetch", || async {
                    let r = as_bob.fetch(&item.id, 0, item.size).await?;
                    Ok(r.bytes().await?.to_vec())
                })
                .await;
                assert_eq!(stubmail::client::sha256_hex(&bytes), item.id, "the bytes are the message");
                until_ok("ack", || as_bob.ack(&item.id, None)).await;
                *delivered.entry(item.id).or_default() += 1;
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    assert!(kills.load(Ordering::Relaxed) >= 3, "instance A was killed {} times", kills.load(Ordering::Relaxed));
    assert_eq!(delivered.keys().cloned().collect::<std::collections::BTreeSet<_>>(), uploaded, "every upload delivered");
    assert!(delivered.values().all(|n| *n == 1));
    assert_eq!(pg.query("outbox", "SELECT count(*) FROM recipients WHERE state = 2"), N.to_string(), "every ack recorded");
    assert_eq!(pg.query("outbox", "SELECT count(*) FROM messages"), N.to_string(), "nothing stored twice");
}

/// `post_manager migrate` copies a data directory into PostgreSQL: the
/// same lists, states, usage and bytes; again, it copies nothing; after an
/// interrupted copy, it copies the rest.
#[test]
fn an_outbox_moves_from_its_data_directory_into_postgres() {
    use std::io::Read;
    let pg = Postgres::start();
    let url = pg.create_db("moved");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("outbox");
    let files = Store::open(&data).unwrap();
    let alice = stubmail::Identity::generate(None, "alice@example.org", "http://outbox.example/").unwrap();
    let bob = stubmail::Identity::generate(None, "bob@example.net", "http://b.example/").unwrap();
    let a = files.add_account(&alice.cert()).unwrap();
    files.set_limits(&a, &post_manager::store::Limits { max_bytes: 1 << 40, max_messages: 100, max_recipients_per_day: 50, max_recipients_per_message: 2000, ..Default::default() }).unwrap();
    files.remember_cert(&bob.cert()).unwrap();
    let (b, c) = (bob.fpr(), stubmail::protocol::Fpr::parse(&"C".repeat(40)).unwrap());
    let now = stubmail::time::unix_now();
    let mut ids = Vec::new();
    for i in 0..30u32 {
        // Some larger than a chunk.
        let body: Vec<u8> = if i % 10 == 0 { (0..600_000u32).map(|k| (k * 7 + i) as u8).collect() } else { format!("message {i}").into_bytes() };
        let id = stubmail::client::sha256_hex(&body);
        files.put(&a, &id, &[b.clone(), c.clone()], &mut &body[..], 1 << 30, now + i as i64).unwrap();
        ids.push(id);
    }
    for id in &ids[..10] {
        files.ack(&b, id, Some("laptop"), now + 100).unwrap();
    }
    for id in &ids[10..15] {
        files.ack(&b, id, None, now + 100).unwrap();
    }
    files.unsend(&a, &ids[20], now + 100).unwrap();
    // A suspended account, with the complaints that suspended it.
    use post_manager::store::{Complaint, Suspension};
    files.record_complaint(&Complaint { sender: a.clone(), id: ids[1].clone(), by: b.clone(), at: now + 50 }).unwrap();
    files.set_suspension(&a, Some(&Suspension { since: now + 50, reason: "complaints".into() }), now + 50).unwrap();
    let migrate = || common::stdout(&common::ok(common::bin_cmd("post_manager").args(["migrate", "--from"]).arg(&data).args(["--to", &url])));
    let out = migrate();
    assert!(out.contains("30 message(s)") && out.contains("30 copied"), "{out}");
    let moved = Store::open_spec(&url).unwrap();
    let same = |what: &str, f: &dyn Fn(&Store) -> String| assert_eq!(f(&moved), f(&files), "{what}");
    let ids_of = |v: Vec<stubmail::protocol::PollItem>| v.into_iter().map(|i| i.id).collect::<Vec<_>>().join(",");
    for (who, dev) in [(&b, None), (&b, Some("laptop")), (&b, Some("desktop")), (&c, None)] {
        same(&format!("{who} {dev:?}"), &|s| ids_of(s.poll(who, None, dev).unwrap()));
    }
    same("statuses", &|s| serde_json::to_string(&s.list(&a).unwrap()).unwrap());
    same("account", &|s| serde_json::to_string(&s.account_status(&a, now + 200).unwrap()).unwrap());
    same("names", &|s| s.outbox_urls().unwrap().join(","));
    same("suspension", &|s| format!("{:?}", s.suspension(&a).unwrap()));
    same("complaints", &|s| format!("{:?} {:?}", s.complaint_counts(&a, now + 50, 0).unwrap(), s.recent_complaints(&a, 10).unwrap()));
    assert!(moved.suspension(&a).unwrap().is_some(), "still suspended after the move");
    assert!(moved.known_cert(&b).unwrap().is_some() && moved.account(&a).unwrap().is_some());
    for id in ids.iter().filter(|i| *i != &ids[20]) {
        let read = |s: &Store| {
            let mut v = Vec::new();
            s.open_for(&c, id, 0).unwrap().0.read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(read(&moved), read(&files));
    }
    // Again: nothing to copy. Interrupted: the rest is copied.
    assert!(migrate().contains("0 copied"));
    pg.query("moved", &format!("DELETE FROM messages WHERE id IN ('{}', '{}')", ids[0], ids[29]));
    let out = migrate();
    assert!(out.contains("2 copied") && out.contains("the bytes of 29 read back"), "{out}");
    same("after resuming", &|s| ids_of(s.poll(&b, None, Some("desktop")).unwrap()));
}

/// Database trouble is a temporary error (503), never an answer about the
/// request: a 401 or 404 made clients give up on mail that was fine.
#[test]
fn a_database_that_is_down_gets_clients_503_and_comes_back() {
    let pg = Postgres::start();
    let store = pg.create_db("outbox");
    let root = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let mut c = common::bin_cmd("post_manager");
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--store", &store, "--public-url", &url, "--udp", "off"]);
    let _outbox = common::Server::start("outbox", c, root.path());
    let alice = stubmail::Identity::generate(None, "alice@example.org", &url).unwrap();
    let key = root.path().join("alice.asc");
    std::fs::write(&key, stubmail::pgp::armored(&alice.cert()).unwrap()).unwrap();
    common::ok(common::bin_cmd("post_manager").args(["account", "add", "--store", &store, "--key"]).arg(&key));
    let account = || {
        let sig = stubmail::auth::sign_request(&alice, &url, "GET", "/v1/account", &stubmail::client::sha256_hex(b""), stubmail::time::unix_now()).unwrap();
        signed_get(port, &sig, "/v1/account")
    };
    let cert = || common::send_signed("GET", &format!("{url}v1/certs/{}", alice.fpr()), "", vec![]);
    assert_eq!((account(), cert()), (200, 200));
    common::ok(pg.bin("pg_ctl").args(["-D"]).arg(pg.data()).args(["-m", "fast", "-w", "stop"]));
    let t = std::time::Instant::now();
    assert_eq!(account(), 503, "a signed request while the database is down");
    assert_eq!(cert(), 503, "a key lookup while the database is down");
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "answered within the connect timeouts: {:?}", t.elapsed());
    let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", pg.port, pg.dir.path().display());
    common::ok(pg.bin("pg_ctl").args(["-D"]).arg(pg.data()).args(["-l"]).arg(pg.dir.path().join("log")).args(["-o", &opts, "-w", "start"]));
    common::wait_for("the outbox to use the database again", 30, || (account() == 200).then_some(()));
    assert_eq!(cert(), 200);
}

/// Clients that stall mid-upload or mid-download hold no database
/// connection: with a pool of two, four stalled uploads and four stalled
/// downloads leave others served at once.
#[test]
fn stalled_clients_do_not_take_the_database_connections() {
    use std::io::Write;
    let pg = Postgres::start();
    let store = pg.create_db("outbox");
    let root = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let mut c = common::bin_cmd("post_manager");
    c.env("POST_MANAGER_DB_POOL", "2");
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--store", &store, "--public-url", &url, "--udp", "off"]);
    let _outbox = common::Server::start("outbox", c, root.path());
    let alice = std::sync::Arc::new(stubmail::Identity::generate(None, "alice@example.org", &url).unwrap());
    let bob = std::sync::Arc::new(stubmail::Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap());
    let key = root.path().join("alice.asc");
    std::fs::write(&key, stubmail::pgp::armored(&alice.cert()).unwrap()).unwrap();
    common::ok(common::bin_cmd("post_manager").args(["account", "add", "--store", &store, "--key"]).arg(&key));
    // A message of four chunks for Bob.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13) as u8).collect();
    let id = stubmail::client::sha256_hex(&big);
    let file = root.path().join("big");
    std::fs::write(&file, &big).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let as_alice = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &url, alice.clone()).unwrap();
    rt.block_on(as_alice.upload(&id, &[bob.fpr()], &file)).unwrap();
    let poll = stubmail::protocol::PollRequest { senders: None, certs: vec![stubmail::pgp::armored(&bob.cert()).unwrap()], device: None, ..Default::default() };
    let as_bob = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &url, bob.clone()).unwrap();
    assert_eq!(rt.block_on(as_bob.poll(&poll)).unwrap().messages.len(), 1);
    // Four uploads that send a part of their body and stop.
    let mut stalled = Vec::new();
    for i in 0..4u8 {
        let body = vec![i; 400_000];
        let bid = stubmail::client::sha256_hex(&body);
        let path = format!("/v1/messages/{bid}");
        let sig = stubmail::auth::sign_request(&alice, &url, "PUT", &path, &bid, stubmail::time::unix_now()).unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: x\r\nStubmail-Signature: {sig}\r\nStubmail-Content-SHA256: {bid}\r\nStubmail-Recipients: {}\r\nContent-Length: {}\r\n\r\n",
            bob.fpr(),
            body.len()
        )
        .unwrap();
        s.write_all(&body[..300_000]).unwrap();
        stalled.push(s);
    }
    // Four downloads of the big message that read nothing.
    for _ in 0..4 {
        let path = format!("/v1/messages/{id}");
        let digest = stubmail::client::sha256_hex(b"");
        let sig = stubmail::auth::sign_request(&bob, &url, "GET", &path, &digest, stubmail::time::unix_now()).unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nStubmail-Signature: {sig}\r\nStubmail-Content-SHA256: {digest}\r\n\r\n").unwrap();
        stalled.push(s);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(rt.block_on(as_bob.poll(&poll)).unwrap().messages.len(), 1);
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(3), "five polls took {:?} beside the stalled clients", t.elapsed());
    drop(stalled);
}

/// `--store` takes a connection string only, and nothing shows its
/// password: not in the URL's user part, its query, or a keyword.
#[test]
fn the_store_option_is_a_connection_string_and_its_password_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let err = common::fails(common::bin_cmd("post_manager").current_dir(dir.path()).args(["account", "list", "--store", "some/dir"]));
    assert!(err.contains("connection string") && err.contains("--data"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no directory made of it");
    let port = common::free_port().to_string();
    for spec in [
        format!("postgres://stubmail:Hunter2Secret@127.0.0.1:{port}/db"),
        format!("postgres://stubmail@127.0.0.1:{port}/db?password=Hunter2Secret"),
        format!("host=127.0.0.1 port={port} user=stubmail password=Hunter2Secret dbname=db"),
    ] {
        let err = common::fails(common::bin_cmd("post_manager").args(["account", "list", "--store", &spec]));
        assert!(err.contains("cannot connect") && !err.contains("Hunter2Secret"), "{spec}: {err}");
    }
}

/// A data directory another user could write to, moved into the database:
/// a link to /dev/zero, a FIFO and a garbled state file are named, the rest
/// is copied, and nothing is read without a bound.
#[test]
fn migrate_reads_a_hostile_data_directory_within_bounds() {
    let pg = Postgres::start();
    let url = pg.create_db("moved");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("outbox");
    let files = Store::open(&data).unwrap();
    let a = stubmail::protocol::Fpr::parse(&"A".repeat(40)).unwrap();
    let b = stubmail::protocol::Fpr::parse(&"B".repeat(40)).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = format!("message {i}").into_bytes();
        let id = stubmail::client::sha256_hex(&body);
        files.put(&a, &id, std::slice::from_ref(&b), &mut &body[..], 1000, 1).unwrap();
        ids.push(id);
    }
    std::os::unix::fs::symlink("/dev/zero", data.join(format!("certs/{}.pgp", "C".repeat(40)))).unwrap();
    std::fs::remove_file(data.join(format!("messages/{}", ids[0]))).unwrap();
    common::ok(std::process::Command::new("mkfifo").arg(data.join(format!("messages/{}", ids[0]))));
    std::fs::write(data.join(format!("meta/{}.json", ids[1])), b"{ not json").unwrap();
    let t = std::time::Instant::now();
    let out = common::bin_cmd("post_manager").args(["migrate", "--from"]).arg(&data).args(["--to", &url]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "took {:?}", t.elapsed());
    assert!(err.contains("2 message(s) could not be read") && err.contains(&ids[0]) && err.contains(&ids[1]), "{err}");
    assert_eq!(pg.query("moved", "SELECT string_agg(id, ',') FROM messages"), ids[2], "the readable one is copied");
}

/// A UDP service that stopped renewing its advert (its instance died) is
/// not announced to pollers.
#[test]
fn a_dead_instances_udp_port_is_not_announced() {
    let pg = Postgres::start();
    let url = pg.create_db("outbox");
    let store = Store::open_spec(&url).unwrap();
    let advert = |port| post_manager::udp::Advert { port, started_ns: 1, pid: 1 };
    store.set_udp_advert(Some(&advert(4000))).unwrap();
    assert_eq!(store.udp_advert().map(|a| a.port), Some(4000));
    pg.query("outbox", "UPDATE udp_services SET seen = seen - 60");
    assert_eq!(store.udp_advert().map(|a| a.port), None, "silent for a minute: dead");
}

/// A standby kept by streaming replication takes over when the primary
/// dies: an instance given both hosts follows the writable one, and what
/// was stored before is fetched and acked after.
#[test]
fn a_standby_takes_over_when_the_primary_dies() {
    let primary = Postgres::start();
    primary.create_db("outbox");
    let standby = Postgres::standby_of(&primary);
    let store = format!("postgres://postgres@127.0.0.1:{},127.0.0.1:{}/outbox?target_session_attrs=read-write", primary.port, standby.port);
    let root = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let mut c = common::bin_cmd("post_manager");
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--store", &store, "--public-url", &url, "--udp", "off"]);
    let _outbox = common::Server::start("outbox", c, root.path());
    let alice = std::sync::Arc::new(stubmail::Identity::generate(None, "alice@example.org", &url).unwrap());
    let bob = std::sync::Arc::new(stubmail::Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap());
    let key = root.path().join("alice.asc");
    std::fs::write(&key, stubmail::pgp::armored(&alice.cert()).unwrap()).unwrap();
    common::ok(common::bin_cmd("post_manager").args(["account", "add", "--store", &store, "--key"]).arg(&key));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = stubmail::client::http_client().unwrap();
    let as_alice = stubmail::client::OutboxClient::new(http.clone(), &url, alice.clone()).unwrap();
    let as_bob = stubmail::client::OutboxClient::new(http, &url, bob.clone()).unwrap();
    let upload = |text: &str| {
        let file = root.path().join("m");
        std::fs::write(&file, text).unwrap();
        let id = stubmail::client::sha256_hex(text.as_bytes());
        let to = [bob.fpr()];
        rt.block_on(until_ok("upload", || as_alice.upload(&id, &to, &file)));
        id
    };
    let before = upload("stored before the failover");
    common::wait_for("the standby to have it", 30, || (standby.query("outbox", "SELECT count(*) FROM messages") == "1").then_some(()));
    primary.crash();
    standby.promote();
    let after = upload("stored after the failover");
    let poll = stubmail::protocol::PollRequest { senders: None, certs: vec![stubmail::pgp::armored(&bob.cert()).unwrap()], device: None, ..Default::default() };
    let listed: Vec<String> = rt.block_on(until_ok("poll", || as_bob.poll(&poll))).messages.into_iter().map(|m| m.id).collect();
    assert!(listed.contains(&before) && listed.contains(&after), "{listed:?}");
    for id in [&before, &after] {
        rt.block_on(until_ok("ack", || as_bob.ack(id, None)));
    }
    assert_eq!(standby.query("outbox", "SELECT count(*) FROM recipients WHERE state = 2"), "2");
}

/// Stubs are sent by one instance at a time: another instance gets a stub
/// only once the one holding it stops renewing its lease (it died).
#[test]
fn a_stub_is_held_by_one_instance_and_taken_over_when_it_dies() {
    let pg = Postgres::start();
    let url = pg.create_db("outbox");
    let (a, b) = (Store::open_spec(&url).unwrap(), Store::open_spec(&url).unwrap());
    let q = post_manager::udp::QueuedStub {
        id: "0".repeat(64),
        recipient: stubmail::protocol::Fpr::parse(&"B".repeat(40)).unwrap(),
        endpoint: "127.0.0.1:9".into(),
        stub: "c3R1Yg==".into(),
    };
    a.queue_stub(&q, 0).unwrap();
    assert_eq!(a.claim_stubs(&mut 0, &mut |_| false).len(), 1, "instance A takes it");
    assert!(b.claim_stubs(&mut 0, &mut |_| false).is_empty(), "B does not while A holds it");
    a.renew_stubs();
    assert!(b.claim_stubs(&mut 0, &mut |_| false).is_empty(), "nor after A renewed");
    // A dies: its lease runs out.
    pg.query("outbox", "UPDATE stubs SET lease = 0");
    let taken = b.claim_stubs(&mut 0, &mut |_| false);
    assert_eq!(taken.len(), 1, "B takes it over");
    // Sent and done: gone for every instance.
    b.drop_stub(&taken[0].0);
    pg.query("outbox", "UPDATE stubs SET lease = 0");
    assert!(a.claim_stubs(&mut 0, &mut |_| false).is_empty());
}

/// One retention pass at a time: while another instance holds the pass's
/// lock, a pass does nothing; after, it does the work.
#[test]
fn one_retention_pass_runs_at_a_time() {
    let pg = Postgres::start();
    let url = pg.create_db("outbox");
    let store = Store::open_spec(&url).unwrap();
    let (a, b) = (stubmail::protocol::Fpr::parse(&"A".repeat(40)).unwrap(), stubmail::protocol::Fpr::parse(&"B".repeat(40)).unwrap());
    store.put(&a, &stubmail::client::sha256_hex(b"old"), std::slice::from_ref(&b), &mut &b"old"[..], 100, 1).unwrap();
    let policy = post_manager::store::Retention { pending_secs: 10, keep_secs: 10, status_secs: 10 };
    // Another instance's pass, holding the lock for a few seconds.
    let mut other = pg.psql("outbox");
    other.args(["-c", "BEGIN; SELECT pg_advisory_xact_lock(1397908852); SELECT pg_sleep(4); COMMIT;"]);
    let mut other = other.spawn().unwrap();
    common::wait_for("the other pass to hold the lock", 10, || {
        (pg.query("outbox", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == "1").then_some(())
    });
    assert_eq!(store.expire(1000, policy).unwrap(), post_manager::store::Expired::default(), "the other pass is at it");
    assert!(other.wait().unwrap().success());
    assert_eq!(store.expire(1000, policy).unwrap().recipients_expired, 1, "then this one does the work");
}

/// Instances started together on a new database: the schema is made once,
/// and every one of them works.
#[test]
fn instances_started_together_migrate_the_schema_once() {
    let pg = Postgres::start();
    let url = pg.create_db("outbox");
    let children: Vec<_> = (0..4)
        .map(|_| {
            common::bin_cmd("post_manager")
                .args(["account", "list", "--store", &url])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Every migration, each once (2: the abuse controls of issue #19; 3:
    // public lists' archives, issue #18).
    assert_eq!(pg.query("outbox", "SELECT version FROM stubmail_schema"), "3");
    assert_eq!(pg.query("outbox", "SELECT count(*) FROM stubmail_schema"), "1");
}
