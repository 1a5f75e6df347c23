//! `stubmail up`: a whole personal node in one process, used by real mail
//! clients (Python's smtplib to send, poplib to read), and Ctrl-C.

mod common;

use common::*;

struct Node {
    user: User,
    server: Server,
    smtp: u16,
    pop3: u16,
    imap: u16,
}

fn up(root: &std::path::Path, name: &str, email: &str) -> Node {
    let home = root.join(name);
    let mut c = bin_cmd("stubmail");
    c.arg("--home").arg(&home).args([
        "up", "--email", email, "--smtp", "127.0.0.1:0", "--pop3", "127.0.0.1:0", "--imap", "127.0.0.1:0", "--outbox-listen", "127.0.0.1:0",
    ]);
    let server = Server::start(&format!("up-{name}"), c, root);
    let port = |k: &str| {
        server.addr.split_whitespace().find_map(|p| p.strip_prefix(k)).unwrap().rsplit(':').next().unwrap().parse().unwrap()
    };
    let (smtp, pop3, imap) = (port("smtp="), port("pop3="), port("imap="));
    let user = User { email: email.into(), home };
    user.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    // AUTH is required on loopback too; `up` prints the password it made.
    let (login, pass) = user.smtp_login().expect("up made an SMTP password");
    let printed = server.stdout_after("Outgoing (SMTP):").expect("up prints the mail-client settings");
    assert!(printed.contains(&format!("user {login}")) && printed.contains(&format!("password {pass}")), "{printed}");
    register_smtp_login(smtp, (login, pass));
    let printed = server.stdout_after("Incoming (IMAP):").expect("up prints the IMAP settings");
    assert!(printed.contains(&format!("port {imap}")), "{printed}");
    Node { user, server, smtp, pop3, imap }
}

#[test]
fn two_personal_nodes_exchange_mail() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = up(root.path(), "alice", "alice@example.org");
    let mut bob = up(root.path(), "bob", "bob@example.net");
    // The keyring is the address book: exchange keys (the nodes read it live).
    alice.user.import(&bob.user.export());
    bob.user.import(&alice.user.export());
    let config = std::fs::read_to_string(bob.user.home.join("config.toml")).unwrap();
    let t: toml::Table = toml::from_str(&config).unwrap();
    let pop_password = t["poll"]["pop3"]["password"].as_str().unwrap().to_string();
    assert_eq!(pop_password.len(), 16);

    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: from node to node\r\n\r\nhello from up\r\n";
    // smtp2stub in Alice's node was started before the keys were exchanged:
    // it reads the keyring at each RCPT, so no restart is needed.
    let reply = smtplib_send(alice.smtp, "alice@example.org", &["bob@example.net"], msg).unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    wait_for("stored in Alice's own outbox", 60, || (alice.user.status_json()[0]["state"] == "stored").then_some(()));

    // Bob's mail client logs in over POP3; the login polls Alice's outbox.
    let script = r#"
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=60)
p.user("bob@example.net"); p.pass_(sys.argv[2])
n = p.stat()[0]
print(n, b"\n".join(p.retr(1)[1]).decode() if n else "")
p.quit()
"#;
    let (good, out) = python(script, &[&bob.pop3.to_string(), &pop_password]);
    assert!(good, "{out}");
    assert!(out.starts_with("1 ") && out.contains("hello from up"), "{out}");
    // The same message over IMAP, with the same password.
    let imap_script = r#"
