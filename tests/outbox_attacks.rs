//! Attacks on the outbox, against the real `post_manager` (SECURITY.md,
//! "The outbox gives strangers nothing to hold"): requests replayed at
//! another outbox, strangers' polls, certificates that grow, stubs aimed
//! at a victim, revocations.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use stubmail::client::{self, OutboxClient};
use stubmail::openpgp::cert::prelude::*;
use stubmail::openpgp::packet::signature::SignatureBuilder;
use stubmail::openpgp::types::{ReasonForRevocation, SignatureType};
use stubmail::protocol::{self, PollRequest};
use stubmail::{pgp, Identity};

fn rt() -> tokio::runtime::Runtime {
    client::init_tls();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Files under `dir`, recursively.
fn files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| if e.path().is_dir() { files(&e.path()) } else { 1 }).sum()
}

/// A signed poll made for `signed_for`, sent to `sent_to`; its status.
fn poll_status(me: &Identity, cert: &Cert, signed_for: &str, sent_to: &str) -> u16 {
    let body = serde_json::to_vec(&PollRequest { senders: None, certs: vec![pgp::armored(cert).unwrap()], device: None, ..Default::default() }).unwrap();
    let digest = client::sha256_hex(&body);
    let sig = stubmail::auth::sign_request(me, signed_for, "POST", "/v1/poll", &digest, stubmail::time::unix_now()).unwrap();
    common::send_signed("POST", &format!("{sent_to}v1/poll"), &sig, body)
}

#[test]
fn a_request_captured_at_one_outbox_is_refused_at_another() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (Outbox::start(root.path(), "outbox-a"), Outbox::start(root.path(), "outbox-b"));
    let bob = Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap();
    for o in [&a, &b] {
        had_mail_before(&o.url(), &o.data, bob.fpr().as_str());
    }
    assert_eq!(poll_status(&bob, &bob.cert(), &a.url(), &a.url()), 200, "made for A, at A");
    assert_eq!(poll_status(&bob, &bob.cert(), &a.url(), &b.url()), 401, "made for A, replayed at B");
    assert_eq!(poll_status(&bob, &bob.cert(), &b.url(), &b.url()), 200, "made for B, at B");
}

#[test]
fn a_strangers_poll_leaves_nothing_and_a_growing_certificate_is_kept_small() {
    let root = tempfile::tempdir().unwrap();
    let o = Outbox::start(root.path(), "outbox");
    had_mail_before(&o.url(), &o.data, &"F".repeat(40));
    let before = files(&o.data);
    // Strangers: keys of their own, no account, no mail here.
    for i in 0..40 {
        let s = Arc::new(Identity::generate(None, &format!("s{i}@example.com"), "http://127.0.0.1:9/").unwrap());
        let c = OutboxClient::new(client::http_client().unwrap(), &o.url(), s.clone()).unwrap();
        let req = PollRequest { senders: None, certs: vec![pgp::armored(&s.cert()).unwrap()], device: Some("d".into()), ..Default::default() };
        let resp = rt().block_on(c.poll(&req)).unwrap();
        assert!(resp.messages.is_empty() && resp.cookies.is_empty() && resp.udp_port.is_none(), "the empty answer anyone gets");
    }
    assert_eq!(files(&o.data), before, "no certificate, cookie or nonce file for strangers");
    assert_eq!(files(&o.data.join("certs")), 0);

    // A recipient with mail here presents a certificate loaded with
    // third-party certifications, more each time: what the outbox keeps
    // stays small and does not grow.
    let bob = Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap();
    had_mail_before(&o.url(), &o.data, bob.fpr().as_str());
    let mut cert = bob.cert();
    let mut sizes = Vec::new();
    for round in 0..3 {
        for _ in 0..100 {
            let (other, _) = CertBuilder::general_purpose([format!("<x{round}@spam.example>")]).generate().unwrap();
            let mut kp = other.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
            let uid = cert.userids().next().unwrap().userid().clone();
            let sig = uid.certify(&mut kp, &cert, SignatureType::GenericCertification, None, None).unwrap();
            cert = cert.insert_packets(vec![stubmail::openpgp::Packet::from(uid), sig.into()]).unwrap().0;
        }
        assert_eq!(poll_status(&bob, &cert, &o.url(), &o.url()), 200);
        sizes.push(std::fs::metadata(o.data.join(format!("certs/{}.pgp", bob.fpr()))).unwrap().len());
    }
    assert!(pgp::binary(&cert).unwrap().len() > 30_000, "the presented certificate is large");
    assert!(sizes.iter().all(|s| *s == sizes[0] && *s < 4096), "kept certificate sizes: {sizes:?}");
}

