//! smtp2stub against real clients and servers: Python's smtplib (8BITMIME,
//! SMTPUTF8, STARTTLS, AUTH), Postfix's smtp-source (many concurrent HELO
//! sessions) and smtp-sink (the SMTP fallback relay), WKD key discovery
//! from a real post_manager, and a large message in bounded memory.

mod common;

use std::process::Command;

use common::*;

fn setup(alice_knows_bob: bool) -> Pair {
    Pair::start(alice_knows_bob)
}

#[test]
fn smtplib_with_8bitmime_and_an_smtputf8_address() {
    let s = setup(true);
    s.alice.edit_config(|t| {
        table(t, "identity").insert("aliases".into(), toml::Value::Array(vec!["alíce@example.org".into()]));
    });
    let smtp = s.alice.smtp2stub(s.root.path());
    let script = r#"
import smtplib, sys
s = login_smtp("127.0.0.1", int(sys.argv[1]))
s.ehlo()
assert s.has_extn("smtputf8") and s.has_extn("8bitmime"), s.esmtp_features
msg = "From: Alíce <alíce@example.org>\r\nTo: bob@example.net\r\nSubject: Grüße\r\n\r\nÜmlaut body\r\n".encode()
s.sendmail("alíce@example.org", ["bob@example.net"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
s.quit()
"#;
    let (ok_, out) = python(script, &[&smtp.port().to_string()]);
    assert!(ok_, "{out}");
    wait_states(&s.alice, 1, "stored");
    assert!(s.bob.http2mbox_once().contains("delivered 1"));
    let got = std::fs::read_to_string(&s.bob.maildir_new()[0]).unwrap();
    assert!(got.contains("Subject: Grüße\n") && got.ends_with("\n\nÜmlaut body\n"), "{got}");
    // The From: alias is not an address of the signing key: flagged, still delivered.
    assert!(got.contains("(from=fail)"), "{got}");
}

#[test]
fn smtp_source_many_concurrent_sessions() {
    let source = require("smtp-source");
    let s = setup(true);
    // smtp-source cannot AUTH: the documented opt-out for single-user machines.
    s.alice.edit_config(|t| {
        table(t, "smtp").insert("auth".into(), "loopback-open".into());
    });
    let smtp = s.alice.smtp2stub(s.root.path());
    let out = ok(Command::new(source).args([
        "-s", "10", "-m", "100", "-l", "4096", "-f", "alice@example.org", "-t", "bob@example.net", "-M", "client.test",
    ]).arg(&smtp.addr));
    let _ = out;
    wait_states(&s.alice, 100, "stored");
    let got = s.bob.http2mbox_once();
    assert!(got.contains("delivered 100"), "{got}");
    assert_eq!(s.bob.maildir_new().len(), 100);
    wait_states(&s.alice, 100, "retrieved");
}

fn use_relay(u: &User, port: u16) {
    u.edit_config(|t| {
        let r = table(t, "relay");
        r.insert("host".into(), "127.0.0.1".into());
        r.insert("port".into(), (port as i64).into());
        r.insert("tls".into(), "none".into());
    });
}

#[test]
fn mixed_recipients_take_their_own_paths_through_the_relay() {
    let s = setup(true);
    let (mut sink_proc, port, dump) = sink(s.root.path(), &[]);
    use_relay(&s.alice, port);
    let smtp = s.alice.smtp2stub(s.root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net, dave@plain.example\r\nSubject: mixed\r\n\r\nboth ways\r\n";
    let reply = smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net", "dave@plain.example"], msg).unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    wait_for("both deliveries", 60, || {
        let st = states(&s.alice);
        (st.len() == 2 && st.contains(&"stored".to_string()) && st.contains(&"relayed".to_string())).then_some(())
    });
    let dumped: Vec<_> = std::fs::read_dir(&dump).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dumped.len(), 1);
    let text = std::fs::read_to_string(&dumped[0]).unwrap();
    assert!(text.contains("X-Rcpt-Args: <dave@plain.example>") && !text.contains("<bob@example.net>\n"), "{text}");
    assert!(text.contains("Subject: mixed") && text.contains("both ways"), "{text}");
    assert!(s.bob.http2mbox_once().contains("delivered 1"));
    let _ = sink_proc.kill();
}