import imaplib, sys
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=60)
M.login("bob@example.net", sys.argv[2])
n = int(M.select("INBOX")[1][0])
print(n, M.fetch("1", "(BODY.PEEK[TEXT])")[1][0][1].decode())
M.logout()
"#;
    let (good, out) = python(imap_script, &[&bob.imap.to_string(), &pop_password]);
    assert!(good && out.starts_with("1 ") && out.contains("hello from up"), "{out}");
    wait_for("retrieved", 30, || (alice.user.status_json()[0]["state"] == "retrieved").then_some(()));

    // Unsend: the retrieved message stays retrieved; a second one is
    // withdrawn (Bob's node is off meanwhile: with it on, the notification
    // stub has it fetched within a second).
    bob.server.interrupt();
    let msg2 = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: oops\r\n\r\nnever mind\r\n";
    assert!(smtplib_send(alice.smtp, "alice@example.org", &["bob@example.net"], msg2).unwrap().starts_with("250"));
    let id2 = wait_for("the second message stored", 60, || {
        let st = alice.user.status_json();
        st.as_array().unwrap().iter().find(|l| l["state"] == "stored" || l["state"] == "notified").map(|l| l["id"].as_str().unwrap().to_string())
    });
    // `status` shows what `unsend` takes: a short id, and the Subject.
    let status = stdout(&ok(alice.user.stubmail().arg("status")));
    assert!(status.contains(&id2[..12]) && status.contains("oops") && status.contains("stubmail unsend ID"), "{status}");
    // ... and the account's usage against every quota (doctor too).
    assert!(status.contains("your outbox: 2 of ") && status.contains(" messages, ") && status.contains("1 of ") && status.contains("recipients today"), "{status}");
    let out = stdout(&ok(alice.user.stubmail().args(["unsend", &id2[..8]])));
    assert!(out.contains("unsent"), "{out}");
    let states: Vec<String> = alice.user.status_json().as_array().unwrap().iter().map(|l| l["state"].as_str().unwrap().to_string()).collect();
    assert!(states.contains(&"retrieved".to_string()) && states.contains(&"unsent".to_string()), "{states:?}");
    let err = fails(alice.user.stubmail().args(["unsend", &"0".repeat(64)]));
    assert!(err.contains("has no message"), "{err}");
    let err = fails(alice.user.stubmail().args(["unsend", "0"]));
    assert!(err.contains("at least 4"), "{err}");
    let _bob = up_again(root.path(), &bob, "up-bob-again");
    let (good, out) = python(script, &[&bob.pop3.to_string(), &pop_password]);
    assert!(good && out.starts_with("1 "), "the unsent message never reaches Bob: {out}");

    // The doctor finds a healthy node healthy, and a loose key file not.
    let out = stdout(&ok(alice.user.stubmail().arg("doctor")));
    assert!(out.contains("outbox") && out.contains("knows you") && out.contains("serves your key") && out.contains("no problems found"), "{out}");
    assert!(out.contains(&format!("IMAP answers on 127.0.0.1:{}", alice.imap)), "{out}");
    assert!(out.contains("recipients today") && out.contains(" bytes, "), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let key = alice.user.home.join("secret.pgp");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = alice.user.stubmail().arg("doctor").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("fix: chmod 600 {}", key.display())), "{}", String::from_utf8_lossy(&o.stdout));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Ctrl-C stops the whole node cleanly.
    let status = alice.server.interrupt();
    assert!(status.success(), "{status:?}");
}

#[test]
fn demo_shows_a_message_travel() {
    let root = tempfile::tempdir().unwrap();
    let out = stdout(&ok(bin_cmd("stubmail").arg("demo").arg("--dir").arg(root.path())));
    assert!(out.contains("stored it in ALICE's outbox") && out.contains(": stored"), "{out}");
    assert!(out.contains("delivered 1.") && out.contains("| Subject: Hello Bob"), "{out}");
    assert!(out.contains("status for that message: retrieved"), "{out}");
    assert_eq!(std::fs::read_dir(root.path().join("bob/Maildir/new")).unwrap().count(), 1);
}

#[test]
fn doctor_names_an_unregistered_key_and_an_unreachable_outbox() {
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start(root.path(), "outbox");
    let u = User::init(root.path(), "u", "u@example.org", &outbox.url());
    let o = u.stubmail().arg("doctor").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("your key is not an account on your outbox") && out.contains("post_manager account add"), "{out}");
    drop(outbox);
    let out = String::from_utf8_lossy(&u.stubmail().arg("doctor").output().unwrap().stdout).into_owned();
    assert!(out.contains("is unreachable") && out.contains("stubmail up"), "{out}");
}

