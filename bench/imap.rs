//! IMAP: a first sync of the mailbox with mbsync, and a FETCH of every
//! message's header with imaplib, against http2mbox and, in the same run
//! over the same Maildir, Dovecot's imapd (issue #20).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::suite::{percentile, row, Row, Scale};
use crate::common::*;

const HEADERS: &str = r#"
import imaplib, sys, time
t = time.time()
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=600)
M.login(sys.argv[2], "pop-secret")
n = int(M.select("INBOX", readonly=True)[1][0])
typ, d = M.fetch("1:*", "(UID BODY.PEEK[HEADER])")
got = sum(1 for x in d if isinstance(x, tuple))
M.logout()
print(n, got, time.time() - t)
"#;

fn headers(port: u16, user: &str) -> (usize, f64) {
    let (good, out) = python(HEADERS, &[&port.to_string(), user]);
    assert!(good, "{out}");
    let v: Vec<&str> = out.split_whitespace().collect();
    let (n, got): (usize, usize) = (v[0].parse().unwrap(), v[1].parse().unwrap());
    assert_eq!(n, got, "every header came");
    (n, v[2].parse().unwrap())
}

/// A first sync into an empty local Maildir (mbsync's own fsyncs off);
/// returns the seconds taken.
fn mbsync(dir: &Path, port: u16, user: &str, tag: &str, expect: usize) -> f64 {
    let local = dir.join(format!("mbsync-{tag}"));
    let _ = std::fs::remove_dir_all(&local);
    std::fs::create_dir_all(&local).unwrap();
    let rc = dir.join(format!("mbsyncrc-{tag}"));
    std::fs::write(
        &rc,
        format!(
            // FSync off: the local side's fsyncs (the same for both
            // servers) would be most of the time measured.
            "FSync no\n\nIMAPAccount a\nHost 127.0.0.1\nPort {port}\nUser {user}\nPass pop-secret\nSSLType None\nAuthMechs LOGIN\nPipelineDepth 50\n\n\
             IMAPStore remote\nAccount a\n\nMaildirStore local\nPath {l}/\nInbox {l}/INBOX\n\n\
             Channel c\nFar :remote:INBOX\nNear :local:INBOX\nSync Pull\nCreate Near\nSyncState *\n",
            l = local.display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    ok(Command::new(require("mbsync")).arg("-q").arg("-c").arg(&rc).arg("-a"));
    let secs = t.elapsed().as_secs_f64();
    let got = ["new", "cur"].iter().map(|d| std::fs::read_dir(local.join("INBOX").join(d)).map_or(0, |r| r.count())).sum::<usize>();
    assert_eq!(got, expect, "mbsync ({tag}) fetched every message");
    secs
}

pub fn imap(s: &Scale) -> Vec<Row> {
    let root = tempfile::tempdir().unwrap();
    let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
    let md = bob.home.join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let n = s.imap_messages;
    let body = "x".repeat(76) + "\n";
    for i in 0..n {
        let m = format!("From: alice@example.org\nTo: bob@example.net\nSubject: imap {i}\nMessage-ID: <{i}@bench>\n\n{}", body.repeat(52));
        std::fs::write(md.join("cur").join(format!("{}.{i}.bench:2,S", 1_700_000_000 + i)), m).unwrap();
    }
    bob.set_pop3_password("pop-secret");
    let mut c = bin_cmd("http2mbox");
    c.arg("--home").arg(&bob.home).args(["--interval", "3600", "--pop3-listen", "127.0.0.1:0", "--imap-listen", "127.0.0.1:0"]);
    let daemon = Server::start("http2mbox-imap", c, root.path());
    let ours = wait_for("IMAP to listen", 30, || daemon.stdout_after("http2mbox IMAP listening on"));
    let ours: u16 = ours.rsplit(':').next().unwrap().parse().unwrap();
    let dovecot = match dovecot::start(root.path(), &md, "imap") {
        Ok(d) => d,
        Err(log) => {
            let log = log.replace('\n', " ");
            return vec![row("IMAP", "—".into(), "Dovecot did not start".into(), None, "≥ 1.0×", false, format!("Dovecot's log: {log}"))];
        }
    };
    // Warm both (our uid list, Dovecot's index), then measure in turns.
    let _ = headers(ours, "bob@example.net");
    let _ = headers(dovecot.port, "bob");
    let median = |mut v: Vec<f64>| percentile(&mut v, 0.5);
    let (mut oh, mut dh, mut os, mut ds) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        oh.push(headers(ours, "bob@example.net").1);
        dh.push(headers(dovecot.port, "bob").1);
        os.push(mbsync(root.path(), ours, "bob@example.net", "ours", n));
        ds.push(mbsync(root.path(), dovecot.port, "bob", "dovecot", n));
    }
    drop(dovecot);
    let nf = n as f64;
    [
        ("a first sync with mbsync", median(os), median(ds), "same Maildir, pull into an empty local Maildir; median of 3 runs each, in turns"),
        ("FETCH of every header with imaplib", median(oh), median(dh), "same Maildir, login to LOGOUT, `FETCH 1:* (UID BODY.PEEK[HEADER])`; median of 3 runs each, in turns"),
    ]
    .into_iter()
    .map(|(what, ours, dove, note)| {
        row(
            &format!("IMAP, {n} × 4 KB, {what}"),
            format!("{:.0} msg/s", nf / ours),
            format!("{:.0} msg/s (Dovecot)", nf / dove),
            Some(dove / ours),
            "≥ 1.0×",
            dove / ours >= 1.0,
            note.into(),
        )
    })
    .collect()
}
