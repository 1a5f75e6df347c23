//! End to end: a message from Alice's mail client reaches Bob's Maildir
//! through smtp2stub, Alice's outbox (post_manager) and Bob's poller
//! (http2mbox), all real processes on loopback ports chosen at run time,
//! driven by independent clients (Python's smtplib, swaks, gpg).

mod common;

use std::process::Command;

use common::*;

fn pair() -> Pair {
    Pair::start(true)
}

fn wait_stored(u: &User, n: usize) {
    wait_states(u, n, "stored");
}

#[test]
fn alice_to_bob_through_all_three_programs() {
    let p = pair();
    let smtp = p.alice.smtp2stub(p.root.path());
    let message = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n\
Subject: Pull, not push\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <e2e-1@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
Hi Bob,\r\n.a line that starts with a dot\r\nGrüße aus dem Postausgang.\r\n";
    let reply = smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], message).unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    wait_stored(&p.alice, 1);
    assert!(p.bob.maildir_new().is_empty(), "nothing arrives before Bob polls");

    let out = p.bob.http2mbox_once();
    assert!(out.contains("delivered 1"), "{out}");
    let files = p.bob.maildir_new();
    assert_eq!(files.len(), 1);
    let got = String::from_utf8(std::fs::read(&files[0]).unwrap()).unwrap();
    // Body and headers intact (Maildir stores LF line endings).
    let original = message.replace("\r\n", "\n");
    assert!(got.ends_with(&original), "delivered message differs:\n{got}");
    // Trace headers: ours on top, smtp2stub's Received below them.
    let alice_fpr = p.alice.fingerprint();
    assert!(got.contains(&format!("Stubmail-Sender-Fingerprint: {alice_fpr}\n")), "{got}");
    assert!(got.contains("stubmail=pass") && got.contains("(from=pass)"), "{got}");
    assert!(got.contains("by localhost (smtp2stub) with ESMTP id"), "{got}");
    assert!(got.starts_with("Return-Path: <alice@example.org>\n"), "{got}");

    // The outbox reports it retrieved, as seen by the sender.
    let status = p.alice.status_json();
    assert_eq!(status[0]["state"], "retrieved", "{status:#}");
    assert_eq!(status[0]["recipient"], "bob@example.net");

    // Exactly once: another poll delivers nothing new.
    let out = p.bob.http2mbox_once();
    assert!(out.contains("delivered 0"), "{out}");
    assert_eq!(p.bob.maildir_new().len(), 1);
}

#[test]
fn swaks_pipelined_submission_and_no_open_relay() {
    let swaks = require("swaks");
    let p = pair();
    let smtp = p.alice.smtp2stub(p.root.path());
    let port = smtp.port().to_string();
    let (user, pass) = p.alice.smtp_login().expect("stubmail init made an SMTP password");
    let auth = ["--auth", "PLAIN", "--auth-user", user.as_str(), "--auth-password", pass.as_str()];
    let out = ok(Command::new(&swaks).args([
        "--server", "127.0.0.1", "--port", &port, "--pipeline", "--from", "alice@example.org", "--to",
        "bob@example.net", "--header", "Subject: via swaks", "--body", "pipelined body",
    ]).args(auth));
    let text = stdout(&out);
    assert!(text.contains("250-PIPELINING") && !text.contains("<** "), "{text}");
    assert!(text.contains("250 2.0.0 OK: queued as"), "{text}");

    // Never an open relay: a foreign sender and an unknown recipient are refused.
    let out = Command::new(&swaks)
        .args(["--server", "127.0.0.1", "--port", &port, "--from", "mallory@evil.example", "--to", "bob@example.net"])
        .args(auth)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.7.1"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new(&swaks)
        .args(["--server", "127.0.0.1", "--port", &port, "--from", "alice@example.org", "--to", "victim@elsewhere.example"])
        .args(auth)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.1.1"), "{}", String::from_utf8_lossy(&out.stdout));

    wait_stored(&p.alice, 1);
    assert!(p.bob.http2mbox_once().contains("delivered 1"));
    let got = std::fs::read_to_string(&p.bob.maildir_new()[0]).unwrap();
    assert!(got.contains("Subject: via swaks") && got.contains("pipelined body"), "{got}");
}

