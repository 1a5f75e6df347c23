//! Faults: a full disk under smtp2stub's spool, with the outbox down.
//! Temporary errors (452), the session survives, nothing is lost, and
//! recovery needs no manual step. The spool is a 1 MiB tmpfs in a mount
//! namespace of smtp2stub's own (unshare), so nothing on the host changes.

mod common;

use std::process::Command;

use common::*;

fn is_root() -> bool {
    stdout(&ok(Command::new("id").arg("-u"))).trim() == "0"
}

#[test]
fn a_full_spool_gives_temporary_errors_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let alice = User::init(root.path(), "alice", "alice@example.org", &format!("http://127.0.0.1:{port}/"));
    let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    alice.import(&bob.export());
    bob.import(&alice.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
        table(t, "smtp").insert("min_free_bytes".into(), (300i64 * 1024).into());
    });
    let spool = alice.home.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // smtp2stub with its spool on a 1 MiB tmpfs, in its own mount namespace.
    let mut c = Command::new(require("unshare"));
    if !is_root() {
        c.arg("-r");
    }
    c.args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs \"$1\" && shift && exec \"$@\"", "sh"])
        .arg(&spool)
        .arg(bin("smtp2stub"))
        .arg("--home")
        .arg(&alice.home)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info");
    let smtp = Server::start("smtp2stub-small-spool", c, root.path());

    // The outbox is down: accepted mail stays in the spool until it is full.
    let script = r#"
import smtplib, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
line = b"x" * 70 + b"\r\n"
s = smtplib.SMTP("127.0.0.1", port, timeout=60)
codes = []
for i in range(n):
    msg = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: full-" + str(i).encode() + b"\r\n\r\n" + line * 1400
    try:
        s.sendmail("alice@example.org", ["bob@example.net"], msg); codes.append("250:full-%d" % i)
    except smtplib.SMTPResponseException as e:
        codes.append(str(e.smtp_code))
assert s.noop()[0] == 250, "the session survives"
s.quit()
print(" ".join(codes))
"#;
    let (good, out) = python(script, &[&smtp.port().to_string(), "8"]);
    assert!(good, "{out}");
    let codes: Vec<&str> = out.split_whitespace().collect();
    let accepted: Vec<&str> = codes.iter().filter_map(|c| c.strip_prefix("250:")).collect();
    assert!(!accepted.is_empty(), "{out}");
    assert!(codes.contains(&"452"), "a full spool answers 452: {out}");
    assert!(codes.iter().all(|c| c.starts_with("250:") || *c == "452"), "only temporary errors: {out}");

    // The outbox comes up: the queue drains by itself, and the spool takes mail again.
    let data = root.path().join("outbox");
    let mut o = bin_cmd("post_manager");
    o.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"]).arg(&data);
    let _outbox = Server::start("outbox", o, root.path());
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&data).arg("--key").arg(alice.export()));
    // (The spool is only visible inside smtp2stub's namespace: watch the outbox.)
    let stored = || std::fs::read_dir(data.join("messages")).map(|d| d.count()).unwrap_or(0);
    wait_for("the queue to drain", 120, || (stored() == accepted.len()).then_some(()));
    let (good, out) = python(script, &[&smtp.port().to_string(), "1"]);
    assert!(good && out.trim() == "250:full-0", "accepts mail again: {out}");
    wait_for("that one stored too", 60, || (stored() == accepted.len() + 1).then_some(()));
    // Every accepted message reaches Bob exactly once.
    assert!(bob.http2mbox_once().contains(&format!("delivered {}", accepted.len() + 1)));
    let mut subjects: Vec<String> = bob
        .maildir_new()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().find_map(|l| l.strip_prefix("Subject: ").map(str::to_string)).unwrap())
        .collect();
    subjects.sort();
    let mut want: Vec<String> = accepted.iter().map(|s| s.to_string()).chain(["full-0".to_string()]).collect();
    want.sort();
    assert_eq!(subjects, want);
}
