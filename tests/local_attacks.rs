//! Attacks on the listeners of the user's own machine, against the real
//! binaries (SECURITY.md, "Only the user sends as the user"): another
//! local user, a web page in the user's browser, password guessing over
//! many connections.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

fn is_root() -> bool {
    stdout(&ok(Command::new("id").arg("-u"))).trim() == "0"
}

/// Python run as another local user (`nobody`) when the tests run as root,
/// else as this user: either way a process without the user's password.
fn python_as_other_user(script: &str, args: &[&str]) -> (bool, String) {
    let mut c = if is_root() {
        let mut c = Command::new("setpriv");
        // Debian's python3: a per-user interpreter (pyenv) may be unreadable to nobody.
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", script]);
        c
    } else {
        let mut c = Command::new("python3");
        c.args(["-c", script]);
        c
    };
    let out = c.args(args).current_dir("/").output().expect("python3");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn queue_len(u: &User) -> usize {
    std::fs::read_dir(u.home.join("spool/queue")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn another_local_user_cannot_send_as_you_through_loopback_smtp() {
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
s.ehlo("intruder")
print("auth offered:", s.has_extn("auth"))
print("mail:", s.mail("alice@example.org")[0])
try:
    s.login("alice@example.org", "guess")
except smtplib.SMTPAuthenticationError as e:
    print("login:", e.smtp_code)
print("mail again:", s.mail("alice@example.org")[0])
"#;
    let (good, out) = python_as_other_user(script, &[&smtp.port().to_string()]);
    assert!(good, "{out}");
    assert!(out.contains("auth offered: True"), "{out}");
    assert!(out.contains("mail: 530"), "no MAIL without AUTH, loopback included: {out}");
    // smtplib tries PLAIN (535), then LOGIN at once (held: 454).
    assert!((out.contains("login: 535") || out.contains("login: 454")) && out.contains("mail again: 530"), "{out}");
    assert_eq!(queue_len(&p.alice), 0);
    // The user's own client, with the password `stubmail init` made, sends.
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: mine\r\n\r\nhi\r\n";
    std::thread::sleep(Duration::from_millis(300));
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
}

/// The bytes a browser sends for a `<form method=post enctype=text/plain>`
/// posted to a local mail port, whose one field carries a whole SMTP (or
/// POP3) dialogue after the HTTP header lines.
fn form_post(port: u16, body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0\r\n\
         Accept: text/html\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nOrigin: null\r\n\r\n{body}",
        body.len()
    )
}

/// Send `bytes` and read everything until the server hangs up (or 10 s).
fn send_raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_web_page_cannot_smuggle_smtp_or_pop3_through_the_browser() {
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    let (user, pass) = p.alice.smtp_login().unwrap();
    let plain = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
    };
    // Even knowing the password (a page cannot, but the dialogue must not
    // run at all): the connection ends at the request line.
    let dialogue = format!(
        "x=\r\nEHLO page\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n\
         From: alice@example.org\r\nSubject: from a web page\r\n\r\nforged\r\n.\r\nQUIT\r\n"
    );
    let out = send_raw(smtp.port(), form_post(smtp.port(), &dialogue).as_bytes());
    assert!(out.starts_with("220 ") && out.contains("554 5.7.0"), "{out}");
    assert!(!out.contains("235") && !out.contains("354"), "no command of the body ran: {out}");
    // CONNECT, as a proxy-aware page might try.
    let out = send_raw(smtp.port(), b"CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: x\r\n\r\nEHLO x\r\n");
    assert!(out.contains("554 5.7.0") && !out.contains("250"), "{out}");
    assert_eq!(queue_len(&p.alice), 0, "nothing queued");
    assert!(p.alice.status_json().as_array().is_none_or(|a| a.is_empty()), "nothing stored");

    // POP3: the same trick must not log in, read or delete.
    let mut pop = bin_cmd("http2mbox");
    p.bob.set_pop3_password("pop-secret");
    pop.arg("--home").arg(&p.bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let pop = Server::start("http2mbox-bob", pop, p.root.path());
    let port = pop.port();
    let out = send_raw(port, form_post(port, "x=\r\nUSER bob@example.net\r\nPASS pop-secret\r\nDELE 1\r\nQUIT\r\n").as_bytes());
    assert!(out.starts_with("+OK") && out.contains("-ERR this is a POP3 server, not HTTP"), "{out}");
    assert!(!out.contains("maildrop"), "no login: {out}");
}

/// Guess passwords on `conns` parallel connections for `secs`; returns the
/// replies to the guesses, by code.
fn guess_smtp(port: u16, conns: usize, secs: u64) -> Vec<String> {
    let stop = std::time::Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                while std::time::Instant::now() < stop {
                    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    let mut read_reply = |r: &mut BufReader<TcpStream>| -> Option<String> {
                        loop {
                            line.clear();
                            if r.read_line(&mut line).ok()? == 0 {
                                return None;
                            }
                            if line.as_bytes().get(3) != Some(&b'-') {
                                return Some(line[..3].to_string());
                            }
                        }
                    };
                    read_reply(&mut r);
                    let _ = w.write_all(b"EHLO guesser\r\n");
                    read_reply(&mut r);
                    for k in 0..3 {
                        use base64::Engine;
                        let guess = base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.org\0guess{i}-{k}"));
                        if w.write_all(format!("AUTH PLAIN {guess}\r\n").as_bytes()).is_err() {
                            break;
                        }
                        match read_reply(&mut r) {
                            Some(c) => codes.push(c),
                            None => break,
                        }
                    }
                }
                codes
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

#[test]
fn password_guessing_over_many_connections_is_throttled_then_locked_out() {
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    let codes = guess_smtp(smtp.port(), 32, 4);
    let checked = codes.iter().filter(|c| *c == "535").count();
    let held = codes.iter().filter(|c| *c == "454").count();
    // Without the throttle: dozens of checked guesses a second. With it:
    // delays of 0.25 s, 0.5 s, 1 s, 2 s … between checked guesses.
    assert!((1..=6).contains(&checked), "checked guesses in 4 s: {checked} (of {})", codes.len());
    assert!(held > checked, "the others were refused unchecked: {held}");
    // The real password is held too (it would tell the guesser it won).
    let (user, pass) = p.alice.smtp_login().unwrap();
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
try:
    s.login(sys.argv[2], sys.argv[3]); print("login: 235")
except smtplib.SMTPException as e:
    print("login:", getattr(e, "smtp_code", e))
"#;
    let (_, out) = python(script, &[&smtp.port().to_string(), &user, &pass]);
    assert!(out.contains("login: 454"), "{out}");
    assert!(smtp.log().contains("too many recent failures"), "{}", smtp.log());

    // POP3 shares the design: guesses over parallel connections are held.
    p.bob.set_pop3_password("pop-secret");
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&p.bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let pop = Server::start("http2mbox-bob", c, p.root.path());
    let script = r#"
import poplib, sys, threading, time
port = int(sys.argv[1]); stop = time.time() + 4; out = []
def guess(i):
    while time.time() < stop:
        try:
            p = poplib.POP3("127.0.0.1", port, timeout=10)
            for k in range(3):
                p.user("bob@example.net")
                try:
                    p.pass_("guess%d-%d" % (i, k)); out.append("OK")
                except poplib.error_proto as e:
                    out.append(e.args[0].decode()[:14])
        except Exception:
            pass
ts = [threading.Thread(target=guess, args=(i,)) for i in range(32)]
[t.start() for t in ts]; [t.join() for t in ts]
print("checked", sum(1 for o in out if o.startswith("-ERR [AUTH]")), "held", sum(1 for o in out if o.startswith("-ERR [SYS/TEMP")), "ok", out.count("OK"))
"#;
    let (good, out) = python(script, &[&pop.port().to_string()]);
    assert!(good, "{out}");
    let n = |k: &str| out.split_whitespace().skip_while(|w| *w != k).nth(1).and_then(|v| v.parse::<usize>().ok()).unwrap();
    assert!((1..=6).contains(&n("checked")) && n("held") > n("checked") && n("ok") == 0, "{out}");
}

#[test]
fn a_home_without_an_smtp_password_gets_one_and_is_told() {
    use std::os::unix::fs::PermissionsExt;
    let p = Pair::start(true);
    // A home from before AUTH was required on loopback: no passwords.
    p.alice.edit_config(|t| {
        let smtp = table(t, "smtp");
        smtp.remove("password");
        smtp.insert("auth".into(), "auto".into());
        table(t, "poll").remove("pop3");
    });
    let smtp = p.alice.smtp2stub(p.root.path());
    wait_for("the notice", 10, || smtp.log().contains("generated a password for smtp.password").then_some(()));
    let (_, pass) = p.alice.smtp_login().expect("a password now");
    assert_eq!(pass.len(), 16);
    let mode = std::fs::metadata(p.alice.home.join("config.toml")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // `auto` (the old default) now requires AUTH on loopback as well.
    let (_, out) = python_as_other_user(
        "import smtplib,sys\ns=smtplib.SMTP('127.0.0.1',int(sys.argv[1]),timeout=30)\ns.ehlo()\nprint('mail:',s.mail('alice@example.org')[0])",
        &[&smtp.port().to_string()],
    );
    assert!(out.contains("mail: 530"), "{out}");
    // `stubmail identity show` prints the settings a mail client needs.
    let shown = stdout(&ok(p.alice.stubmail().args(["identity", "show"])));
    assert!(shown.contains(&format!("password {pass}")) && shown.contains("user alice@example.org"), "{shown}");
    register_smtp_login(smtp.port(), p.alice.smtp_login().unwrap());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: after upgrade\r\n\r\nhi\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
}