#[test]
fn relayed_mail_to_a_gnupg_user_is_pgp_mime_and_carries_autocrypt() {
    let s = setup(true);
    // Carol uses GnuPG and has no outbox; Alice imported her key.
    let gh = s.root.path().join("carol-gnupg");
    ok(gpg_nopass(&gh).args(["--quick-gen-key", "Carol <carol@gpg.example>", "future-default", "default", "never"]));
    let carol_key = s.root.path().join("carol.asc");
    std::fs::write(&carol_key, ok(gpg_nopass(&gh).args(["--armor", "--export", "carol@gpg.example"])).stdout).unwrap();
    s.alice.import(&carol_key);
    ok(gpg_nopass(&gh).arg("--import").arg(s.alice.export()));
    let (mut sink_proc, port, dump) = sink(s.root.path(), &[]);
    use_relay(&s.alice, port);
    let smtp = s.alice.smtp2stub(s.root.path());
    let msg = "From: Alice <alice@example.org>\r\nTo: carol@gpg.example, dave@plain.example\r\nSubject: the secret plan\r\n\
               MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, meet at noon\r\n";
    let reply = smtplib_send(smtp.port(), "alice@example.org", &["carol@gpg.example", "dave@plain.example"], msg).unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    wait_for("both relayed", 60, || (states(&s.alice) == ["relayed", "relayed"]).then_some(()));
    let dumped: Vec<String> = std::fs::read_dir(&dump).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert_eq!(dumped.len(), 2);
    let to_carol = dumped.iter().find(|t| t.contains("X-Rcpt-Args: <carol@gpg.example>")).unwrap();
    let to_dave = dumped.iter().find(|t| t.contains("X-Rcpt-Args: <dave@plain.example>")).unwrap();
    // Dave (no key) gets it as sent, with Alice's key announced (Autocrypt).
    assert!(to_dave.contains("meet at noon") && to_dave.contains("Autocrypt: addr=alice@example.org; prefer-encrypt=mutual; keydata="), "{to_dave}");
    // Carol gets PGP/MIME: nothing of the body in clear; GnuPG decrypts it
    // and finds Alice's good signature and the protected headers inside.
    assert!(!to_carol.contains("meet at noon") && to_carol.contains("Autocrypt: addr=alice@example.org"), "{to_carol}");
    let script = r#"
import email, sys, json
m = email.message_from_string(open(sys.argv[1]).read())
parts = m.get_payload()
print(json.dumps({"type": m.get_content_type(), "protocol": m.get_param("protocol"), "n": len(parts),
  "first": parts[0].get_content_type(), "version": parts[0].get_payload().strip(),
  "second": parts[1].get_content_type(), "armored": parts[1].get_payload(),
  "autocrypt": "".join(m["Autocrypt"].split())}))
"#;
    let f = s.root.path().join("to-carol.eml");
    std::fs::write(&f, to_carol).unwrap();
    let (good, out) = python(script, &[f.to_str().unwrap()]);
    assert!(good, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!((v["type"].as_str(), v["protocol"].as_str(), v["n"].as_u64()), (Some("multipart/encrypted"), Some("application/pgp-encrypted"), Some(2)), "{v}");
    assert_eq!((v["first"].as_str(), v["version"].as_str(), v["second"].as_str()), (Some("application/pgp-encrypted"), Some("Version: 1"), Some("application/octet-stream")));
    let armored = s.root.path().join("part.asc");
    std::fs::write(&armored, v["armored"].as_str().unwrap()).unwrap();
    let out = ok(gpg_nopass(&gh).args(["--status-fd", "2", "--decrypt"]).arg(&armored));
    let (plain, status) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(status.contains("DECRYPTION_OKAY") && status.contains(&format!("VALIDSIG {}", s.alice.fingerprint())), "{status}");
    assert!(plain.contains("protected-headers=\"v1\"") && plain.contains("Subject: the secret plan") && plain.contains("Grüße, meet at noon"), "{plain}");
    assert!(plain.contains("Content-Type: text/plain; charset=utf-8"), "{plain}");
    // The Autocrypt key data is Alice's key, for her address only.
    use base64::Engine as _;
    let keydata = v["autocrypt"].as_str().unwrap().split("keydata=").nth(1).unwrap().to_string();
    let cert = stubmail::pgp::parse_certs(&base64::engine::general_purpose::STANDARD.decode(keydata).unwrap()).unwrap().remove(0);
    assert_eq!(stubmail::pgp::fpr_of(&cert).to_string(), s.alice.fingerprint());
    assert_eq!(stubmail::pgp::emails_of(&cert), vec!["alice@example.org"]);
    // Sent as an alias: Autocrypt names the From: address alone, and the
    // key data holds no other address of hers.
    drop(smtp);
    ok(s.alice.stubmail().args(["identity", "add-address", "a.smith@example.org"]));
    let smtp = s.alice.smtp2stub(s.root.path());
    let msg = "From: A. Smith <a.smith@example.org>\r\nTo: dave@plain.example\r\nSubject: alias\r\n\r\nx\r\n";
    assert!(smtplib_send(smtp.port(), "a.smith@example.org", &["dave@plain.example"], msg).unwrap().starts_with("250"));
    wait_for("relayed", 60, || (states(&s.alice).len() == 3 && !states(&s.alice).contains(&"queued".to_string())).then_some(()));
    let text = std::fs::read_dir(&dump).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).find(|t| t.contains("Subject: alias")).unwrap();
    let unfolded = text.replace("\r\n ", "").replace("\n ", "");
    let line = unfolded.lines().find(|l| l.starts_with("Autocrypt: ")).unwrap();
    assert!(line.starts_with("Autocrypt: addr=a.smith@example.org;"), "{line}");
    let keydata = line.split("keydata=").nth(1).unwrap();
    let cert = stubmail::pgp::parse_certs(&base64::engine::general_purpose::STANDARD.decode(keydata.trim()).unwrap()).unwrap().remove(0);
    assert_eq!(stubmail::pgp::all_emails_of(&cert), vec!["a.smith@example.org"]);
    let _ = sink_proc.kill();
}