#[test]
fn a_sender_key_revoked_mid_flight_is_not_delivered_and_nothing_is_lost() {
    use stubmail::openpgp::{self, cert::prelude::*, parse::Parse, serialize::SerializeInto, types::ReasonForRevocation};
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: in flight\r\n\r\nhi\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_states(&p.alice, 1, "stored");
    // Alice's key is compromised and revoked while the message waits; Bob
    // learns of it (an update of a known contact is always taken).
    let tsk = openpgp::Cert::from_file(p.alice.home.join("secret.pgp")).unwrap();
    let mut signer = tsk.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
    let rev = CertRevocationBuilder::new()
        .set_reason_for_revocation(ReasonForRevocation::KeyCompromised, b"laptop stolen")
        .unwrap()
        .build(&mut signer, &tsk, None)
        .unwrap();
    let revoked = tsk.insert_packets(rev).unwrap().0.strip_secret_key_material();
    let file = p.root.path().join("alice-revoked.asc");
    std::fs::write(&file, revoked.armored().to_vec().unwrap()).unwrap();
    let out = stdout(&ok(p.bob.stubmail().args(["keys", "import"]).arg(&file)));
    assert!(out.contains("NOT USABLE"), "{out}");
    // Bob's poll no longer trusts Alice: nothing is fetched or delivered...
    assert!(p.bob.http2mbox_once().contains("delivered 0"));
    assert!(p.bob.maildir_new().is_empty());
    // ...and nothing is lost: the outbox still holds it, and says so.
    assert_eq!(states(&p.alice), vec!["stored"]);
}

#[test]
fn tampered_ciphertext_in_the_outbox_is_refused_and_not_acked() {
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: tamper\r\n\r\nhi\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_states(&p.alice, 1, "stored");
    // A hostile outbox (or a bad disk) flips one bit of the stored message.
    let stored = std::fs::read_dir(p.outbox.data.join("messages")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    let out = p.bob.http2mbox_once_with_log();
    assert!(out.contains("delivered 0") && out.contains("rejected 1") && out.contains("does not match the id"), "{out}");
    assert!(p.bob.maildir_new().is_empty());
    assert_eq!(states(&p.alice), vec!["stored"], "not acked: the sender sees it undelivered");
}

#[test]
fn mail_signed_by_a_stranger_is_never_delivered() {
    let p = pair();
    // Mallory is another user of the same outbox provider, unknown to Bob.
    let mallory = User::init(p.root.path(), "mallory", "mallory@example.org", &p.outbox.url());
    p.outbox.add_account(&mallory);
    mallory.import(&p.bob.export());
    let smtp = mallory.smtp2stub(p.root.path());
    let forged = "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: urgent wire transfer\r\n\r\npay now\r\n";
    assert!(smtplib_send(smtp.port(), "mallory@example.org", &["bob@example.net"], forged).unwrap().starts_with("250"));
    wait_stored(&mallory, 1);

    // Bob only asks about senders in his keyring: Mallory's mail is not even listed.
    assert!(p.bob.http2mbox_once().contains("delivered 0"));
    assert!(p.bob.maildir_new().is_empty());

    // A hostile outbox now relabels Mallory's message as Alice's.
    let id = mallory.status_json()[0]["id"].as_str().unwrap().to_string();
    let meta_path = p.outbox.data.join("meta").join(format!("{id}.json"));
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["sender"] = p.alice.fingerprint().into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();

    let out = p.bob.http2mbox_once_with_log();
    assert!(out.contains("delivered 0") && out.contains("rejected 1"), "{out}");
    assert!(out.contains(&format!("no valid signature by {}", p.alice.fingerprint())), "{out}");
    assert!(p.bob.maildir_new().is_empty(), "a message not signed by Alice must not be delivered as Alice's");
    // ... and it was not acked.
    assert_eq!(rcpt_state(&p.outbox.data, &id, &p.bob.fingerprint()), "stored");
}

/// One recipient's delivery state of a message, read from the outbox's
/// data directory (`rcpt/<id>.tab`: a 32-byte header, then 32-byte
/// records, each a fingerprint's 20 bytes and a state byte;
/// docs/OPERATING.md).
fn rcpt_state(data: &std::path::Path, id: &str, fpr: &str) -> String {
    let table = std::fs::read(data.join("rcpt").join(format!("{id}.tab"))).unwrap();
    assert_eq!(&table[..8], b"SMRCPT\0\x01");
    let rec = table[32..].chunks_exact(32).find(|r| hex::encode_upper(&r[..20]) == fpr).expect("the recipient's record");
    ["", "stored", "notified", "retrieved", "expired", "unsent"][rec[20] as usize].to_string()
}


#[test]
fn gpg_decrypts_what_stubmail_writes() {
    let p = pair();
    let smtp = p.alice.smtp2stub(p.root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: for gpg\r\n\r\nreadable by GnuPG 2.2\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_stored(&p.alice, 1);
    let id = p.alice.status_json()[0]["id"].as_str().unwrap().to_string();
    let stored = p.outbox.data.join("messages").join(&id);

    let gh = p.root.path().join("gnupg");
    std::fs::create_dir_all(&gh).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o700)).unwrap();
    ok(gpg_nopass(&gh).arg("--import").arg(p.bob.home.join("secret.pgp")));
    ok(gpg_nopass(&gh).arg("--import").arg(p.alice.export()));
    let out = ok(gpg_nopass(&gh).args(["--status-fd", "2", "--decrypt"]).arg(&stored));
    let plain = stdout(&out);
    assert!(plain.contains("readable by GnuPG 2.2") && plain.contains("Subject: for gpg"), "{plain}");
    let status = String::from_utf8_lossy(&out.stderr);
    assert!(status.contains(&format!("VALIDSIG {}", p.alice.fingerprint())), "{status}");
    assert!(status.contains("DECRYPTION_OKAY"), "{status}");
}