#[test]
fn a_revocation_presented_once_is_kept_and_the_old_certificate_refused_after() {
    let root = tempfile::tempdir().unwrap();
    let o = Outbox::start(root.path(), "outbox");
    let bob = Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap();
    had_mail_before(&o.url(), &o.data, bob.fpr().as_str());
    assert_eq!(poll_status(&bob, &bob.cert(), &o.url(), &o.url()), 200);
    // Bob's key is compromised; he revokes it and his poller presents the
    // revoked certificate once.
    let mut kp = bob.signing_keypair().unwrap();
    let rev = bob.cert().revoke(&mut kp, ReasonForRevocation::KeyCompromised, b"lost the laptop").unwrap();
    let revoked = bob.cert().insert_packets(vec![stubmail::openpgp::Packet::from(rev)]).unwrap().0;
    assert_eq!(poll_status(&bob, &revoked, &o.url(), &o.url()), 401);
    // Whoever holds the key now, presenting the old certificate: refused.
    assert_eq!(poll_status(&bob, &bob.cert(), &o.url(), &o.url()), 401, "a revocation once seen sticks");
    let kept = pgp::parse_certs(&std::fs::read(o.data.join(format!("certs/{}.pgp", bob.fpr()))).unwrap()).unwrap();
    assert!(pgp::is_revoked(&kept[0]));
    // A forged "revocation" (signed by another key) is not taken.
    let carol = Identity::generate(None, "carol@example.net", "http://127.0.0.1:9/").unwrap();
    had_mail_before(&o.url(), &o.data, carol.fpr().as_str());
    assert_eq!(poll_status(&carol, &carol.cert(), &o.url(), &o.url()), 200);
    let (mallory, _) = CertBuilder::general_purpose(["<m@evil.example>"]).generate().unwrap();
    let mut mk = mallory.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
    let forged = SignatureBuilder::new(SignatureType::KeyRevocation)
        .set_reason_for_revocation(ReasonForRevocation::KeyCompromised, b"")
        .unwrap()
        .sign_direct_key(&mut mk, Some(carol.cert().primary_key().key()))
        .unwrap();
    let fake = carol.cert().insert_packets(vec![stubmail::openpgp::Packet::from(forged)]).unwrap().0;
    let _ = poll_status(&carol, &fake, &o.url(), &o.url());
    assert_eq!(poll_status(&carol, &carol.cert(), &o.url(), &o.url()), 200, "a forged revocation changes nothing");
}

