//! `stubmail up`: a whole personal node in one process, used by real mail
//! clients (Python's smtplib to send, poplib to read), and Ctrl-C.

mod common;

use common::*;

struct Node {
    user: User,
    server: Server,
    smtp: u16,
    pop3: u16,
}

fn up(root: &std::path::Path, name: &str, email: &str) -> Node {
    let home = root.join(name);
    let mut c = bin_cmd("stubmail");
    c.arg("--home").arg(&home).args([
        "up", "--email", email, "--smtp", "127.0.0.1:0", "--pop3", "127.0.0.1:0", "--outbox-listen", "127.0.0.1:0",
    ]);
    let server = Server::start(&format!("up-{name}"), c, root);
    let port = |k: &str| {
        server.addr.split_whitespace().find_map(|p| p.strip_prefix(k)).unwrap().rsplit(':').next().unwrap().parse().unwrap()
    };
    let (smtp, pop3) = (port("smtp="), port("pop3="));
    let user = User { email: email.into(), home };
    user.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    // AUTH is required on loopback too; `up` prints the password it made.
    let (login, pass) = user.smtp_login().expect("up made an SMTP password");
    let printed = server.stdout_after("Outgoing (SMTP):").expect("up prints the mail-client settings");
    assert!(printed.contains(&format!("user {login}")) && printed.contains(&format!("password {pass}")), "{printed}");
    register_smtp_login(smtp, (login, pass));
    Node { user, server, smtp, pop3 }
}

#[test]
fn two_personal_nodes_exchange_mail() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = up(root.path(), "alice", "alice@example.org");
    let bob = up(root.path(), "bob", "bob@example.net");
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
    wait_for("retrieved", 30, || (alice.user.status_json()[0]["state"] == "retrieved").then_some(()));

    // Unsend: the retrieved message stays retrieved; a second one is withdrawn.
    let msg2 = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: oops\r\n\r\nnever mind\r\n";
    assert!(smtplib_send(alice.smtp, "alice@example.org", &["bob@example.net"], msg2).unwrap().starts_with("250"));
    let id2 = wait_for("the second message stored", 60, || {
        let st = alice.user.status_json();
        st.as_array().unwrap().iter().find(|l| l["state"] == "stored").map(|l| l["id"].as_str().unwrap().to_string())
    });
    let out = stdout(&ok(alice.user.stubmail().args(["unsend", &id2])));
    assert!(out.contains("unsent"), "{out}");
    let states: Vec<String> = alice.user.status_json().as_array().unwrap().iter().map(|l| l["state"].as_str().unwrap().to_string()).collect();
    assert!(states.contains(&"retrieved".to_string()) && states.contains(&"unsent".to_string()), "{states:?}");
    let err = fails(alice.user.stubmail().args(["unsend", &"0".repeat(64)]));
    assert!(err.contains("has no message"), "{err}");
    let (good, out) = python(script, &[&bob.pop3.to_string(), &pop_password]);
    assert!(good && out.starts_with("1 "), "the unsent message never reaches Bob: {out}");

    // The doctor finds a healthy node healthy, and a loose key file not.
    let out = stdout(&ok(alice.user.stubmail().arg("doctor")));
    assert!(out.contains("outbox") && out.contains("knows you") && out.contains("serves your key") && out.contains("no problems found"), "{out}");
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
        "{} --home {} up --smtp 127.0.0.1:0 --pop3 127.0.0.1:0 --outbox-listen 127.0.0.1:0",
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
