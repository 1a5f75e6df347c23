//! The first hour, as a newcomer and a GnuPG user live it: mail to
//! oneself, what smtp2stub adds to a bare message. Real binaries, real clients (smtplib, gpg).

mod common;

use common::*;

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
        let st = states(&p.alice);
        (st.len() == 3 && !st.iter().any(|s| s == "queued")).then_some(())
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

#[test]
fn an_existing_gnupg_key_is_adopted_with_its_passphrase_asked_once() {
    let root = tempfile::tempdir().unwrap();
    let gh = root.path().join("gnupg");
    let with_pass = |c: &mut std::process::Command| {
        c.args(["--passphrase", "correct horse"]);
    };
    let mut c = gpg(&gh);
    with_pass(&mut c);
    ok(c.args(["--quick-gen-key", "Dana <dana@example.com>", "future-default", "default", "never"]));
    let mut c = gpg(&gh);
    with_pass(&mut c);
    ok(c.args(["--quick-add-uid", "dana@example.com", "Dana <d@example.com>"]));
    let mut c = gpg(&gh);
    with_pass(&mut c);
    let secret = ok(c.args(["--armor", "--export-secret-keys", "dana@example.com"])).stdout;
    let key = root.path().join("dana-secret.asc");
    std::fs::write(&key, &secret).unwrap();
    let fpr = gpg_fingerprint(&gh, "dana@example.com");
    let home = root.path().join("dana");
    let init = |pass: Option<&str>| {
        let mut c = bin_cmd("stubmail");
        c.arg("--home").arg(&home).args(["init", "--email", "dana@example.com", "--outbox", "https://outbox.example.com/dana/", "--key"]).arg(&key);
        c.env_remove("STUBMAIL_KEY_PASSPHRASE");
        if let Some(p) = pass {
            c.env("STUBMAIL_KEY_PASSPHRASE", p);
        }
        c
    };
    // No terminal and no passphrase: a clear error with the ways out.
    let err = fails(&mut init(None));
    assert!(err.contains("passphrase") && err.contains("STUBMAIL_KEY_PASSPHRASE") && err.contains("gpg --edit-key"), "{err}");
    let err = fails(&mut init(Some("wrong")));
    assert!(err.contains("wrong passphrase"), "{err}");
    // Two addresses and no --email: which one is hers?
    let err = fails(bin_cmd("stubmail").arg("--home").arg(&home).args(["init", "--outbox", "http://o/", "--key"]).arg(&key).env("STUBMAIL_KEY_PASSPHRASE", "correct horse"));
    assert!(err.contains("several addresses") && err.contains("--email"), "{err}");
    assert!(!home.join("secret.pgp").exists(), "a failed adoption leaves nothing");
    let out = stdout(&ok(&mut init(Some("correct horse"))));
    assert!(out.contains(&format!("adopted identity {fpr} <dana@example.com>")), "{out}");
    // The same key, now bound to the outbox on every User ID; the second
    // address is an alias she may send as.
    let u = User { email: "dana@example.com".into(), home: home.clone() };
    assert_eq!(u.fingerprint(), fpr);
    let cert = stubmail::pgp::parse_certs(&std::fs::read(u.export()).unwrap()).unwrap().remove(0);
    assert_eq!(stubmail::pgp::outboxes_of(&cert), vec!["https://outbox.example.com/dana/"]);
    assert_eq!(stubmail::pgp::check_contact(&cert).unwrap().len(), 2);
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(home.join("config.toml")).unwrap()).unwrap();
    assert_eq!(config["identity"]["aliases"].as_array().unwrap()[0].as_str(), Some("d@example.com"));
    // The printed next steps run as printed (the data directory aside,
    // which is the operator's).
    let steps: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("next:")).skip(1).map(str::trim).collect();
    let export = steps.iter().find(|l| l.starts_with("stubmail")).unwrap();
    ok(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && PATH='{}':$PATH {export}", root.path().display(), bin("stubmail").parent().unwrap().display())));
    let add = steps.iter().find(|l| l.starts_with("post_manager")).unwrap();
    let add = add.replace("/var/lib/stubmail-outbox", &root.path().join("outbox").display().to_string());
    let o = ok(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && PATH='{}':$PATH {add}", root.path().display(), bin("stubmail").parent().unwrap().display())));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&fpr) || String::from_utf8_lossy(&o.stderr).contains(&fpr), "{o:?}");
    // The secret key file is 0600 and unprotected (the programs use it
    // unattended), and the key signs: an outbox request works.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(home.join("secret.pgp")).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn an_autocrypt_header_in_incoming_mail_adds_no_key() {
    let p = Pair::start(true);
    let smtp = p.alice.smtp2stub(p.root.path());
    // Alice's message carries someone else's key in an Autocrypt header
    // (a forwarded message, or a hostile sender): Bob's address book and
    // whitelist stay as Bob made them.
    let eve = stubmail::Identity::generate(None, "eve@evil.example", "http://127.0.0.1:9/").unwrap();
    let ac = stubmail::pgp::autocrypt_header(&eve.cert(), "eve@evil.example").unwrap();
    let msg = format!("From: alice@example.org\r\nTo: bob@example.net\r\n{ac}Subject: with a key\r\n\r\nx\r\n");
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], &msg).unwrap().starts_with("250"));
    wait_states(&p.alice, 1, "stored");
    assert!(p.bob.http2mbox_once().contains("delivered 1"));
    let got = std::fs::read_to_string(&p.bob.maildir_new()[0]).unwrap();
    assert!(got.contains("Autocrypt: addr=eve@evil.example"), "{got}");
    let list = stdout(&ok(p.bob.stubmail().args(["keys", "list"])));
    assert!(list.contains("alice@example.org") && !list.contains("eve@evil.example"), "{list}");
    assert_eq!(std::fs::read_dir(p.bob.home.join("keyring")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "pgp")).count(), 1);
}