#[test]
fn first_run_asks_for_the_address_on_a_terminal() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("carol");
    let cmd = format!(
        "{} --home {} up --smtp 127.0.0.1:0 --pop3 127.0.0.1:0 --imap 127.0.0.1:0 --outbox-listen 127.0.0.1:0",
        bin("stubmail").display(),
        home.display()
    );
    let mut child = Command::new(require("script"))
        .args(["-qfec", &cmd, "/dev/null"])
        .env_remove("STUBMAIL_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"carol@example.com\n").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("listening on") {
            break;
        }
        line.clear();
    }
    let _ = Command::new("kill").args(["-KILL", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(seen.contains("Your email address:"), "{seen}");
    assert!(seen.contains("Stubmail node for carol@example.com is running"), "{seen}");
    let ident = stdout(&ok(bin_cmd("stubmail").arg("--home").arg(&home).args(["identity", "show"])));
    assert!(ident.contains("carol@example.com"), "{ident}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("u");
    let stubmail = bin("stubmail");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            // The reader is gone before stubmail prints a line.
            "{{ sleep 0.3; '{}' --home '{}' init --email u@example.org --outbox http://127.0.0.1:9/; }} | true",
            stubmail.display(),
            home.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(home.join("secret.pgp").exists(), "the identity is made all the same");
}

/// `stubmail up` again on an existing home, without flags.
fn up_again(root: &std::path::Path, node: &Node, log: &str) -> Server {
    let mut c = bin_cmd("stubmail");
    c.arg("--home").arg(&node.user.home).arg("up");
    Server::start(log, c, root)
}

fn config_of(u: &User) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(u.home.join("config.toml")).unwrap()).unwrap()
}

#[test]
fn nodes_keep_their_addresses_run_once_per_home_and_deliver_within_seconds() {
    // The usual umask: `up` must keep its files private all the same.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let root = tempfile::tempdir().unwrap();
    let mut alice = up(root.path(), "alice", "alice@example.org");
    let mut bob = up(root.path(), "bob", "bob@example.net");
    // The first run wrote the addresses it got into config.toml, and bound a
    // loopback notify endpoint into the key.
    let t = config_of(&bob.user);
    let notify = t["notify"]["listen"].as_str().expect("up binds a notify endpoint").to_string();
    assert_eq!(t["smtp"]["listen"].as_str().unwrap(), format!("127.0.0.1:{}", bob.smtp));
    assert_eq!(t["poll"]["pop3"]["listen"].as_str().unwrap(), format!("127.0.0.1:{}", bob.pop3));
    assert!(t["outbox"]["listen"].as_str().is_some(), "{t}");
    let cert = stubmail::pgp::parse_certs(&std::fs::read(bob.user.export()).unwrap()).unwrap().remove(0);
    assert_eq!(stubmail::pgp::notify_of(&cert), Some(notify.clone()));
    assert!(bob.server.stdout_after("Notify endpoint:").unwrap().contains(&notify));

    // One node per home: a second `up`, or an smtp2stub, names the first.
    let mut c = bin_cmd("stubmail");
    c.arg("--home").arg(&alice.user.home).arg("up");
    let err = fails(&mut c);
    assert!(err.contains("already runs") && err.contains("stubmail up") && err.contains(&format!("smtp 127.0.0.1:{}", alice.smtp)), "{err}");
    let err = fails(bin_cmd("smtp2stub").arg("--home").arg(&alice.user.home).args(["--listen", "127.0.0.1:0"]));
    assert!(err.contains("already runs smtp2stub") && err.contains("stubmail up"), "{err}");
    let err = fails(bin_cmd("http2mbox").arg("--home").arg(&alice.user.home));
    assert!(err.contains("already runs http2mbox"), "{err}");
    // `--once` is "check now": it runs beside the node.
    ok(bin_cmd("http2mbox").arg("--home").arg(&alice.user.home).arg("--once"));
    // The node says what it does, at info: where it listens, its polls.
    wait_for("a poll logged", 30, || (alice.server.log().contains("polled") && alice.server.log().contains("listening")).then_some(()));
    // The doctor checks the addresses in use.
    let out = stdout(&ok(alice.user.stubmail().arg("doctor")));
    assert!(out.contains(&format!("SMTP answers on 127.0.0.1:{}", alice.smtp)), "{out}");
    assert!(out.contains(&format!("POP3 answers on 127.0.0.1:{}", alice.pop3)), "{out}");

    alice.user.import(&bob.user.export());
    bob.user.import(&alice.user.export());
    let send = |n: u32| {
        let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: number {n}\r\n\r\nhello\r\n");
        assert!(smtplib_send(alice.smtp, "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
        std::time::Instant::now()
    };
    let arrived = |n: u32| {
        bob.user.maildir_new().iter().any(|f| std::fs::read_to_string(f).unwrap().contains(&format!("Subject: number {n}\n")))
    };
    // The first message from a new contact: found by a poll ("check now").
    send(1);
    wait_for("message 1 stored", 30, || (alice.user.status_json()[0]["state"] == "stored").then_some(()));
    assert!(bob.user.http2mbox_once().contains("delivered 1"));
    // From then on a notification stub brings each message within seconds.
    let t0 = send(2);
    wait_for("message 2 delivered", 30, || arrived(2).then_some(()));
    let took = t0.elapsed();
    println!("SMTP 250 -> Maildir with a notify endpoint: {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");

    // Everything the node wrote is Alice's alone, whatever the umask it was
    // started with (the outbox's UDP cookie keys, who mails whom, the key).
    fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(p) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
            out.push(path);
        }
    }
    let mut all = Vec::new();
    walk(&alice.user.home, &mut all);
    use std::os::unix::fs::PermissionsExt;
    // (exported.asc is the test's own copy of her public key.)
    // (The node runs meanwhile: a temporary file seen by the walk may be
    // renamed away before it is looked at.)
    let open: Vec<_> = all
        .iter()
        .filter(|p| !p.ends_with("exported.asc") && std::fs::symlink_metadata(p).is_ok_and(|m| m.permissions().mode() & 0o077 != 0))
        .collect();
    assert!(open.is_empty() && all.iter().any(|p| p.to_string_lossy().contains("cookies")), "readable by others: {open:?}");
    // Without a notify endpoint (Bob's node restarted without one, polling
    // by UDP every 2 s): the next UDP poll finds it.
    bob.server.interrupt();
    bob.user.edit_config(|t| {
        t.get_mut("notify").unwrap().as_table_mut().unwrap().remove("listen");
        table(t, "poll").insert("udp_interval_secs".into(), 2.into());
    });
    let bob_again = up_again(root.path(), &bob, "up-bob-again");
    // Its UDP cookie comes from the first signed poll, at start.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let t0 = send(3);
    wait_for("message 3 delivered", 30, || arrived(3).then_some(()));
    let took = t0.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    drop(bob_again);

    // Restarted without flags, a node comes back on the addresses it had.
    alice.server.interrupt();
    let again = up_again(root.path(), &alice, "up-alice-again");
    assert!(again.addr.contains(&format!("smtp=127.0.0.1:{}", alice.smtp)), "{}", again.addr);
    assert!(again.addr.contains(&format!("pop3=127.0.0.1:{}", alice.pop3)), "{}", again.addr);
    // A flag overrides the file for one run only.
    drop(again);
    let mut c = bin_cmd("stubmail");
    c.arg("--home").arg(&alice.user.home).args(["up", "--smtp", "127.0.0.1:0"]);
    let other = Server::start("up-alice-flag", c, root.path());
    assert!(!other.addr.contains(&format!("smtp=127.0.0.1:{} ", alice.smtp)), "{}", other.addr);
    assert_eq!(config_of(&alice.user)["smtp"]["listen"].as_str().unwrap(), format!("127.0.0.1:{}", alice.smtp));
}

