//! The first hour, as a newcomer and a GnuPG user live it: mail to
//! oneself, what smtp2stub adds to a bare message. Real binaries, real clients (smtplib, gpg).

mod common;

use common::*;

/// The spooled envelopes of a user's smtp2stub still queued.
fn queued(u: &User) -> Vec<serde_json::Value> {
    let dir = u.home.join("spool/queue");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    rd.filter_map(|e| std::fs::read(e.unwrap().path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

#[test]
fn mail_to_yourself_arrives_in_your_own_mailbox_through_your_outbox() {
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    // A bare message, as a script or a minimal client writes it: no Date:
    // and no Message-ID: (smtp2stub adds both, RFC 6409 §8). Alice is in
    // Cc under another spelling, and Bcc's herself a second time.
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nCc: Alice <Alice@Example.org>\r\nSubject: note to self\r\n\r\nremember the milk\r\n";
    let reply = smtplib_send(
        smtp.port(),
        "alice@example.org",
        &["bob@example.net", "Alice@Example.org"],
        msg,
    )
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    wait_states(&p.alice, 2, "stored");

    // Alice's own poller fetches it from her own outbox, like a contact's.
    let out = p.alice.http2mbox_once();
    assert!(out.contains("delivered 1"), "{out}");
    let mine = std::fs::read_to_string(&p.alice.maildir_new()[0]).unwrap();
    assert!(
        mine.contains("remember the milk") && mine.contains("Subject: note to self"),
        "{mine}"
    );
    assert!(
        mine.contains("(from=pass)"),
        "her own signature, her own address: {mine}"
    );
    let field = |m: &str, name: &str| m.lines().find(|l| l.starts_with(name)).map(str::to_string);
    let date = field(&mine, "Date: ").expect("smtp2stub adds Date:");
    let mid = field(&mine, "Message-ID: <").expect("smtp2stub adds Message-ID:");
    assert!(mid.ends_with("@example.org>"), "{mid}");
    assert!(mailparse_date_ok(&date), "{date}");

    // Bob's copy is the same message: same Date and Message-ID.
    assert!(p.bob.http2mbox_once().contains("delivered 1"));
    let bobs = std::fs::read_to_string(&p.bob.maildir_new()[0]).unwrap();
    assert_eq!(field(&bobs, "Date: "), Some(date));
    assert_eq!(field(&bobs, "Message-ID: <"), Some(mid));
    wait_states(&p.alice, 2, "retrieved");

    // Exactly once, and a client's own Date/Message-ID stay as they are.
    assert!(p.alice.http2mbox_once().contains("delivered 0"));
    let msg = "From: alice@example.org\r\nTo: alice@example.org\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <mine@client>\r\nSubject: two\r\n\r\nx\r\n";
    assert!(
        smtplib_send(
            smtp.port(),
            "alice@example.org",
            &["alice@example.org"],
            msg
        )
        .unwrap()
        .starts_with("250")
    );
    wait_for("the second note stored", 60, || {
        (states(&p.alice).len() == 3).then_some(())
    });
    assert!(p.alice.http2mbox_once().contains("delivered 1"));
    let second = p
        .alice
        .maildir_new()
        .into_iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .find(|m| m.contains("Subject: two"))
        .unwrap();
    assert_eq!(second.matches("Message-ID:").count(), 1, "{second}");
    assert!(
        second.contains("Message-ID: <mine@client>")
            && second.contains("Date: Mon, 2 Nov 2026 10:00:00 +0000"),
        "{second}"
    );
}

/// An RFC 5322 date as smtp2stub writes it: "Wed, 25 Nov 2026 11:50:03 +0000".
fn mailparse_date_ok(line: &str) -> bool {
    let v = line.trim_start_matches("Date: ");
    let parts: Vec<&str> = v.split_whitespace().collect();
    parts.len() == 6
        && parts[0].ends_with(',')
        && parts[3].parse::<i32>().is_ok_and(|y| y >= 2026)
        && parts[5].len() == 5
}