#[test]
fn keyring_imports_gpg_exports_and_refuses_bad_certificates() {
    let root = tempfile::tempdir().unwrap();
    let u = User::init(root.path(), "u", "u@example.org", "http://127.0.0.1:9/");
    let gh = root.path().join("gnupg");
    std::fs::create_dir_all(&gh).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o700)).unwrap();
    let list = |u: &User| stdout(&ok(u.stubmail().args(["keys", "list"])));

    // An ordinary GnuPG user: binary `gpg --export` output on stdin.
    ok(gpg_nopass(&gh).args(["--quick-gen-key", "Carol <carol@example.com>", "future-default", "default", "never"]));
    let export = ok(gpg_nopass(&gh).args(["--export", "carol@example.com"])).stdout;
    let mut c = u.stubmail();
    c.args(["keys", "import", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&export).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("carol@example.com no outbox"), "{}", stdout(&out));

    let before = list(&u);
    let bad = |name: &str, bytes: &[u8], expect: &str| {
        let f = root.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        let err = fails(u.stubmail().args(["keys", "import"]).arg(&f));
        assert!(err.contains(expect), "{name}: {err}");
        assert_eq!(list(&u), before, "{name}: a refused import must change nothing");
    };
    bad("corrupt.asc", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64 at all\n-----END PGP PUBLIC KEY BLOCK-----\n", "");
    bad("empty.asc", b"", "");
    // No email address in the User ID.
    ok(gpg_nopass(&gh).args(["--quick-gen-key", "Just A Name", "future-default", "default", "never"]));
    bad("noemail.pgp", &ok(gpg_nopass(&gh).args(["--export", "Just A Name"])).stdout, "no valid User ID with an email");
    // Expired: made a year ago, valid for a day.
    ok(gpg_nopass(&gh).args(["--faked-system-time", "20250101T000000", "--quick-gen-key", "Old <old@example.com>", "future-default", "default", "1d"]));
    bad("expired.pgp", &ok(gpg_nopass(&gh).args(["--export", "old@example.com"])).stdout, "expired");
    // Revoked: apply the revocation certificate GnuPG made at generation.
    ok(gpg_nopass(&gh).args(["--quick-gen-key", "Gone <gone@example.com>", "future-default", "default", "never"]));
    let fpr = gpg_fingerprint(&gh, "gone@example.com");
    let rev = std::fs::read_to_string(gh.join("openpgp-revocs.d").join(format!("{fpr}.rev"))).unwrap();
    let rev_file = root.path().join("rev.asc");
    std::fs::write(&rev_file, rev.replace(":-----BEGIN", "-----BEGIN")).unwrap();
    ok(gpg_nopass(&gh).arg("--import").arg(&rev_file));
    bad("revoked.pgp", &ok(gpg_nopass(&gh).args(["--export", "gone@example.com"])).stdout, "revoked");

    // A whole `gpg --export` at once, as a GnuPG user moves an address
    // book: the usable keys go in, each refused one is named with its
    // address and reason, and a summary ends the report.
    ok(gpg_nopass(&gh).args(["--quick-gen-key", "Dave <dave@example.com>", "future-default", "default", "never"]));
    let all = root.path().join("all.pgp");
    std::fs::write(&all, ok(gpg_nopass(&gh).arg("--export")).stdout).unwrap();
    let out = ok(u.stubmail().args(["keys", "import"]).arg(&all));
    let (so, se) = (stdout(&out), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(so.contains("imported") && so.contains("dave@example.com") && so.contains("carol@example.com"), "{so}");
    assert!(se.contains("old@example.com") && se.contains("expired on"), "{se}");
    assert!(se.contains("gone@example.com") && se.contains("revoked"), "{se}");
    assert!(se.contains("no valid User ID with an email"), "{se}");
    assert!(so.contains("5 certificate(s): 2 imported, 3 skipped"), "{so}");
    assert!(list(&u).contains("dave@example.com"));
    // Secret key material: only the public part goes into the keyring.
    ok(gpg_nopass(&gh).args(["--quick-gen-key", "Erin <erin@example.com>", "future-default", "default", "never"]));
    let secret = root.path().join("erin-secret.pgp");
    std::fs::write(&secret, ok(gpg_nopass(&gh).args(["--export-secret-keys", "erin@example.com"])).stdout).unwrap();
    let out = ok(u.stubmail().args(["keys", "import"]).arg(&secret));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only its public part is imported"), "{out:?}");
    for f in std::fs::read_dir(u.home.join("keyring")).unwrap() {
        let c = stubmail::pgp::parse_certs(&std::fs::read(f.unwrap().path()).unwrap()).map(|mut v| v.remove(0));
        assert!(c.is_err() || !c.unwrap().is_tsk(), "secret key material in the keyring");
    }
    // Our own key: nothing to import, and the message says why.
    let err = fails(u.stubmail().args(["keys", "import"]).arg(u.export()));
    assert!(err.contains("your own key") && err.contains("nothing was imported"), "{err}");

    // Remove by address; then it is gone.
    ok(u.stubmail().args(["keys", "remove", "carol@example.com"]));
    assert!(!list(&u).contains("carol@example.com"));
    let err = fails(u.stubmail().args(["keys", "remove", "carol@example.com"]));
    assert!(err.contains("no contact matches"), "{err}");
}

#[test]
fn loose_secret_key_permissions_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let u = User::init(root.path(), "u", "u@example.org", "http://127.0.0.1:9/");
    let key = u.home.join("secret.pgp");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    for prog in ["smtp2stub", "http2mbox"] {
        let mut c = bin_cmd(prog);
        c.arg("--home").arg(&u.home).arg("--once");
        if prog == "smtp2stub" {
            c = bin_cmd(prog);
            c.arg("--home").arg(&u.home).args(["--listen", "127.0.0.1:0"]);
        }
        let err = fails(&mut c);
        assert!(err.contains("chmod 600"), "{prog}: {err}");
    }
    let err = fails(u.stubmail().args(["keys", "export"]));
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn bcc_recipient_gets_a_separate_copy() {
    let p = pair();
    let carol = User::init(p.root.path(), "carol", "carol@example.com", "http://127.0.0.1:9/");
    p.alice.import(&carol.export());
    carol.import(&p.alice.export());
    let smtp = p.alice.smtp2stub(p.root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: bcc\r\n\r\nhello\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net", "carol@example.com"], msg)
        .unwrap()
        .starts_with("250"));
    wait_stored(&p.alice, 2);
    let status = p.alice.status_json();
    let ids: Vec<&str> = status.as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_ne!(ids[0], ids[1], "the Bcc recipient must get a ciphertext of their own");
    assert!(p.bob.http2mbox_once().contains("delivered 1"));
    assert!(carol.http2mbox_once().contains("delivered 1"));
    let bob_copy = std::fs::read_to_string(&p.bob.maildir_new()[0]).unwrap();
    assert!(!bob_copy.contains("carol"), "{bob_copy}");
}

/// A message carrying a flood of session-key packets — 100,000 copies of
/// the reader's own and 100,000 password-based ones ahead of the real
/// ones (SECURITY.md row 96) — is read in linear time: only the first few
/// of the reader's reach the decryptor, whose grammar check is quadratic
/// in the packets it sees. Without that, this message took hours.
#[test]
fn a_flood_of_session_keys_is_read_in_linear_time() {
    use stubmail::openpgp::parse::{PacketParser, PacketParserResult, Parse};
    use stubmail::openpgp::serialize::SerializeInto;
    use stubmail::openpgp::Packet;
    let p = pair();
    let alice = std::sync::Arc::new(stubmail::Identity::load(&p.alice.home.join("secret.pgp")).unwrap());
    let bob = stubmail::pgp::parse_certs(&std::fs::read(p.bob.export()).unwrap()).unwrap().remove(0);
    let text = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: flooded\r\n\r\nstill readable\r\n";
    let mut ct = Vec::new();
    stubmail::pgp::sign_encrypt(&alice, std::slice::from_ref(&bob), &mut &text[..], &mut ct).unwrap();
    // Bob's own session-key packet, as the sender wrote it.
    let bobs_keys: Vec<_> = bob.keys().map(|k| k.key().key_handle()).collect();
    let mut ppr = PacketParser::from_bytes(&ct).unwrap();
    let mut bobs = None;
    while let PacketParserResult::Some(pp) = ppr {
        if let Packet::PKESK(k) = &pp.packet
            && k.recipient().is_some_and(|r| bobs_keys.iter().any(|h| r.aliases(h)))
        {
            bobs = Some(Packet::from(k.clone()).to_vec().unwrap());
        }
        if !matches!(pp.packet, Packet::PKESK(_)) {
            break;
        }
        ppr = pp.next().unwrap().1;
    }
    let bobs = bobs.expect("a session key for Bob");
    let mut hostile = Vec::with_capacity(100_000 * (bobs.len() + 6) + ct.len());
    for _ in 0..100_000 {
        hostile.extend_from_slice(&bobs);
        hostile.extend_from_slice(&[0xc3, 0x04, 0x04, 0x09, 0x00, 0x02]);
    }
    hostile.extend_from_slice(&ct);
    let id = stubmail::client::sha256_hex(&hostile);
    let file = p.root.path().join("flooded");
    std::fs::write(&file, &hostile).unwrap();
    let c = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &p.outbox.url(), alice.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(c.upload(&id, &[stubmail::pgp::fpr_of(&bob)], &file)).unwrap();
    // A hang guard, not a speed test: linear reading takes a second or two.
    let mut child = bin_cmd("http2mbox").arg("--home").arg(&p.bob.home).arg("--once").stdout(std::process::Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("http2mbox still reading the flooded message after 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = stdout(&child.wait_with_output().unwrap());
    assert!(out.contains("delivered 1"), "{out}");
    let got = std::fs::read_to_string(&p.bob.maildir_new()[0]).unwrap();
    assert!(got.contains("still readable"), "{got}");
}