#[test]
fn permanent_relay_failure_leaves_a_notice_in_the_senders_mailbox() {
    let s = setup(true);
    let (mut sink_proc, port, _) = sink(s.root.path(), &["-f", "RCPT"]);
    use_relay(&s.alice, port);
    let smtp = s.alice.smtp2stub(s.root.path());
    let msg = "From: alice@example.org\r\nTo: dave@plain.example\r\nSubject: doomed\r\n\r\nx\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["dave@plain.example"], msg).unwrap().starts_with("250"));
    wait_states(&s.alice, 1, "failed");
    let notices = s.alice.maildir_new();
    assert_eq!(notices.len(), 1);
    let n = std::fs::read_to_string(&notices[0]).unwrap();
    assert!(n.contains("Subject: Undelivered Mail: doomed") && n.contains("dave@plain.example"), "{n}");
    assert!(n.contains("Reason: the relay refused the message"), "{n}");
    let _ = sink_proc.kill();
}

#[test]
fn unreachable_relay_keeps_the_message_queued() {
    let s = setup(true);
    use_relay(&s.alice, free_port());
    let smtp = s.alice.smtp2stub(s.root.path());
    let msg = "From: alice@example.org\r\nTo: dave@plain.example\r\nSubject: later\r\n\r\nx\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["dave@plain.example"], msg).unwrap().starts_with("250"));
    let detail = wait_for("a failed attempt", 60, || {
        let st = s.alice.status_json();
        st[0]["detail"].as_str().map(str::to_string)
    });
    assert_eq!(states(&s.alice), vec!["queued"]);
    assert!(detail.contains("127.0.0.1"), "{detail}");
    assert!(s.alice.maildir_new().is_empty(), "a temporary failure is not a failure notice");
}

#[test]
fn no_key_and_no_relay_is_refused_at_rcpt() {
    let s = setup(false);
    let smtp = s.alice.smtp2stub(s.root.path());
    let err = smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], "Subject: x\r\n\r\nx\r\n").unwrap_err();
    assert!(err.contains("RCPT 550") && err.contains("no SMTP relay configured"), "{err}");
}