#[test]
fn the_install_section_matches_the_units_and_the_rust_version() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let cargo = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    // The Rust version README names is the one Cargo.toml asks for.
    let rv = cargo.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    assert!(readme.contains(&format!("Rust {rv} or newer")), "README names Rust {rv}");
    // README installs every program's package into ~/.cargo/bin ...
    let install = readme.lines().find(|l| l.contains("cargo install --locked --path")).expect("an install line");
    for p in [".", "smtp2stub", "http2mbox", "post_manager"] {
        assert!(install.contains(&format!(" {p} ")) || install.contains(&format!(" {p};")), "{p} in: {install}");
        let pkg = if p == "." { root.to_string() } else { format!("{root}/{p}") };
        assert!(std::path::Path::new(&format!("{pkg}/Cargo.toml")).exists(), "{pkg} is a package");
    }
    // ... where the user units run them.
    for (unit, bin) in [("stubmail.service", "stubmail up"), ("smtp2stub.service", "smtp2stub"), ("http2mbox.service", "http2mbox")] {
        let u = std::fs::read_to_string(format!("{root}/contrib/systemd/{unit}")).unwrap();
        assert!(u.contains(&format!("ExecStart=%h/.cargo/bin/{bin}")), "{unit}: {u}");
    }
}

#[test]
fn mail_to_yourself_arrives_with_an_empty_keyring() {
    // A newcomer's first test: no contacts yet, a note to herself.
    let root = tempfile::tempdir().unwrap();
    let outbox = Outbox::start(root.path(), "outbox");
    let solo = User::init(root.path(), "solo", "solo@example.org", &outbox.url());
    outbox.add_account(&solo);
    solo.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    assert!(!solo.home.join("keyring").exists() || std::fs::read_dir(solo.home.join("keyring")).unwrap().count() == 0);
    let smtp = solo.smtp2stub(root.path());
    let msg = "From: solo@example.org\r\nTo: solo@example.org\r\nSubject: hello me\r\n\r\nfirst\r\n";
    assert!(smtplib_send(smtp.port(), "solo@example.org", &["solo@example.org"], msg).unwrap().starts_with("250"));
    wait_states(&solo, 1, "stored");
    let out = solo.http2mbox_once();
    assert!(out.contains("polled 1 outbox(es), delivered 1"), "{out}");
    assert!(std::fs::read_to_string(&solo.maildir_new()[0]).unwrap().contains("Subject: hello me"));
}
