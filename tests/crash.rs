//! Crash test: `kill -9` of each program (smtp2stub, the outbox, Bob's
//! http2mbox) at random moments during a run of 500 messages. Every
//! message that got a `250` lands in Bob's Maildir exactly once.
//!
//! Seeded, so a failure can be replayed: STUBMAIL_CRASH_SEED=<n>.
//! CI runs one trial; STUBMAIL_CRASH_TRIALS=20 runs the full set.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};

/// One SMTP transaction over a fresh connection; Ok(true) only on 250
/// after DATA. Any failure (the server was killed) is Ok(false)/Err.
/// One SMTP transaction by hand (AUTH PLAIN with `auth`, the base64 of
/// `\0user\0password`); Ok(true) only on `250` after DATA.
fn send(port: u16, auth: &str, subject: &str) -> std::io::Result<bool> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut reply = || -> std::io::Result<String> {
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(l);
            }
        }
    };
    reply()?;
    for (cmd, want) in [
        ("EHLO crash\r\n".to_string(), "250"),
        (format!("AUTH PLAIN {auth}\r\n"), "235"),
        ("MAIL FROM:<alice@example.org>\r\n".into(), "250"),
        ("RCPT TO:<bob@example.net>\r\n".into(), "250"),
        ("DATA\r\n".into(), "354"),
    ] {
        w.write_all(cmd.as_bytes())?;
        if !reply()?.starts_with(want) {
            return Ok(false);
        }
    }
    w.write_all(format!("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n").as_bytes())?;
    let done = reply()?;
    let _ = w.write_all(b"QUIT\r\n");
    Ok(done.starts_with("250"))
}

/// Subjects in a Maildir, with how often each occurs.
fn delivered(maildir: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for sub in ["new", "cur"] {
        let Ok(rd) = std::fs::read_dir(maildir.join(sub)) else { continue };
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(s) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                *m.entry(s.to_string()).or_insert(0) += 1;
            }
        }
    }
    m
}

fn trial(seed: u64, messages: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let root = tempfile::tempdir().unwrap();
    let (outbox_port, smtp_port) = (free_port(), free_port());
    let data = root.path().join("outbox");
    let start_outbox = || {
        let mut c = bin_cmd("post_manager");
        c.args(["serve", "--listen", &format!("127.0.0.1:{outbox_port}"), "--data"]).arg(&data);
        Server::start("outbox", c, root.path())
    };
    let outbox = start_outbox();
    let alice = User::init(root.path(), "alice", "alice@example.org", &format!("http://127.0.0.1:{outbox_port}/"));
    let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&data).arg("--key").arg(alice.export()));
    alice.import(&bob.export());
    bob.import(&alice.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    bob.edit_config(|t| {
        let mut pop3 = toml::Table::new();
        pop3.insert("password".into(), "x".into());
        table(t, "poll").insert("pop3".into(), pop3.into());
    });
    let (user, pass) = alice.smtp_login().expect("an SMTP password");
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
    };
    let start_smtp = || {
        let mut c = bin_cmd("smtp2stub");
        c.arg("--home").arg(&alice.home).args(["--listen", &format!("127.0.0.1:{smtp_port}")]);
        Server::start("smtp2stub", c, root.path())
    };
    let start_poller = || {
        let mut c = bin_cmd("http2mbox");
        c.arg("--home").arg(&bob.home).args(["--interval", "1", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
        Server::start("http2mbox", c, root.path())
    };
    // The three programs, killed and restarted by a thread of their own at
    // random moments — in the middle of SMTP transactions, uploads, polls.
    drop(outbox);
    let servers = std::sync::Mutex::new([Some(start_smtp()), Some(start_outbox()), Some(start_poller())]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut accepted = Vec::new();
    let kills = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            let mut kills = [0usize; 3];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.random_range(50..500)));
                let victim = rng.random_range(0..3);
                kills[victim] += 1;
                let mut s = servers.lock().unwrap();
                s[victim] = None; // SIGKILL
                s[victim] = Some(match victim {
                    0 => start_smtp(),
                    1 => start_outbox(),
                    _ => start_poller(),
                });
            }
            kills
        });
        for i in 0..messages {
            let subject = format!("crash-{seed}-{i}");
            match send(smtp_port, &auth, &subject) {
                Ok(true) => accepted.push(subject),
                Ok(false) => {}
                // Killed mid-transaction or not yet back: not accepted.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        killer.join().unwrap()
    });
    assert!(kills.iter().all(|k| *k > 0), "seed {seed}: every program was killed at least once: {kills:?}");
    // No more crashes: everything accepted must arrive, exactly once.
    let maildir = bob.home.join("Maildir");
    let got = wait_for(&format!("seed {seed}: all {} accepted messages delivered", accepted.len()), 180, || {
        let d = delivered(&maildir);
        accepted.iter().all(|s| d.contains_key(s)).then_some(d)
    });
    for s in &accepted {
        if got[s] != 1 {
            // Say how: same Stubmail-Id twice (poller) or two ids (sender side)?
            let mut copies = String::new();
            for sub in ["new", "cur"] {
                for e in std::fs::read_dir(maildir.join(sub)).unwrap().flatten() {
                    let t = std::fs::read_to_string(e.path()).unwrap_or_default();
                    if t.contains(&format!("Subject: {s}\n")) {
                        let ids: Vec<&str> = t.lines().filter(|l| l.starts_with("Stubmail-Id:") || l.contains("with ESMTP id")).collect();
                        copies.push_str(&format!("{}: {ids:?}\n", e.path().display()));
                    }
                }
            }
            panic!("seed {seed}: {s} delivered {} times:\n{copies}", got[s]);
        }
    }
    assert!(got.values().all(|n| *n == 1), "seed {seed}: a duplicate: {got:?}");
    println!("seed {seed}: {} of {messages} accepted, kills (smtp2stub, outbox, http2mbox) = {kills:?}; all delivered once", accepted.len());
    drop(servers);
}

#[test]
fn kill_9_anywhere_loses_nothing_and_duplicates_nothing() {
    let trials: u64 = std::env::var("STUBMAIL_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let first: u64 = std::env::var("STUBMAIL_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    for seed in first..first + trials {
        trial(seed, 500);
    }
}