#[test]
fn wkd_discovery_finds_a_stubmail_key() {
    let s = setup(false);
    // Bob's own outbox publishes his key in its Web Key Directory.
    let bob_outbox = Outbox::start(s.root.path(), "bob-outbox");
    bob_outbox.add_account(&s.bob);
    let url = bob_outbox.url();
    s.alice.edit_config(|t| {
        let d = table(t, "discovery");
        d.insert("wkd".into(), true.into());
        let mut servers = toml::Table::new();
        servers.insert("example.net".into(), url.clone().into());
        d.insert("wkd_servers".into(), servers.into());
    });
    // Web clients may read the directory (the WKD draft asks for CORS);
    // signed endpoints answer without it.
    let script = r#"
import sys, urllib.request, urllib.error
def origin(path):
    try:
        with urllib.request.urlopen(sys.argv[1] + path, timeout=30) as r: return r.headers.get("Access-Control-Allow-Origin")
    except urllib.error.HTTPError as e: return e.headers.get("Access-Control-Allow-Origin")
assert origin(".well-known/openpgpkey/policy") == "*"
assert origin(".well-known/openpgpkey/hu/ybndrfg8ejkmcpqxot1uwisza345h769") == "*"
assert origin("v1/messages") is None
print("ok")
"#;
    let (good, out) = python(script, &[&url]);
    assert!(good, "{out}");
    let smtp = s.alice.smtp2stub(s.root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: found you\r\n\r\nvia WKD\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    let list = stdout(&ok(s.alice.stubmail().args(["keys", "list"])));
    assert!(list.contains("bob@example.net") && list.contains("discovered via WKD"), "{list}");
    wait_states(&s.alice, 1, "stored");
    assert!(s.bob.http2mbox_once().contains("delivered 1"));
    // Importing the key explicitly vouches for it.
    s.alice.import(&s.bob.export());
    assert!(!stdout(&ok(s.alice.stubmail().args(["keys", "list"]))).contains("discovered via WKD"));
}

#[test]
fn starttls_and_auth_when_required() {
    let s = setup(true);
    let (cert, key) = self_signed(s.root.path());
    s.alice.edit_config(|t| {
        let smtp = table(t, "smtp");
        smtp.insert("auth".into(), "required".into());
        smtp.insert("password".into(), "correct horse".into());
        smtp.insert("tls_cert".into(), cert.display().to_string().into());
        smtp.insert("tls_key".into(), key.display().to_string().into());
    });
    let smtp = s.alice.smtp2stub(s.root.path());
    let script = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
s = smtplib.SMTP("127.0.0.1", port)
s.ehlo()
assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
code, _ = s.mail("alice@example.org"); assert code == 530, code
code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUub3JnAGNvcnJlY3QgaG9yc2U="); assert code == 538, code
ctx = ssl.create_default_context(cafile=cafile); ctx.check_hostname = False
s.starttls(context=ctx)
s.ehlo()
assert s.has_extn("auth") and not s.has_extn("starttls"), s.esmtp_features
try:
    s.login("alice@example.org", "wrong"); raise SystemExit("wrong password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code in (535, 454)  # PLAIN, then LOGIN (held at once)
import time; time.sleep(0.3)  # a failure holds the next login for 0.25 s
s.login("alice@example.org", "correct horse")
s.sendmail("alice@example.org", ["bob@example.net"], b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: tls\r\n\r\nsecret\r\n")
s.quit()
print("ok")
"#;
    let (good, out) = python(script, &[&smtp.port().to_string(), &cert.display().to_string()]);
    assert!(good, "{out}");
    wait_states(&s.alice, 1, "stored");

    // STARTTLS command injection: commands pipelined in the clear after
    // STARTTLS must not be executed inside the TLS session.
    let inject = r#"
import socket, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=30)
f = s.makefile("rb")
def reply():
    while True:
        l = f.readline().decode()
        if l[3:4] != "-": return l
reply()
s.sendall(b"EHLO x\r\n"); reply()
s.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<alice@example.org>\r\n")
assert reply().startswith("220"), "no 220 to STARTTLS"
ctx = ssl.create_default_context(cafile=cafile); ctx.check_hostname = False
t = ctx.wrap_socket(s, server_hostname="localhost")
tf = t.makefile("rb")
t.sendall(b"NOOP\r\n")
first = tf.readline().decode()
assert first.startswith("250 2.0.0 OK"), "an injected command was answered: " + first
print("ok")
"#;
    let (good, out) = python(inject, &[&smtp.port().to_string(), &cert.display().to_string()]);
    assert!(good, "{out}");
}

#[test]
fn large_message_passes_in_bounded_memory() {
    let s = setup(true);
    s.alice.edit_config(|t| {
        table(t, "smtp").insert("max_message_size".into(), (300i64 << 20).into());
    });
    let smtp = s.alice.smtp2stub(s.root.path());
    let before = peak_rss_kib(smtp.pid());
    smtplib_send_big(smtp.port(), 128);
    wait_states(&s.alice, 1, "stored");
    let peak = peak_rss_kib(smtp.pid());
    println!("smtp2stub peak RSS: {before} KiB before, {peak} KiB after a 128 MiB message");
    assert!(peak < 64 * 1024, "smtp2stub peak RSS {peak} KiB grew with the message size");
}

/// Alice, whose outbox (on the returned port) is not running yet, and Bob
/// in her keyring.
fn outbox_down() -> (tempfile::TempDir, u16, User, User) {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let alice = User::init(root.path(), "alice", "alice@example.org", &format!("http://127.0.0.1:{port}/"));
    let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    alice.import(&bob.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    (root, port, alice, bob)
}

#[test]
fn outbox_down_retries_at_5_s_doubling_a_restart_retries_at_once_and_nothing_is_lost() {
    let (root, port, alice, bob) = outbox_down();
    bob.import(&alice.export());
    // The outbox is down: the message is accepted and waits in the spool.
    let smtp = alice.smtp2stub(root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: patience\r\n\r\nstill here\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_for("a failed upload attempt", 60, || alice.status_json()[0]["detail"].as_str().map(str::to_string));
    assert_eq!(alice.status_json()[0]["state"], "queued");
    // Retries as README says: 5 s after the first failure, then 10 s.
    let job = |attempts: u64| {
        wait_for(&format!("failed upload {attempts}"), 30, || {
            // (The queue also holds the envelope's lock file.)
            let q = std::fs::read_dir(alice.home.join("spool/queue")).ok()?.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "json"))?;
            let env: serde_json::Value = serde_json::from_slice(&std::fs::read(q).ok()?).ok()?;
            let j = env["jobs"].get(0)?.clone();
            (j["attempts"] == attempts).then_some(j)
        })
    };
    let wait = |j: &serde_json::Value| j["next_try"].as_i64().unwrap() - stubmail::time::unix_now();
    let first = job(1);
    assert!((0..=5).contains(&wait(&first)), "first retry in {} s, README says 5 s: {first}", wait(&first));
    let second = job(2);
    assert!((6..=10).contains(&wait(&second)), "second retry in {} s, README says 10 s: {second}", wait(&second));
    drop(smtp); // SIGKILL: no chance to clean up.

    // The outbox comes up on its address; smtp2stub restarts; no manual step.
    let data = root.path().join("alice-outbox");
    let mut c = bin_cmd("post_manager");
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"]).arg(&data);
    let _outbox = Server::start("alice-outbox", c, root.path());
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&data).arg("--key").arg(alice.export()));
    // A restarted smtp2stub tries its queue at once, not at the 10 s the
    // backoff had set.
    let started = std::time::Instant::now();
    let _smtp = alice.smtp2stub(root.path());
    wait_for("the upload after restart", 90, || (alice.status_json()[0]["state"] == "stored").then_some(()));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(bob.http2mbox_once().contains("delivered 1"));
    assert_eq!(bob.maildir_new().len(), 1);
}