#[test]
fn a_sender_cannot_aim_stubs_at_an_address_the_recipient_never_presented() {
    let root = tempfile::tempdir().unwrap();
    let o = Outbox::start(root.path(), "outbox");
    let alice = User::init(root.path(), "alice", "alice@example.org", &o.url());
    o.add_account(&alice);
    let me = Arc::new(Identity::load(&alice.home.join("secret.pgp")).unwrap());
    // A throwaway "recipient" whose certificate names a victim's address.
    let victim = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    victim.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    let notify = format!("udp://{}", victim.local_addr().unwrap());
    let fake = Identity::generate_with(None, "throwaway@example.com", "http://127.0.0.1:9/", Some(&notify)).unwrap();
    let body = b"ciphertext".to_vec();
    let id = client::sha256_hex(&body);
    let file = root.path().join("ct");
    std::fs::write(&file, &body).unwrap();
    let c = OutboxClient::new(client::http_client().unwrap(), &o.url(), me.clone()).unwrap();
    rt().block_on(c.upload(&id, &[fake.fpr()], &file)).unwrap();
    let stub = protocol::udp::Stub { sender: me.fpr(), recipient: fake.fpr(), id: id.clone(), size: 10, made: stubmail::time::unix_now(), outbox: o.url() };
    let sig = me.sign_detached(&stub.signed_part().unwrap()).unwrap();
    use base64::Engine as _;
    let req = protocol::NotifyRequest {
        stubs: vec![protocol::NotifyStub {
            cert: pgp::armored(&fake.cert()).unwrap(),
            stub: base64::engine::general_purpose::STANDARD.encode(stub.encode(&sig).unwrap()),
        }],
    };
    let resp = rt().block_on(c.notify(&id, &req)).unwrap();
    // Counted all the same: the answer must not tell a sender which
    // addresses poll this outbox (a live-address oracle for a spammer).
    assert_eq!(resp.accepted, 1, "the same answer as for a recipient who polls here");
    let mut buf = [0u8; 2048];
    assert!(victim.recv(&mut buf).is_err(), "nothing reached the victim");
    // The control: once that key polls here itself (it has mail waiting),
    // its own certificate names the endpoint, and the stub goes out.
    assert_eq!(poll_status(&fake, &fake.cert(), &o.url(), &o.url()), 200);
    let resp = rt().block_on(c.notify(&id, &req)).unwrap();
    assert_eq!(resp.accepted, 1);
    assert!(victim.recv(&mut buf).is_ok(), "sent to the endpoint the recipient presented");
}

/// Every path under `dir` whose mode lets group or others in.
fn loose(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(format!("{} {mode:o}", e.path().display()));
        }
        if e.path().is_dir() {
            out.extend(loose(&e.path()));
        }
    }
    out
}

#[test]
fn a_data_directory_made_by_post_manager_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let o = Outbox::start(root.path(), "outbox");
    let bob = Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap();
    // Uploads, a recipient's poll (certificate, cookie, nonces), the UDP
    // service's files: all there.
    had_mail_before(&o.url(), &o.data, bob.fpr().as_str());
    assert_eq!(poll_status(&bob, &bob.cert(), &o.url(), &o.url()), 200);
    assert!(files(&o.data.join("cookies")) > 0 && files(&o.data.join("nonces")) > 0 && files(&o.data.join("certs")) > 0);
    assert_eq!(std::fs::metadata(&o.data).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(loose(&o.data), Vec::<String>::new(), "nothing readable by other local users");
}

#[test]
fn an_account_binding_another_outboxs_url_needs_the_operators_word() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (Outbox::start(root.path(), "outbox-a"), Outbox::start(root.path(), "outbox-b"));
    let bob = Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap();
    for o in [&a, &b] {
        had_mail_before(&o.url(), &o.data, bob.fpr().as_str());
    }
    // Mallory, an account holder at B, registers a key that binds A's URL.
    let mallory = User::init(root.path(), "mallory", "mallory@example.org", &a.url());
    let err = fails(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&b.data).arg("--key").arg(mallory.export()));
    assert!(err.contains("--new-url") && err.contains(&a.url()), "{err}");
    // So Bob's poll made for A stays invalid at B.
    assert_eq!(poll_status(&bob, &bob.cert(), &a.url(), &b.url()), 401);
    // The operator can say a URL is another name of this outbox.
    ok(bin_cmd("post_manager").args(["account", "add", "--new-url", "--data"]).arg(&b.data).arg("--key").arg(mallory.export()));
    assert_eq!(poll_status(&bob, &bob.cert(), &a.url(), &b.url()), 200, "then it is one of B's names");
}

