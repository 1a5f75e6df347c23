//! Faults: a full disk under smtp2stub's spool, with the outbox down; a
//! clock skewed beyond the protocol's window on either side. Temporary
//! errors, nothing lost, and recovery with no manual step. The spool is a
//! 1 MiB tmpfs in a mount namespace of smtp2stub's own (unshare), and the
//! wrong clock is libfaketime's, so nothing on the host changes.

mod common;

use std::process::Command;

use common::*;

fn is_root() -> bool {
    stdout(&ok(Command::new("id").arg("-u"))).trim() == "0"
}

/// smtp2stub with its spool on a 1 MiB tmpfs, in its own mount namespace.
fn small_spool_smtp2stub(root: &std::path::Path, alice: &User) -> Server {
    let spool = alice.home.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
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
    let s = Server::start("smtp2stub-small-spool", c, root);
    register_smtp_login(s.port(), alice.smtp_login().expect("an SMTP password"));
    s
}

/// Alice (outbox on a port where nothing listens yet) and Bob.
fn alice_and_bob(root: &std::path::Path, min_free: i64) -> (User, User, u16) {
    let port = free_port();
    let alice = User::init(root, "alice", "alice@example.org", &format!("http://127.0.0.1:{port}/"));
    let bob = User::init(root, "bob", "bob@example.net", "http://127.0.0.1:9/");
    alice.import(&bob.export());
    bob.import(&alice.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
        table(t, "smtp").insert("min_free_bytes".into(), min_free.into());
    });
    (alice, bob, port)
}

#[test]
fn a_write_error_during_data_gives_452_and_the_session_goes_on() {
    let root = tempfile::tempdir().unwrap();
    // No free-space margin: the message itself overflows the spool.
    let (alice, bob, port) = alice_and_bob(root.path(), 0);
    let smtp = small_spool_smtp2stub(root.path(), &alice);
    let script = r#"
import smtplib, sys
s = login_smtp("127.0.0.1", int(sys.argv[1]), timeout=60)
big = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 30000
try:
    s.sendmail("alice@example.org", ["bob@example.net"], big); print("big:250")
except smtplib.SMTPResponseException as e:
    print("big:%d:%s" % (e.smtp_code, e.smtp_error.decode()))
print("noop:%d" % s.noop()[0])
s.sendmail("alice@example.org", ["bob@example.net"], b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: small\r\n\r\nfits\r\n")
print("small:250")
s.quit()
"#;
    let (good, out) = python(script, &[&smtp.port().to_string()]);
    assert!(good, "{out}");
    assert!(out.contains("big:452:4.3.1"), "a 2 MiB message on a 1 MiB spool: {out}");
    assert!(out.contains("noop:250") && out.contains("small:250"), "{out}");
    // Nothing of the refused message is left; the small one is delivered.
    let data = root.path().join("outbox");
    let mut o = bin_cmd("post_manager");
    o.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"]).arg(&data);
    let _outbox = Server::start("outbox", o, root.path());
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&data).arg("--key").arg(alice.export()));
    // Stored as the outbox logs it (its index written), not merely its file
    // (the spool, and so `stubmail status`, is in smtp2stub's namespace).
    wait_for("the small message stored", 120, || _outbox.log().contains("stored sender=").then_some(()));
    assert_eq!(std::fs::read_dir(data.join("messages")).unwrap().count(), 1);
    assert!(bob.http2mbox_once().contains("delivered 1"));
    let got = std::fs::read_to_string(&bob.maildir_new()[0]).unwrap();
    assert!(got.contains("Subject: small"), "{got}");
}

#[test]
fn a_full_spool_gives_temporary_errors_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (alice, bob, port) = alice_and_bob(root.path(), 300 * 1024);
    let smtp = small_spool_smtp2stub(root.path(), &alice);
    // The outbox is down: accepted mail stays in the spool until it is full.
    let script = r#"
import smtplib, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
line = b"x" * 70 + b"\r\n"
s = login_smtp("127.0.0.1", port, timeout=60)
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

/// `cmd` with its clock off by `offset` (e.g. "+900s"): libfaketime
/// preloaded into the process itself (the `faketime` wrapper forks, so
/// killing it would leave the program running). Monotonic time is left alone.
fn skewed(offset: &str, mut cmd: Command) -> Command {
    require("faketime");
    let lib = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libfaketime (Debian package libfaketime)");
    cmd.env("LD_PRELOAD", lib).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    cmd
}

#[test]
fn a_clock_beyond_the_window_gives_temporary_errors_and_recovers_by_itself() {
    let p = Pair::start(true);
    // Alice's machine runs 15 minutes fast: the outbox refuses her signed
    // requests as stale (the window is 5 minutes).
    let mut c = bin_cmd("smtp2stub");
    c.arg("--home").arg(&p.alice.home).args(["--listen", "127.0.0.1:0"]);
    let smtp = Server::start("smtp2stub-fast-clock", skewed("+900s", c), p.root.path());
    register_smtp_login(smtp.port(), p.alice.smtp_login().expect("an SMTP password"));
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: skew\r\n\r\nlate but whole\r\n";
    let reply = smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap();
    assert!(reply.starts_with("250"), "accepted into the spool: {reply}");
    wait_for("a retry after a stale-timestamp refusal", 60, || smtp.log().contains("stale_timestamp").then_some(()));
    assert!(!smtp.log().contains("gave up"), "a wrong clock is not a permanent failure:\n{}", smtp.log());
    assert_eq!(std::fs::read_dir(p.outbox.data.join("messages")).unwrap().count(), 0);
    // The clock is put right (smtp2stub restarts without the skew): the
    // queue drains by itself.
    drop(smtp);
    let _smtp = p.alice.smtp2stub(p.root.path());
    wait_states(&p.alice, 1, "stored");

    // Bob's machine runs 15 minutes fast: his poll is refused, nothing is
    // lost, and it works once his clock is right. (Slow, his own key would
    // not be valid yet: refused locally, saying to check the clock.)
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&p.bob.home).arg("--once");
    let out = ok(&mut skewed("+900s", c));
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    // (Unreachable: Alice's outbox, which refuses, and Bob's own, which is not there.)
    assert!(text.contains("delivered 0") && text.contains("unreachable 2") && text.contains("stale_timestamp"), "{text}");
    assert!(p.bob.maildir_new().is_empty());
    assert!(p.bob.http2mbox_once().contains("delivered 1"));
    wait_states(&p.alice, 1, "retrieved");
}