#[test]
fn a_message_unsent_while_queued_is_never_uploaded() {
    let (root, port, alice, _bob) = outbox_down();
    // The outbox is down: the message waits in the spool.
    let smtp = alice.smtp2stub(root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= regret\r\n\r\nx\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    let qid = wait_for("a failed upload", 30, || {
        let st = alice.status_json();
        st[0]["detail"].as_str()?;
        Some(st[0]["queue_id"].as_str().unwrap().to_string())
    });
    // `status` shows the queue id and the decoded Subject; `unsend` takes
    // a prefix of the queue id.
    let status = stdout(&ok(alice.stubmail().arg("status")));
    assert!(status.contains(&qid) && status.contains("Grüße regret") && status.contains("queued"), "{status}");
    let out = stdout(&ok(alice.stubmail().args(["unsend", &qid[..10]])));
    assert!(out.contains("bob@example.net") && out.contains("never uploaded"), "{out}");
    assert_eq!(states(&alice), vec!["unsent"]);
    // The outbox comes back and smtp2stub keeps running: nothing goes up.
    let data = root.path().join("alice-outbox");
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&data).arg("--key").arg(alice.export()));
    let mut c = bin_cmd("post_manager");
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"]).arg(&data);
    let _outbox = Server::start("alice-outbox", c, root.path());
    std::thread::sleep(std::time::Duration::from_secs(6));
    drop(smtp);
    let _smtp = alice.smtp2stub(root.path());
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(std::fs::read_dir(data.join("messages")).map_or(0, |d| d.count()), 0, "an unsent message was uploaded");
    assert_eq!(states(&alice), vec!["unsent"]);
    let err = fails(alice.stubmail().args(["unsend", &qid]));
    assert!(err.contains("never stored"), "{err}");
}