#[test]
fn moving_to_another_outbox_is_one_command_and_contacts_follow() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = up(root.path(), "alice", "alice@example.org");
    let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    bob.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
        table(t, "poll").insert("cert_refresh_secs".into(), 1.into());
    });
    alice.user.import(&bob.export());
    bob.import(&alice.user.export());
    let send = |port: u16, n: u32| {
        let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: move {n}\r\n\r\nx\r\n");
        assert!(smtplib_send(port, "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    };
    send(alice.smtp, 1);
    wait_for("message 1 stored", 30, || (alice.user.status_json()[0]["state"] == "stored").then_some(()));
    assert!(bob.http2mbox_once().contains("delivered 1"));

    // Alice edits config.toml by hand: the doctor sees the key and the
    // config disagree, and its fix is the command.
    let o2 = Outbox::start(root.path(), "o2");
    alice.user.edit_config(|t| {
        table(t, "identity").insert("outbox".into(), o2.url().into());
    });
    let out = String::from_utf8_lossy(&alice.user.stubmail().arg("doctor").output().unwrap().stdout).into_owned();
    let fix = format!("stubmail identity set-outbox {}", o2.url());
    assert!(out.contains("your key binds the outbox") && out.contains(&fix), "{out}");
    let out = stdout(&ok(alice.user.stubmail().args(["identity", "set-outbox", &o2.url()])));
    assert!(out.contains("does not know your key yet") && out.contains("post_manager account add"), "{out}");
    let cert = stubmail::pgp::parse_certs(&std::fs::read(alice.user.export()).unwrap()).unwrap().remove(0);
    assert_eq!(stubmail::pgp::outbox_of(&cert), Some(o2.url()));
    assert!(stubmail::pgp::notify_of(&cert).is_some(), "the notify endpoint stays bound");
    o2.add_account(&alice.user);
    // Restarted, Alice's node sends to the new outbox.
    alice.server.interrupt();
    let alice_again = up_again(root.path(), &alice, "up-alice-moved");
    let smtp = alice_again.addr.split_whitespace().find_map(|p| p.strip_prefix("smtp=")).unwrap().rsplit(':').next().unwrap().parse().unwrap();
    send(smtp, 2);
    wait_for("message 2 in the new outbox", 30, || {
        (std::fs::read_dir(o2.data.join("messages")).map_or(0, |d| d.count()) == 1).then_some(())
    });
    // Bob never re-imports: his poll of Alice's old outbox fetches her
    // current key, which names the new one; the next poll goes there.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    bob.http2mbox_once();
    let list = stdout(&ok(bob.stubmail().args(["keys", "list"])));
    assert!(list.contains(&o2.url()), "{list}");
    let out = bob.http2mbox_once();
    assert!(out.contains("delivered 1"), "{out}");
    assert!(bob.maildir_new().iter().any(|f| std::fs::read_to_string(f).unwrap().contains("Subject: move 2")));
}

#[test]
fn a_second_device_is_a_command_and_a_copied_home_is_a_device_of_its_own() {
    let root = tempfile::tempdir().unwrap();
    let alice = up(root.path(), "alice", "alice@example.org");
    let mut bob = up(root.path(), "bob", "bob@example.net");
    alice.user.import(&bob.user.export());
    bob.user.import(&alice.user.export());
    // Bob's laptop: a device of its own, with a notify endpoint of its own.
    let laptop_notify = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let laptop = root.path().join("bob-laptop");
    let out = stdout(&ok(bob.user.stubmail().args(["device", "add"]).arg(&laptop).args(["--notify", &format!("udp://{laptop_notify}")])));
    assert!(out.contains("http2mbox --home"), "{out}");
    let cert = stubmail::pgp::parse_certs(&std::fs::read(bob.user.export()).unwrap()).unwrap().remove(0);
    assert_eq!(stubmail::pgp::notify_all(&cert).len(), 2, "both devices' endpoints are bound");
    // Bob's desktop node restarts to present the updated key.
    bob.server.interrupt();
    let _bob_again = up_again(root.path(), &bob, "up-bob-again");
    let laptop_user = User { email: bob.user.email.clone(), home: laptop.clone() };
    let mut c = bin_cmd("http2mbox");
    // (On its own machine it would use the same ports; here, others.)
    c.arg("--home").arg(&laptop).args(["--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let _laptop_daemon = Server::start("http2mbox-laptop", c, root.path());
    let send = |n: u32| {
        let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: devices {n}\r\n\r\nx\r\n");
        assert!(smtplib_send(alice.smtp, "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    };
    let has = |u: &User, n: u32| u.maildir_new().iter().any(|f| std::fs::read_to_string(f).unwrap().contains(&format!("Subject: devices {n}\n")));
    // The first message from a new contact: each device checks once.
    send(1);
    wait_for("stored", 30, || alice.user.status_json().as_array().is_some_and(|a| a.len() == 1 && a[0]["state"] != "queued").then_some(()));
    bob.user.http2mbox_once();
    laptop_user.http2mbox_once();
    assert!(has(&bob.user, 1) && has(&laptop_user, 1), "each device gets every message");
    // Then stubs reach both devices' endpoints: both have it within seconds.
    send(2);
    wait_for("message 2 on both devices", 10, || (has(&bob.user, 2) && has(&laptop_user, 2)).then_some(()));

    // A copy of the laptop's home (its device id came along) is a device of
    // its own: it receives the next message too, and says why.
    let copy = root.path().join("bob-copy");
    ok(std::process::Command::new("cp").arg("-a").arg(&laptop).arg(&copy));
    send(3);
    wait_for("message 3 on the laptop", 10, || has(&laptop_user, 3).then_some(()));
    let copy_user = User { email: bob.user.email.clone(), home: copy.clone() };
    let out = copy_user.http2mbox_once_with_log();
    assert!(out.contains("delivered 1") && out.contains("copied"), "{out}");
    assert!(has(&copy_user, 3));
}