#[test]
fn a_moved_account_leaves_its_updated_key_behind_but_no_new_address() {
    let p = Pair::start(true);
    let o2 = Outbox::start(p.root.path(), "o2");
    p.bob.edit_config(|t| {
        table(t, "poll").insert("cert_refresh_secs".into(), 1.into());
    });
    // Alice moves from her shared outbox to another: the old one takes her
    // updated key over a signed request.
    let out = stdout(&ok(p.alice.stubmail().args(["identity", "set-outbox", &o2.url()])));
    assert!(out.contains("now serves your updated key"), "{out}");
    o2.add_account(&p.alice);
    let smtp = p.alice.smtp2stub(p.root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: from my new outbox\r\n\r\nx\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_states(&p.alice, 1, "stored");
    // Bob polls the old outbox, learns the new one, and fetches from it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    p.bob.http2mbox_once();
    assert!(stdout(&ok(p.bob.stubmail().args(["keys", "list"]))).contains(&o2.url()));
    assert!(p.bob.http2mbox_once().contains("delivered 1"));

    // An account cannot use the update to add an address (this outbox's WKD
    // speaks for what its accounts' keys name), nor to push another key.
    client::init_tls();
    let mut me = Identity::load(&p.alice.home.join("secret.pgp")).unwrap();
    me.add_address("carol@example.org").unwrap();
    let me = Arc::new(me);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let old = OutboxClient::new(client::http_client().unwrap(), &p.outbox.url(), me.clone()).unwrap();
    rt.block_on(old.update_account_cert(&me.cert())).unwrap();
    let served = pgp::parse_certs(&rt.block_on(OutboxClient::account_cert(&client::http_client().unwrap(), &p.outbox.url(), &me.fpr(), std::time::Duration::from_secs(10))).unwrap()).unwrap().remove(0);
    assert!(!pgp::all_emails_of(&served).contains(&"carol@example.org".to_string()), "no new address: {:?}", pgp::all_emails_of(&served));
    let (good, out) = python(
        "import sys,urllib.request,urllib.error\ntry:\n  urllib.request.urlopen(sys.argv[1]); print('200')\nexcept urllib.error.HTTPError as e: print(e.code)",
        &[&format!("{}.well-known/openpgpkey/hu/{}?l=carol", p.outbox.url(), stubmail::wkd::local_hash("carol"))],
    );
    assert!(good && out.trim() == "404", "{out}");
    let eve = Identity::generate(None, "eve@example.org", &p.outbox.url()).unwrap();
    let err = rt.block_on(old.update_account_cert(&eve.cert())).unwrap_err().to_string();
    assert!(err.contains("403") || err.contains("own certificate"), "{err}");
}

/// `POST /v1/acks` (PROTOCOL.md §4.4): a recipient acks several messages
/// in one signed request; it cannot ack another recipient's, an unsent
/// one or one that does not exist, and malformed or oversized batches are
/// refused with 400 and change nothing.
#[test]
fn a_batch_ack_acks_only_the_signers_own_messages() {
    let root = tempfile::tempdir().unwrap();
    let o = Outbox::start(root.path(), "outbox");
    let rt = rt();
    let http = client::http_client().unwrap();
    let alice = Arc::new(Identity::generate(None, "alice@example.org", &o.url()).unwrap());
    let key = root.path().join("alice.asc");
    std::fs::write(&key, pgp::armored(&alice.cert()).unwrap()).unwrap();
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&o.data).arg("--key").arg(&key));
    let bob = Arc::new(Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap());
    let carol = Arc::new(Identity::generate(None, "carol@example.net", "http://127.0.0.1:9/").unwrap());
    let as_alice = OutboxClient::new(http.clone(), &o.url(), alice.clone()).unwrap();
    let as_bob = OutboxClient::new(http.clone(), &o.url(), bob.clone()).unwrap();
    let as_carol = OutboxClient::new(http, &o.url(), carol.clone()).unwrap();
    let upload = |text: String, to: &[protocol::Fpr]| {
        let file = root.path().join("m");
        std::fs::write(&file, &text).unwrap();
        let id = client::sha256_hex(text.as_bytes());
        rt.block_on(as_alice.upload(&id, to, &file)).unwrap();
        id
    };
    let for_bob: Vec<String> = (0..5).map(|i| upload(format!("to Bob {i}"), &[bob.fpr()])).collect();
    let for_carol = upload("to Carol".into(), &[carol.fpr()]);
    let withdrawn = upload("to Bob, withdrawn".into(), &[bob.fpr()]);
    rt.block_on(as_alice.unsend(&withdrawn)).unwrap();
    let poll = |c: &OutboxClient, who: &Identity| {
        let req = PollRequest { senders: None, certs: vec![pgp::armored(&who.cert()).unwrap()], device: None, ..Default::default() };
        rt.block_on(c.poll(&req)).unwrap().messages.len()
    };
    assert_eq!(poll(&as_bob, &bob), 5);
    assert_eq!(poll(&as_carol, &carol), 1);

    // Bob acks his five with Carol's message, the withdrawn one and an
    // unknown id in the same batch.
    let unknown = client::sha256_hex(b"never stored");
    let mut ids = for_bob.clone();
    ids.extend([for_carol.clone(), withdrawn.clone(), unknown.clone()]);
    let answer = rt.block_on(as_bob.ack_many(&ids, None)).unwrap();
    let mut acked: Vec<String> = answer.acked.iter().map(|s| s.id.clone()).collect();
    acked.sort();
    let mut want = for_bob.clone();
    want.sort();
    assert_eq!(acked, want);
    for st in &answer.acked {
        assert_eq!(st.recipients.len(), 1, "only Bob's own entry");
        assert_eq!((st.recipients[0].fpr.clone(), st.recipients[0].state), (bob.fpr(), protocol::DeliveryState::Retrieved));
    }
    let mut missing = answer.not_found.clone();
    missing.sort();
    let mut want = vec![for_carol.clone(), withdrawn.clone(), unknown];
    want.sort();
    assert_eq!(missing, want, "another's, withdrawn and unknown ids are all just not found");
    assert!(!o.data.join("locks").join(client::sha256_hex(b"never stored")).exists(), "no lock file left for an id that names nothing");
    let log = o.server.log();
    assert!(log.contains(r#"target="/v1/acks" status=200"#) && !log.contains("/ack\""), "one batch request, no single acks:\n{log}");
    assert_eq!(poll(&as_bob, &bob), 0, "Bob's are retrieved");
    assert_eq!(poll(&as_carol, &carol), 1, "Carol's is untouched");
    for id in &for_bob {
        assert_eq!(rt.block_on(as_alice.status(id)).unwrap().recipients[0].state, protocol::DeliveryState::Retrieved);
    }
    let st = rt.block_on(as_alice.status(&withdrawn)).unwrap();
    assert_eq!(st.recipients[0].state, protocol::DeliveryState::Unsent, "an ack does not reopen a withdrawn message");

    // Hostile batches: refused whole, before anything changes.
    let send = |body: serde_json::Value| {
        let body = serde_json::to_vec(&body).unwrap();
        let sig = stubmail::auth::sign_request(&carol, &o.url(), "POST", "/v1/acks", &client::sha256_hex(&body), stubmail::time::unix_now()).unwrap();
        common::send_signed("POST", &format!("{}v1/acks", o.url()), &sig, body)
    };
    let too_many: Vec<String> = (0..protocol::MAX_ACK_BATCH + 1).map(|i| client::sha256_hex(format!("{i}").as_bytes())).collect();
    for (what, body) in [
        ("no ids", serde_json::json!({"ids": []})),
        ("too many ids", serde_json::json!({"ids": too_many, "device": "x"})),
        ("a path in an id", serde_json::json!({"ids": [for_carol.clone(), "../../meta/x"]})),
        ("an upper-case id", serde_json::json!({"ids": [for_carol.to_uppercase()]})),
        ("a bad device", serde_json::json!({"ids": [for_carol.clone()], "device": "a/b"})),
        ("not a list", serde_json::json!({"ids": for_carol.clone()})),
    ] {
        assert_eq!(send(body), 400, "{what}");
    }
    assert_eq!(poll(&as_carol, &carol), 1, "nothing of Carol's changed");
    // Signed by no one: 401.
    let status = common::send_signed("POST", &format!("{}v1/acks", o.url()), "v2; fpr=0; ts=0; nonce=0; sig=AA", br#"{"ids":[]}"#.to_vec());
    assert_eq!(status, 401);
}

/// `POST /v1/notify` (PROTOCOL.md §8.3): the stubs of several messages in
/// one request, each checked as a single notify checks it — a message of
/// another account or a stub for another message is skipped; malformed or
/// oversized batches are refused whole.
#[test]
fn stubs_of_several_messages_go_in_one_request_each_checked() {
    use base64::Engine as _;
    let root = tempfile::tempdir().unwrap();
    let o = Outbox::start(root.path(), "outbox");
    let rt = rt();
    let (alice, mallory) = (User::init(root.path(), "alice", "alice@example.org", &o.url()), User::init(root.path(), "mallory", "mallory@example.org", &o.url()));
    o.add_account(&alice);
    o.add_account(&mallory);
    let me = Arc::new(Identity::load(&alice.home.join("secret.pgp")).unwrap());
    let other = Arc::new(Identity::load(&mallory.home.join("secret.pgp")).unwrap());
    let device = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    device.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    let bob = Identity::generate_with(None, "bob@example.net", "http://127.0.0.1:9/", Some(&format!("udp://{}", device.local_addr().unwrap()))).unwrap();
    let http = client::http_client().unwrap();
    let (as_alice, as_mallory) = (OutboxClient::new(http.clone(), &o.url(), me.clone()).unwrap(), OutboxClient::new(http, &o.url(), other.clone()).unwrap());
    let upload = |c: &OutboxClient, text: &str| {
        let file = root.path().join("ct");
        std::fs::write(&file, text).unwrap();
        let id = client::sha256_hex(text.as_bytes());
        rt.block_on(c.upload(&id, &[bob.fpr()], &file)).unwrap();
        id
    };
    let ids: Vec<String> = (0..3).map(|i| upload(&as_alice, &format!("Alice's {i}"))).collect();
    let mallorys = upload(&as_mallory, "Mallory's");
    assert_eq!(poll_status(&bob, &bob.cert(), &o.url(), &o.url()), 200, "Bob presents his certificate");
    let stub_for = |id: &str| {
        let stub = protocol::udp::Stub { sender: me.fpr(), recipient: bob.fpr(), id: id.to_string(), size: 8, made: stubmail::time::unix_now(), outbox: o.url() };
        let sig = me.sign_detached(&stub.signed_part().unwrap()).unwrap();
        protocol::NotifyStub { cert: pgp::armored(&bob.cert()).unwrap(), stub: base64::engine::general_purpose::STANDARD.encode(stub.encode(&sig).unwrap()) }
    };
    let batch = protocol::NotifyBatchRequest {
        messages: vec![
            protocol::NotifyMessage { id: ids[0].clone(), stubs: vec![stub_for(&ids[0])] },
            protocol::NotifyMessage { id: ids[1].clone(), stubs: vec![stub_for(&ids[1])] },
            // Another account's message, and a stub made for another message.
            protocol::NotifyMessage { id: mallorys.clone(), stubs: vec![stub_for(&mallorys)] },
            protocol::NotifyMessage { id: ids[2].clone(), stubs: vec![stub_for(&ids[0])] },
        ],
    };
    assert_eq!(rt.block_on(as_alice.notify_many(&batch)).unwrap().accepted, 2);
    // The same stubs handed over again, twice in one batch: each counts
    // (and is sent) once.
    let again = protocol::NotifyBatchRequest { messages: vec![batch.messages[0].clone(), batch.messages[0].clone()] };
    assert_eq!(rt.block_on(as_alice.notify_many(&again)).unwrap().accepted, 1);
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = device.recv(&mut buf) {
        let (stub, _, _) = protocol::udp::Stub::decode(&buf[..n]).unwrap();
        seen.insert(stub.id);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, ids[..2].iter().cloned().collect(), "the two good stubs went out");
    assert!(o.server.log().contains(r#"target="/v1/notify" status=202"#));
    // Malformed or oversized: 400, nothing queued.
    let send = |body: serde_json::Value| {
        let body = serde_json::to_vec(&body).unwrap();
        let sig = stubmail::auth::sign_request(&me, &o.url(), "POST", "/v1/notify", &client::sha256_hex(&body), stubmail::time::unix_now()).unwrap();
        common::send_signed("POST", &format!("{}v1/notify", o.url()), &sig, body)
    };
    let one = serde_json::to_value(&batch.messages[2]).unwrap();
    let many: Vec<serde_json::Value> = (0..protocol::MAX_NOTIFY_BATCH + 1).map(|_| one.clone()).collect();
    let stub = serde_json::to_value(stub_for(&ids[2])).unwrap();
    // (Without the certificate, so that 1,001 fit in the body limit.)
    let small = serde_json::json!({"cert": "", "stub": stub["stub"]});
    let stubs: Vec<serde_json::Value> = (0..protocol::MAX_RECIPIENTS + 1).map(|_| small.clone()).collect();
    for (what, body) in [
        ("no messages", serde_json::json!({"messages": []})),
        ("101 messages", serde_json::json!({"messages": many})),
        ("1001 stubs", serde_json::json!({"messages": [{"id": ids[2], "stubs": stubs}]})),
        ("a path for an id", serde_json::json!({"messages": [{"id": "../meta/x", "stubs": [stub]}]})),
        ("not a list", serde_json::json!({"messages": {"id": ids[2]}})),
    ] {
        assert_eq!(send(body), 400, "{what}");
    }
    // Whatever arrives now (the outbox resends after 2 s) is one of the two.
    device.set_read_timeout(Some(std::time::Duration::from_millis(2500))).unwrap();
    for _ in 0..10 {
        let Ok(n) = device.recv(&mut buf) else { break };
        let (stub, _, _) = protocol::udp::Stub::decode(&buf[..n]).unwrap();
        assert!(ids[..2].contains(&stub.id), "only the accepted stubs are ever sent: {}", stub.id);
    }
}

/// A request body that stalls (the network broke mid-request) is answered
/// `408` — temporary, so the client sends it again — for an upload, an ack
/// and a batch of acks alike, never a permanent `400`.
#[test]
fn a_stalled_body_is_a_timeout_the_client_retries() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    let o = Outbox::start(root.path(), "outbox");
    let alice = Arc::new(Identity::generate(None, "alice@example.org", &o.url()).unwrap());
    let key = root.path().join("alice.asc");
    std::fs::write(&key, pgp::armored(&alice.cert()).unwrap()).unwrap();
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&o.data).arg("--key").arg(&key));
    let bob = Identity::generate(None, "bob@example.net", "http://127.0.0.1:9/").unwrap();
    had_mail_before(&o.url(), &o.data, bob.fpr().as_str());
    assert_eq!(poll_status(&bob, &bob.cert(), &o.url(), &o.url()), 200);
    let port: u16 = o.url().trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let id = client::sha256_hex(b"some message");
    let acks = format!(r#"{{"ids":["{id}"]}}"#);
    let requests: Vec<(&Identity, &str, String, Vec<u8>)> = vec![
        (&alice, "PUT", format!("/v1/messages/{id}"), b"some message".to_vec()),
        (&bob, "POST", format!("/v1/messages/{id}/ack"), b"{}".to_vec()),
        (&bob, "POST", "/v1/acks".to_string(), acks.into_bytes()),
    ];
    let mut held = Vec::new();
    for (who, method, path, body) in &requests {
        let digest = client::sha256_hex(body);
        let sig = stubmail::auth::sign_request(who, &o.url(), method, path, &digest, stubmail::time::unix_now()).unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nStubmail-Signature: {sig}\r\nStubmail-Content-SHA256: {digest}\r\nStubmail-Recipients: {}\r\nContent-Length: {}\r\n\r\n",
            bob.fpr(),
            body.len()
        )
        .unwrap();
        s.write_all(&body[..body.len() / 2]).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        held.push((path.clone(), s));
    }
    for (path, mut s) in held {
        let mut answer = [0u8; 256];
        let n = s.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
    }
}