/// Alice with an outbox holding at most `max_bytes`, who knows Bob.
fn limited_outbox(max_bytes: u64) -> (tempfile::TempDir, Outbox, User) {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start(root.path(), "alice-outbox");
    let alice = User::init(root.path(), "alice", "alice@example.org", &outbox.url());
    let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    ok(bin_cmd("post_manager")
        .args(["account", "add", "--max-bytes", &max_bytes.to_string(), "--data"])
        .arg(&outbox.data)
        .arg("--key")
        .arg(alice.export()));
    alice.import(&bob.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    (root, outbox, alice)
}

#[test]
fn an_outbox_over_quota_gets_an_smtp_error_not_a_late_failure() {
    let (root, _outbox, alice) = limited_outbox(4000);
    let smtp = alice.smtp2stub(root.path());
    let small = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: fits\r\n\r\nsmall\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], small).unwrap().starts_with("250"));
    wait_states(&alice, 1, "stored");
    let line = format!("{}\r\n", "x".repeat(70));
    let big = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: too big\r\n\r\n{}", line.repeat(80));
    let err = smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], &big).unwrap_err();
    assert!(err.contains("552") && err.contains("over its quota"), "{err}");
    assert_eq!(alice.status_json().as_array().unwrap().len(), 1, "the refused message was not queued");
}

/// Messages sent together share one answer from the outbox about its
/// limits (a signed round trip per message was the largest cost of
/// accepting mail), yet the limits still hold: what was accepted since the
/// answer counts against them, and a refusal is confirmed by a fresh one.
#[test]
fn limits_are_asked_once_for_messages_sent_together_and_still_hold() {
    let (root, outbox, alice) = limited_outbox(34500);
    let smtp = alice.smtp2stub(root.path());
    // Five messages of about 10,000 bytes in one session, as fast as the
    // client goes: three fit in 34,500 bytes (stored, each is some 700
    // bytes larger), the fourth and fifth do not (stored yet or not).
    let script = r#"
import sys
s = login_smtp("127.0.0.1", int(sys.argv[1]), timeout=60)
for i in range(5):
    body = ("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: %d\r\n\r\n" % i) + ("y" * 76 + "\r\n") * 130
    try:
        s.sendmail("alice@example.org", ["bob@example.net"], body)
        print("250")
    except smtplib.SMTPDataError as e:
        print(e.smtp_code, e.smtp_error.decode())
"#;
    let (good, out) = python(&format!("import smtplib\n{script}"), &[&smtp.port().to_string()]);
    assert!(good, "{out}");
    let codes: Vec<&str> = out.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(codes, ["250", "250", "250", "552", "552"], "{out}");
    assert!(out.contains("over its quota"), "{out}");
    let asked = outbox.server.log().matches("target=\"/v1/account\"").count();
    assert!((1..=3).contains(&asked), "one answer for the accepted messages, one fresh one per refusal: {asked} requests\n{out}");
}

/// Eve's Web Key Directory serves her certificate with a second User ID,
/// Bob's address. Looking up eve@evil.example must not make that key speak
/// for bob@example.net: only Eve's User ID is kept, and mail to Bob is
/// never encrypted to Eve.
#[test]
fn a_wkd_key_claiming_someone_elses_address_speaks_only_for_its_own() {
    use stubmail::openpgp::serialize::SerializeInto;
    use stubmail::openpgp::{packet::signature::SignatureBuilder, packet::UserID, types::SignatureType, Packet};
    let s = setup(false);
    let eve = stubmail::Identity::generate(Some("Eve"), "eve@evil.example", &s.outbox.url()).unwrap();
    let cert = eve.cert();
    let mut kp = eve.signing_keypair().unwrap();
    let uid = UserID::from("Bob <bob@example.net>");
    let template = SignatureBuilder::new(SignatureType::PositiveCertification)
        .set_notation(
            stubmail::pgp::OUTBOX_NOTATION,
            s.outbox.url().as_bytes(),
            stubmail::openpgp::packet::signature::subpacket::NotationDataFlags::empty().set_human_readable(),
            false,
        )
        .unwrap();
    let sig = uid.bind(&mut kp, &cert, template).unwrap();
    let two = cert.insert_packets(vec![Packet::from(uid), sig.into()]).unwrap().0;
    assert_eq!(stubmail::pgp::emails_of(&two).len(), 2);
    // A static WKD (direct method) served by Python's http.server.
    let www = s.root.path().join("eve-wkd");
    let hu = www.join(".well-known/openpgpkey/hu");
    std::fs::create_dir_all(&hu).unwrap();
    std::fs::write(hu.join(stubmail::wkd::local_hash("eve")), two.to_vec().unwrap()).unwrap();
    let port = free_port();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _wkd = Killed(
        std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(&www)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the WKD server", 30, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    s.alice.edit_config(|t| {
        let d = table(t, "discovery");
        d.insert("wkd".into(), true.into());
        let mut servers = toml::Table::new();
        servers.insert("evil.example".into(), format!("http://127.0.0.1:{port}/").into());
        d.insert("wkd_servers".into(), servers.into());
        d.insert("timeout_secs".into(), 2.into());
    });
    let smtp = s.alice.smtp2stub(s.root.path());
    let msg = "From: alice@example.org\r\nTo: eve@evil.example\r\nSubject: hi Eve\r\n\r\nhello\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["eve@evil.example"], msg).unwrap().starts_with("250"));
    let list = stdout(&ok(s.alice.stubmail().args(["keys", "list"])));
    assert!(list.contains(eve.fpr().as_str()) && list.contains("eve@evil.example"), "{list}");
    assert!(!list.contains("bob@example.net"), "Eve's key does not speak for Bob: {list}");
    // Mail to Bob is not routed to Eve's key (Alice has no key for Bob).
    let err = smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], "Subject: x\r\n\r\nx\r\n").unwrap_err();
    assert!(err.contains("RCPT 550"), "{err}");
}

/// An alias added with `stubmail identity add-address` is a User ID of the
/// sender's key: recipients see it verified, after fetching the current
/// key from the sender's outbox by themselves.
#[test]
fn an_address_added_to_the_key_is_verified_at_the_recipient() {
    let s = setup(true);
    let out = stdout(&ok(s.alice.stubmail().args(["identity", "add-address", "alice.smith@example.org"])));
    assert!(out.contains("added alice.smith@example.org"), "{out}");
    let shown = stdout(&ok(s.alice.stubmail().args(["identity", "show"])));
    assert!(shown.contains("alice.smith@example.org") && shown.contains("alice@example.org"), "{shown}");
    // The outbox's operator registers the updated key (Bob keeps the old one).
    s.outbox.add_account(&s.alice);
    let smtp = s.alice.smtp2stub(s.root.path());
    let send = |subject: &str| {
        let msg = format!("From: Alice Smith <alice.smith@example.org>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n\r\nhi\r\n");
        assert!(smtplib_send(smtp.port(), "alice.smith@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    };
    send("from my other address");
    wait_states(&s.alice, 1, "stored");
    // Bob's poller fetches Alice's current key, but takes no address he did
    // not accept (anyone's key can name anyone's address): not yet verified,
    // and the log says how to accept it.
    let out = s.bob.http2mbox_once_with_log();
    assert!(out.contains("delivered 1") && out.contains("stubmail keys refresh"), "{out}");
    let got = std::fs::read_to_string(&s.bob.maildir_new()[0]).unwrap();
    assert!(got.contains("header.from=alice.smith@example.org (from=fail)"), "{got}");
    assert!(!stdout(&ok(s.bob.stubmail().args(["keys", "list"]))).contains("alice.smith@example.org"));
    // Bob accepts it: one command, the key from Alice's outbox.
    let out = stdout(&ok(s.bob.stubmail().args(["keys", "refresh", "alice@example.org"])));
    assert!(out.contains("now also names alice.smith@example.org") && out.contains("imported"), "{out}");
    send("verified now");
    wait_for("the second message stored", 60, || (states(&s.alice).iter().filter(|x| *x == "stored").count() == 1).then_some(()));
    assert!(s.bob.http2mbox_once().contains("delivered 1"));
    let got = s.bob.maildir_new().into_iter().map(|f| std::fs::read_to_string(f).unwrap()).find(|m| m.contains("Subject: verified now")).unwrap();
    assert!(got.contains("header.from=alice.smith@example.org (from=pass)"), "{got}");
}

#[test]
fn a_contact_cannot_claim_other_peoples_addresses_or_yours() {
    let s = setup(true);
    // Bob runs an outbox and binds Alice's own address and a stranger's to
    // his key there.
    let bob_outbox = Outbox::start(s.root.path(), "bob-outbox");
    ok(s.bob.stubmail().args(["identity", "set-outbox", &bob_outbox.url()]));
    for a in ["alice@example.org", "carol@example.com"] {
        ok(s.bob.stubmail().args(["identity", "add-address", a]));
    }
    bob_outbox.add_account(&s.bob);
    s.alice.edit_config(|t| {
        let mut o = toml::Table::new();
        o.insert(s.bob.fingerprint(), bob_outbox.url().into());
        table(t, "poll").insert("outboxes".into(), o.into());
        table(t, "poll").insert("cert_refresh_secs".into(), 1.into());
    });
    // Alice's poller refreshes Bob's key from his outbox: no new address.
    let out = s.alice.http2mbox_once_with_log();
    assert!(out.contains("stubmail keys refresh"), "{out}");
    let list = stdout(&ok(s.alice.stubmail().args(["keys", "list"])));
    assert!(!list.contains("carol@example.com"), "{list}");
    // Accepting it by hand still refuses a key that names Alice's own address.
    let err = fails(s.alice.stubmail().args(["keys", "refresh", "bob@example.net"]));
    assert!(err.contains("claims your own address alice@example.org"), "{err}");
    // So mail to Carol is not routed to Bob (no key for her: 550).
    let smtp = s.alice.smtp2stub(s.root.path());
    let err = smtplib_send(smtp.port(), "alice@example.org", &["carol@example.com"], "Subject: x\r\n\r\nx\r\n").unwrap_err();
    assert!(err.contains("550"), "{err}");
}

/// Each recipient counts once a day and each stored copy once, in
/// smtp2stub's check before `250` as in the outbox: writing again to the
/// same people is not refused, a new recipient over the daily limit is.
#[test]
fn the_daily_recipient_limit_counts_each_recipient_once() {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start(root.path(), "alice-outbox");
    let alice = User::init(root.path(), "alice", "alice@example.org", &outbox.url());
    ok(bin_cmd("post_manager")
        .args(["account", "add", "--max-recipients-per-day", "5", "--data"])
        .arg(&outbox.data)
        .arg("--key")
        .arg(alice.export()));
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    let addr = |i: usize| format!("c{i}@example.net");
    for i in 1..=6 {
        let c = stubmail::Identity::generate(None, &addr(i), "http://127.0.0.1:9/").unwrap();
        let f = root.path().join(format!("c{i}.asc"));
        std::fs::write(&f, stubmail::pgp::armored(&c.cert()).unwrap()).unwrap();
        alice.import(&f);
    }
    let smtp = alice.smtp2stub(root.path());
    let send = |to: &[usize], bcc: &[usize]| {
        let shown: Vec<String> = to.iter().map(|i| addr(*i)).collect();
        let msg = format!("From: alice@example.org\r\nTo: {}\r\nSubject: hello\r\n\r\nhi\r\n", shown.join(", "));
        let all: Vec<String> = to.iter().chain(bcc).map(|i| addr(*i)).collect();
        smtplib_send(smtp.port(), "alice@example.org", &all.iter().map(String::as_str).collect::<Vec<_>>(), &msg)
    };
    assert!(send(&[1, 2, 3], &[]).unwrap().starts_with("250"));
    assert!(send(&[1, 2, 3], &[]).unwrap().starts_with("250"), "the same three again: still three today");
    assert!(send(&[1], &[2]).unwrap().starts_with("250"), "two copies, no new recipient");
    assert!(send(&[4], &[]).unwrap().starts_with("250"), "four today");
    let err = send(&[5, 6], &[]).unwrap_err();
    assert!(err.contains("452") && err.contains("recipients a day"), "six would be over five: {err}");
    // 1 + 1 + 2 copies + 1 messages, as the outbox counts them.
    wait_states(&alice, 3 + 3 + 2 + 1, "stored");
    let ids: std::collections::BTreeSet<String> =
        alice.status_json().as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 5);
}
