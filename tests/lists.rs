//! Mailing lists and forwarding (issue #18) end to end with the real
//! programs: a list made with `stubmail list create`, its robot
//! (`stubmail list run`), members' own smtp2stub and http2mbox, one
//! post_manager as everyone's outbox; Python's email module reads the
//! List-* fields and gpg checks the author's signature a list or a
//! forwarder carries.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const LIST: &str = "team@example.org";

struct World {
    root: tempfile::TempDir,
    outbox: Outbox,
    list: User,
    robot: Option<Server>,
    alice: User,
    bob: User,
    carol: User,
}

impl World {
    /// Alice (the owner), Bob and Carol are members; every one of them,
    /// and the list, is an account of one outbox.
    fn start() -> World {
        World::start_with(&[])
    }

    /// With extra `list create` arguments.
    fn start_with(create: &[&str]) -> World {
        let root = tempfile::tempdir().unwrap();
        let outbox = Outbox::start(root.path(), "outbox");
        let user = |name: &str, email: &str| {
            let u = User::init(root.path(), name, email, &outbox.url());
            outbox.add_account(&u);
            u.edit_config(|t| {
                table(t, "discovery").insert("wkd".into(), false.into());
            });
            u
        };
        let (alice, bob, carol) = (user("alice", "alice@example.org"), user("bob", "bob@example.net"), user("carol", "carol@example.com"));
        let list = User { email: LIST.into(), home: root.path().join("list") };
        let out = ok(list
            .stubmail()
            .args(["list", "create", LIST, "--outbox", &outbox.url(), "--description", "The Team", "--owner"])
            .arg(alice.export())
            .args(create));
        let said = stdout(&out);
        assert!(said.contains("team-subscribe@example.org and team-unsubscribe@example.org"), "{said}");
        outbox.add_account(&list);
        ok(list.stubmail().args(["list", "add"]).arg(bob.export()));
        ok(list.stubmail().args(["list", "add"]).arg(carol.export()));
        list.edit_config(|t| {
            table(t, "poll").insert("interval_secs".into(), 1.into());
        });
        let cert = list.export();
        for u in [&alice, &bob, &carol] {
            u.import(&cert);
        }
        World { root, outbox, list, robot: None, alice, bob, carol }
    }

    fn start_robot(&mut self) {
        self.start_robot_as(&["list", "run"]);
    }

    /// `stubmail up` in a list's home runs its robot too.
    fn start_robot_as(&mut self, args: &[&str]) {
        let mut c = bin_cmd("stubmail");
        c.arg("--home").arg(&self.list.home).args(args);
        self.robot = Some(Server::start("list-robot", c, self.root.path()));
    }

    /// A user who is no member but has the list's key (as anyone may).
    fn stranger(&self, name: &str, email: &str) -> User {
        let u = User::init(self.root.path(), name, email, &self.outbox.url());
        self.outbox.add_account(&u);
        u.edit_config(|t| {
            table(t, "discovery").insert("wkd".into(), false.into());
        });
        u.import(&self.list.export());
        u
    }

    fn members(&self) -> String {
        stdout(&ok(self.list.stubmail().args(["list", "members"])))
    }
}

/// Send `msg` from `u` through a smtp2stub of theirs to `to`.
fn send(u: &User, logs: &Path, to: &[&str], msg: &str) {
    let s = u.smtp2stub(logs);
    let r = smtplib_send(s.port(), &u.email, to, msg).unwrap();
    assert!(r.starts_with("250"), "{r}");
    // Wait until it left the spool: the outbox holds it.
    wait_for("the message to be uploaded", 60, || (!states(u).iter().any(|s| s == "queued")).then_some(()));
}

/// Poll until `u` has `n` messages, then once more, and return them all
/// (so a duplicate would show).
fn wait_mail(u: &User, n: usize) -> Vec<PathBuf> {
    wait_for(&format!("{} to have {n} message(s)", u.email), 60, || {
        u.http2mbox_once();
        (u.maildir_new().len() >= n).then_some(())
    });
    u.http2mbox_once();
    u.maildir_new()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn a_members_post_reaches_every_member_once_from_one_stored_copy_with_list_fields_and_the_authors_signature() {
    let mut w = World::start();
    // Bob has Alice's key: he sees her own signature checked.
    w.bob.import(&w.alice.export());
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    let post = "From: Alice <alice@example.org>\r\nTo: The Team <team@example.org>\r\nSubject: first post\r\nMessage-ID: <p1@example.org>\r\n\r\nHello, team.\r\n";
    send(&w.alice, &logs, &[LIST], post);
    for u in [&w.alice, &w.bob, &w.carol] {
        let got = wait_mail(u, 1);
        assert_eq!(got.len(), 1, "{}: exactly one copy", u.email);
        let text = read(&got[0]);
        assert!(text.contains("Subject: first post") && text.contains("Hello, team."), "{text}");
        // The list signed it; the From: is the author's: vouched for by the
        // list, or by the author's own signature for whoever has her key.
        let verdict = if u.email == "bob@example.net" { "(from=pass; author verified, via team@example.org)" } else { "(from=list; via team@example.org)" };
        assert!(text.contains(&format!("smtp.mailfrom={LIST}")) && text.contains(verdict), "{}: {text}", u.email);
    }
    // One stored message at the list's outbox for all three members.
    let rows = w.list.status_json();
    let rows = rows.as_array().unwrap();
    let ids: std::collections::BTreeSet<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!((rows.len(), ids.len()), (3, 1), "{rows:?}");
    wait_for("every member to have retrieved it", 30, || states(&w.list).iter().all(|s| s == "retrieved").then_some(()));

    // Python's email module reads the list's fields (RFC 2369, 2919).
    let bob_copy = w.bob.maildir_new()[0].clone();
    let (good, out) = python(
        "import email, sys\nm = email.message_from_binary_file(open(sys.argv[1], 'rb'))\n\
         for f in ['List-Id', 'List-Post', 'List-Subscribe', 'List-Unsubscribe', 'Precedence', 'From', 'Subject']: print(f + '=' + str(m[f]))",
        &[bob_copy.to_str().unwrap()],
    );
    assert!(good, "{out}");
    for want in [
        "List-Id=\"The Team\" <team.example.org>",
        "List-Post=<mailto:team@example.org>",
        "List-Subscribe=<mailto:team-subscribe@example.org>",
        "List-Unsubscribe=<mailto:team-unsubscribe@example.org>",
        "Precedence=list",
        "From=Alice <alice@example.org>",
        "Subject=first post",
    ] {
        assert!(out.lines().any(|l| l == want), "{want} not in:\n{out}");
    }

    // The author's own signature, carried by the list, checked by gpg with
    // Alice's certificate alone: over the bytes after the list's field, as
    // Alice submitted them (CRLF).
    let text = verify_author(&bob_copy, &w.alice, &w.root.path().join("verify"));
    assert!(text.starts_with("Received: from client.test") && text.contains("\r\nFrom: Alice <alice@example.org>\r\nTo: The Team"), "{text}");
}

#[test]
fn a_member_leaves_by_mail_and_gets_no_more_posts_and_refused_posts_are_answered() {
    let mut w = World::start();
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    assert!(w.members().contains("carol@example.com"), "{}", w.members());
    send(&w.carol, &logs, &["team-unsubscribe@example.org"], "From: carol@example.com\r\nTo: team-unsubscribe@example.org\r\nSubject: bye\r\n\r\nunsubscribe\r\n");
    wait_for("Carol to have left", 60, || (!w.members().contains("carol@example.com")).then_some(()));
    // Her request was fetched and acked like any message.
    wait_for("Carol's request to be retrieved", 30, || states(&w.carol).iter().all(|s| s == "retrieved").then_some(()));

    // A post naming the list and its unsubscribe address at once is
    // ambiguous: not published, and Bob is told why.
    send(&w.bob, &logs, &[LIST, "team-unsubscribe@example.org"], "From: bob@example.net\r\nTo: team@example.org, team-unsubscribe@example.org\r\nSubject: which\r\nMessage-ID: <b1@example.net>\r\n\r\n?\r\n");
    let got = wait_mail(&w.bob, 1);
    let notice = read(&got[0]);
    assert!(notice.contains("Subject: Your message to team@example.org was not published"), "{notice}");
    assert!(notice.contains("In-Reply-To: <b1@example.net>") && notice.contains("more than one, of the list's addresses"), "{notice}");
    assert!(!notice.contains("List-Id"), "a notice is no list post: {notice}");
    assert!(w.members().contains("bob@example.net"), "Bob is still a member");

    // The next post reaches Alice and Bob, not Carol.
    send(&w.alice, &logs, &[LIST], "From: alice@example.org\r\nTo: team@example.org\r\nSubject: after carol\r\n\r\nhi\r\n");
    let got = wait_mail(&w.bob, 2);
    assert!(got.iter().any(|p| read(p).contains("Subject: after carol")));
    assert_eq!(wait_mail(&w.alice, 1).len(), 1);
    // Carol was told she left, and gets nothing more.
    let got = wait_mail(&w.carol, 1);
    assert_eq!(got.len(), 1, "Carol left: no post reaches her");
    let bye = read(&got[0]);
    assert!(bye.contains("Subject: You have left team@example.org") && bye.contains("Return-Path: <team@example.org>"), "{bye}");
    let rows = w.list.status_json();
    let post_rows: Vec<&serde_json::Value> = rows.as_array().unwrap().iter().filter(|r| r["subject"] == "after carol").collect();
    assert_eq!(post_rows.len(), 2, "stored for Alice and Bob only: {post_rows:?}");
}

#[test]
fn a_non_members_post_is_never_fetched() {
    let mut w = World::start();
    let dave = User::init(w.root.path(), "dave", "dave@example.net", &w.outbox.url());
    w.outbox.add_account(&dave);
    dave.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    dave.import(&w.list.export());
    w.start_robot_as(&["up"]);
    let logs = w.root.path().to_path_buf();
    send(&dave, &logs, &[LIST], "From: dave@example.net\r\nTo: team@example.org\r\nSubject: buy now\r\n\r\nspam\r\n");
    // A member's post made after Dave's arrives; Dave's never does.
    send(&w.alice, &logs, &[LIST], "From: alice@example.org\r\nTo: team@example.org\r\nSubject: real\r\n\r\nhi\r\n");
    let got = wait_mail(&w.bob, 1);
    assert_eq!(got.len(), 1);
    assert!(read(&got[0]).contains("Subject: real"));
    assert_eq!(states(&dave), vec!["stored"], "the robot polls members only: Dave's post waits in his outbox, unfetched");
}

/// `--notify` for a list robot on a free loopback port.
fn notify_arg() -> String {
    format!("--notify=udp://{}", std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
}

/// The subjects in a user's Maildir.
fn subjects(u: &User) -> Vec<String> {
    u.maildir_new().iter().filter_map(|p| read(p).lines().find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))).collect()
}

#[test]
fn a_stranger_joins_by_mail_after_confirming_and_then_gets_the_posts() {
    let n = notify_arg();
    let mut w = World::start_with(&[&n]);
    let dave = w.stranger("dave", "dave@example.net");
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    send(&dave, &logs, &["team-subscribe@example.org"], "From: dave@example.net\r\nTo: team-subscribe@example.org\r\nSubject: join\r\n\r\nplease\r\n");
    // Not a member yet: asked to confirm, from the list's subscribe address.
    let got = wait_mail(&dave, 1);
    let ask = read(&got[0]);
    assert!(ask.contains("Subject: Confirm joining team@example.org (token ") && ask.contains("Return-Path: <team@example.org>"), "{ask}");
    assert!(!w.members().contains("dave@example.net"), "not before confirming: {}", w.members());
    let subject = ask.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap().to_string();
    // A post by Alice now does not reach Dave.
    send(&w.alice, &logs, &[LIST], "From: alice@example.org\r\nTo: team@example.org\r\nSubject: before dave\r\n\r\nhi\r\n");
    wait_mail(&w.bob, 1);
    // A wrong token is a new request: asked again, not joined.
    send(&dave, &logs, &["team-subscribe@example.org"], "From: dave@example.net\r\nTo: team-subscribe@example.org\r\nSubject: Re: Confirm joining team@example.org (token 00000000000000000000000000000000)\r\n\r\nyes\r\n");
    let got = wait_mail(&dave, 2);
    assert!(!w.members().contains("dave@example.net"), "a wrong token joins no one");
    let again: Vec<String> = got.iter().map(|p| read(p)).filter(|t| t.contains(&format!("Subject: {subject}"))).collect();
    assert_eq!(again.len(), 2, "asked again with the token still pending");
    // The reply with the first token.
    send(&dave, &logs, &["team-subscribe@example.org"], &format!("From: dave@example.net\r\nTo: team-subscribe@example.org\r\nSubject: Re: {subject}\r\n\r\nyes\r\n"));
    wait_for("Dave to join", 60, || w.members().contains("dave@example.net").then_some(()));
    let got = wait_mail(&dave, 3);
    assert!(subjects(&dave).iter().any(|s| s == "Welcome to team@example.org"), "{:?}", subjects(&dave));
    assert_eq!(got.len(), 3);
    assert!(!subjects(&dave).iter().any(|s| s == "before dave"), "posts from before joining are not sent");
    // Now a member: Alice's next post reaches him.
    send(&w.alice, &logs, &[LIST], "From: alice@example.org\r\nTo: team@example.org\r\nSubject: welcome dave\r\n\r\nhi\r\n");
    wait_mail(&dave, 4);
    assert!(subjects(&dave).iter().any(|s| s == "welcome dave"), "{:?}", subjects(&dave));
}

#[test]
fn a_non_members_post_is_refused_with_a_notice_to_the_poster_and_the_owner() {
    let n = notify_arg();
    let mut w = World::start_with(&[&n]);
    let dave = w.stranger("dave", "dave@example.net");
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    send(&dave, &logs, &[LIST], "From: dave@example.net\r\nTo: team@example.org\r\nSubject: buy now\r\nMessage-ID: <d1@example.net>\r\n\r\nspam\r\n");
    let got = wait_mail(&dave, 1);
    let notice = read(&got[0]);
    assert!(notice.contains("only members may post; to join, write to team-subscribe@example.org") && notice.contains("In-Reply-To: <d1@example.net>"), "{notice}");
    let got = wait_mail(&w.alice, 1);
    let owner = read(&got[0]);
    assert!(owner.contains("Subject: A non-member's post to team@example.org") && owner.contains("\"buy now\" from dave@example.net") && owner.contains("was refused"), "{owner}");
    w.bob.http2mbox_once();
    assert!(w.bob.maildir_new().is_empty(), "nothing published");
    assert_eq!(states(&dave), vec!["retrieved"], "fetched by the robot, answered, and not published");
}

#[test]
fn a_held_non_members_post_is_published_once_the_owner_approves_it() {
    let n = notify_arg();
    let mut w = World::start_with(&[&n, "--non-members", "hold"]);
    let dave = w.stranger("dave", "dave@example.net");
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    send(&dave, &logs, &[LIST], "From: dave@example.net\r\nTo: team@example.org\r\nSubject: a question\r\n\r\nmay I ask?\r\n");
    let got = wait_mail(&w.alice, 1);
    let owner = read(&got[0]);
    let id = owner.lines().find_map(|l| l.trim().strip_prefix("stubmail list approve ")).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    let held = stdout(&ok(w.list.stubmail().args(["list", "held"])));
    assert!(held.contains(&id) && held.contains("from dave@example.net") && held.contains("\"a question\""), "{held}");
    w.bob.http2mbox_once();
    assert!(w.bob.maildir_new().is_empty(), "held, not published");
    assert!(fails(w.list.stubmail().args(["list", "approve", "l../../x"])).contains("no held post"));
    ok(w.list.stubmail().args(["list", "approve", &id]));
    let got = wait_mail(&w.bob, 1);
    let post = read(&got[0]);
    assert!(post.contains("Subject: a question") && post.contains("List-Id: \"The Team\" <team.example.org>"), "{post}");
    assert!(post.contains(&format!("Stubmail-Author-Signature: fpr={}", dave.fingerprint())), "{post}");
    assert!(stdout(&ok(w.list.stubmail().args(["list", "held"]))).contains("no posts held"));
    assert!(!w.members().contains("dave@example.net"), "an approved post makes no member");
}

/// Check with gpg, holding `author`'s certificate alone, the author's
/// signature a list post or a forward carries in `copy` (a Maildir file,
/// LF, or an archived post, CRLF): over the bytes after the
/// Stubmail-Author-Signature field, with CRLF line endings as submitted. One byte changed must fail. Returns the
/// signed message.
fn verify_author(copy: &Path, author: &User, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let (good, out) = python(
        "import sys, base64, re\ntext = open(sys.argv[1], 'rb').read()\n\
         m = re.search(rb'^Stubmail-Author-Signature: fpr=([0-9A-F]{40}); sig=([A-Za-z0-9+/=]+)\\r?\\n', text, re.M)\n\
         open(sys.argv[2] + '/post.sig', 'wb').write(base64.b64decode(m.group(2)))\n\
         tail = text[m.end():]\n\
         open(sys.argv[2] + '/post.eml', 'wb').write(tail if b'\\r\\n' in tail else tail.replace(b'\\n', b'\\r\\n'))\n\
         print(m.group(1).decode())",
        &[copy.to_str().unwrap(), dir.to_str().unwrap()],
    );
    assert!(good, "{out}");
    assert_eq!(out.trim(), author.fingerprint());
    let eml = std::fs::read(dir.join("post.eml")).unwrap();
    let gpg = require("gpg");
    let gnupg = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    ok(std::process::Command::new(&gpg).arg("--homedir").arg(&gnupg).args(["--batch", "--import"]).arg(author.export()));
    let verify = || std::process::Command::new(&gpg).arg("--homedir").arg(&gnupg).args(["--batch", "--verify"]).arg(dir.join("post.sig")).arg(dir.join("post.eml")).output().unwrap();
    let v = verify();
    let said = String::from_utf8_lossy(&v.stderr).to_string();
    assert!(v.status.success() && said.contains(&format!("Good signature from \"{}", author.home.file_name().unwrap().to_str().unwrap())), "gpg --verify: {said}");
    // One byte changed (by the list, the forwarder, anyone on the way): refused.
    let mut forged = eml.clone();
    let last = forged.len() - 3;
    forged[last] ^= 1;
    std::fs::write(dir.join("post.eml"), &forged).unwrap();
    assert!(!verify().status.success(), "an altered message verified");
    String::from_utf8_lossy(&eml).into_owned()
}

/// Bob forwards what he gets to Carol: a new message in Bob's outbox, with
/// Resent-* fields, carrying Alice's message under Alice's signature.
/// Carol forwards back to Bob: the loop stops at Bob, who sees the
/// Message-ID he forwarded before.
#[test]
fn a_forward_rehosts_the_message_with_the_authors_signature_and_a_loop_stops() {
    let w = World::start();
    let logs = w.root.path().to_path_buf();
    w.bob.import(&w.carol.export());
    w.bob.import(&w.alice.export());
    w.carol.import(&w.bob.export());
    w.carol.import(&w.alice.export());
    w.alice.import(&w.bob.export());
    for (u, to) in [(&w.bob, "carol@example.com"), (&w.carol, "bob@example.net")] {
        u.edit_config(|t| {
            let mut f = toml::Table::new();
            f.insert("to".into(), to.into());
            t.insert("forward".into(), f.into());
        });
    }
    let (_bob_smtp, _carol_smtp) = (w.bob.smtp2stub(&logs), w.carol.smtp2stub(&logs));
    send(&w.alice, &logs, &["bob@example.net"], "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: for bob\r\nMessage-ID: <a1@example.org>\r\n\r\nHello Bob.\r\n");
    // Bob keeps it (forward.keep defaults to true) and forwards it.
    assert_eq!(wait_mail(&w.bob, 1).len(), 1);
    wait_for("Bob's forward to be stored", 60, || {
        let st = states(&w.bob);
        (st.len() == 1 && st[0] != "queued").then_some(())
    });
    let got = wait_mail(&w.carol, 1);
    let fwd = read(&got[0]);
    assert!(fwd.contains("Resent-From: bob@example.net\nResent-To: carol@example.com\n") && fwd.contains("Subject: for bob"), "{fwd}");
    // Carol has Alice's key: the author's signature checked, the From: passes.
    assert!(fwd.contains("smtp.mailfrom=bob@example.net") && fwd.contains("header.from=alice@example.org (from=pass; author verified, forwarded by bob@example.net)"), "{fwd}");
    let text = verify_author(&got[0], &w.alice, &w.root.path().join("verify-fwd"));
    assert!(text.contains("\r\nFrom: alice@example.org\r\nTo: bob@example.net\r\nSubject: for bob\r\n"), "{text}");
    // Carol forwarded it back to Bob; Bob keeps it and forwards no more.
    wait_for("Carol's forward to be stored", 60, || {
        let st = states(&w.carol);
        (st.len() == 1 && st[0] != "queued").then_some(())
    });
    assert_eq!(wait_mail(&w.bob, 2).len(), 2);
    std::thread::sleep(std::time::Duration::from_secs(2));
    w.carol.http2mbox_once();
    assert_eq!(w.carol.maildir_new().len(), 1, "the loop stopped: nothing more reaches Carol");
    assert_eq!(states(&w.bob).len(), 1, "Bob forwarded once");
}

/// A role address (RFC 2142), as a list that takes anyone's mail: Dave,
/// no member, writes to it, and every member reads it.
#[test]
fn a_role_address_takes_anyones_mail_for_its_members() {
    let n = notify_arg();
    let mut w = World::start_with(&[&n, "--non-members", "accept"]);
    let dave = w.stranger("dave", "dave@example.net");
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    send(&dave, &logs, &[LIST], "From: dave@example.net\r\nTo: team@example.org\r\nSubject: your server is open\r\n\r\nsee logs\r\n");
    for u in [&w.alice, &w.bob, &w.carol] {
        let got = wait_mail(u, 1);
        let text = read(&got[0]);
        assert!(text.contains("Subject: your server is open") && text.contains("header.from=dave@example.net (from=list; via team@example.org)"), "{text}");
    }
    assert!(!w.members().contains("dave@example.net"), "writing to a role address makes no member");
    wait_mail(&dave, 0);
    assert!(dave.maildir_new().is_empty(), "no notice to the writer");
}

/// With the owner's approval: a confirmed request waits until the owner
/// runs the command the robot mailed them. With subscription closed, a
/// request is refused.
#[test]
fn joining_waits_for_the_owner_when_the_list_asks_for_approval() {
    let n = notify_arg();
    let mut w = World::start_with(&[&n, "--subscription", "approve"]);
    let dave = w.stranger("dave", "dave@example.net");
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    send(&dave, &logs, &["team-subscribe@example.org"], "From: dave@example.net\r\nTo: team-subscribe@example.org\r\nSubject: join\r\n\r\n\r\n");
    let ask = read(&wait_mail(&dave, 1)[0]);
    let subject = ask.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap().to_string();
    send(&dave, &logs, &["team-subscribe@example.org"], &format!("From: dave@example.net\r\nTo: team-subscribe@example.org\r\nSubject: Re: {subject}\r\n\r\n\r\n"));
    wait_mail(&dave, 2);
    assert!(subjects(&dave).iter().any(|s| s == "Your request to join team@example.org waits for its owner"), "{:?}", subjects(&dave));
    assert!(!w.members().contains("dave@example.net"));
    let owner = read(&wait_mail(&w.alice, 1)[0]);
    let cmd = owner.lines().find_map(|l| l.trim().strip_prefix("stubmail list admit ")).unwrap().trim().to_string();
    assert_eq!(cmd, dave.fingerprint());
    assert!(fails(w.list.stubmail().args(["list", "admit", &w.bob.fingerprint()])).contains("has not asked to join"));
    ok(w.list.stubmail().args(["list", "admit", &cmd]));
    assert!(w.members().contains("dave@example.net"));

    // Closed: a request gets a refusal, and no confirmation.
    let n = notify_arg();
    let mut w = World::start_with(&[&n, "--subscription", "closed"]);
    let erin = w.stranger("erin", "erin@example.net");
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    send(&erin, &logs, &["team-subscribe@example.org"], "From: erin@example.net\r\nTo: team-subscribe@example.org\r\nSubject: join\r\n\r\n\r\n");
    let no = read(&wait_mail(&erin, 1)[0]);
    assert!(no.contains("members are added by the list's owner only") && !no.contains("token"), "{no}");
}

/// A public list's archive, read by a real feed reader (Python's
/// feedparser) from the list's outbox: one entry per post, each linking
/// the post and the list's signature over it, which gpg checks. A private
/// list has no feed.
#[test]
fn a_public_lists_archive_is_an_atom_feed_a_feed_reader_reads_and_gpg_verifies() {
    let mut w = World::start_with(&["--public"]);
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    for i in 1..=2 {
        send(&w.alice, &logs, &[LIST], &format!("From: Alice <alice@example.org>\r\nTo: team@example.org\r\nSubject: public post {i}\r\n\r\nline {i} <b>&\r\n"));
        wait_mail(&w.bob, i);
    }
    let list_fpr = w.list.fingerprint();
    let feed = format!("{}v1/archive/{list_fpr}/feed", w.outbox.url());
    let script = "import feedparser, sys, json\n\
        f = feedparser.parse(sys.argv[1])\n\
        assert not f.bozo, f.bozo_exception\n\
        print(json.dumps({'title': f.feed.title, 'entries': [{'title': e.title, 'author': e.author, 'text': e.summary,\n\
          'links': {l.rel: l.href for l in e.links}} for e in f.entries]}))";
    let parsed = wait_for("both posts in the feed", 60, || {
        let o = std::process::Command::new("/usr/bin/python3").args(["-c", script, &feed]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (v["entries"].as_array()?.len() == 2).then_some(v)
    });
    assert_eq!(parsed["title"], "team@example.org");
    let newest = &parsed["entries"][0];
    assert_eq!((newest["title"].as_str(), newest["author"].as_str()), (Some("public post 2"), Some("Alice <alice@example.org>")), "{parsed}");
    assert!(newest["text"].as_str().unwrap().contains("line 2 <b>&"), "{parsed}");
    // The post and the list's signature over it, fetched by anyone.
    let eml_url = newest["links"]["alternate"].as_str().unwrap().to_string();
    let sig_url = newest["links"]["related"].as_str().unwrap().to_string();
    assert!(eml_url.starts_with(&format!("{}v1/archive/{list_fpr}/", w.outbox.url())) && eml_url.ends_with(".eml"), "{eml_url}");
    let dir = w.root.path().join("archive");
    std::fs::create_dir_all(&dir).unwrap();
    let get = |url: &str, to: &str| {
        let (good, out) = python("import sys, urllib.request\nopen(sys.argv[2], 'wb').write(urllib.request.urlopen(sys.argv[1]).read())", &[url, dir.join(to).to_str().unwrap()]);
        assert!(good, "{out}");
    };
    get(&eml_url, "post.eml");
    get(&sig_url, "post.sig");
    let post = std::fs::read_to_string(dir.join("post.eml")).unwrap();
    assert!(post.starts_with("List-Id: \"The Team\" <team.example.org>\r\n") && post.contains("Subject: public post 2"), "{post}");
    assert!(post.contains(&format!("\r\nList-Archive: <{feed}>\r\n")), "RFC 2369's List-Archive names the feed: {post}");
    let gpg = require("gpg");
    let gnupg = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    ok(std::process::Command::new(&gpg).arg("--homedir").arg(&gnupg).args(["--batch", "--import"]).arg(w.list.export()));
    let v = std::process::Command::new(&gpg).arg("--homedir").arg(&gnupg).args(["--batch", "--verify"]).arg(dir.join("post.sig")).arg(dir.join("post.eml")).output().unwrap();
    assert!(v.status.success(), "gpg --verify: {}", String::from_utf8_lossy(&v.stderr));
    // The author's own signature is in it too.
    verify_author(&dir.join("post.eml"), &w.alice, &dir.join("author"));

    // A private list has no feed.
    let mut p = World::start();
    p.start_robot();
    send(&p.alice, &p.root.path().to_path_buf(), &[LIST], "From: alice@example.org\r\nTo: team@example.org\r\nSubject: private\r\n\r\nx\r\n");
    wait_mail(&p.bob, 1);
    let (good, out) = python(
        "import sys, urllib.request, urllib.error\ntry:\n  urllib.request.urlopen(sys.argv[1]); print('200')\nexcept urllib.error.HTTPError as e: print(e.code)",
        &[&format!("{}v1/archive/{}/feed", p.outbox.url(), p.list.fingerprint())],
    );
    assert!(good && out.trim() == "404", "{out}");
}

/// An "outbox" that takes connections and says nothing: its URL.
fn silent_outbox() -> String {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    url
}

/// Forged stubs (no real key behind them) naming an outbox that accepts
/// connections and never answers: the robot tries each for a few seconds
/// and forgets it, and members' posts do not wait for any of it.
#[test]
fn forged_stubs_naming_a_silent_outbox_hold_up_no_members_post() {
    let n = notify_arg();
    let port: u16 = n.rsplit(':').next().unwrap().parse().unwrap();
    let mut w = World::start_with(&[&n]);
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    let silent_url = silent_outbox();
    let list_fpr = stubmail::protocol::Fpr::parse(&w.list.fingerprint()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..8u32 {
        let stub = stubmail::protocol::udp::Stub {
            sender: stubmail::protocol::Fpr::parse(&format!("{:040X}", 0xF000 + i)).unwrap(),
            recipient: list_fpr.clone(),
            id: format!("{:064x}", i),
            size: 100,
            made: stubmail::time::unix_now(),
            outbox: silent_url.clone(),
        };
        udp.send_to(&stub.encode(&[0x88; 64]).unwrap(), ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t = std::time::Instant::now();
    send(&w.bob, &logs, &[LIST], "From: bob@example.net\r\nTo: team@example.org\r\nSubject: not held up\r\n\r\nhi\r\n");
    wait_mail(&w.carol, 1);
    assert!(t.elapsed() < std::time::Duration::from_secs(8), "a member's post waited {:?} behind forged stubs", t.elapsed());
    // Each forgery is tried for a few seconds, then forgotten.
    wait_for("the forged introductions to be forgotten", 60, || {
        let l = stdout(&ok(w.list.stubmail().args(["intro", "list"])));
        l.contains("no introductions waiting").then_some(())
    });
    assert!(w.robot.as_ref().unwrap().log().contains("introduction not taken"));
}

/// Forged stubs in a would-be member's name (their fingerprint is public),
/// naming an outbox that never answers, sent before and all through their
/// request to join: their own stub carries their certificate, which
/// proves it, so the forgeries neither point the robot elsewhere nor keep
/// the request from being answered.
#[test]
fn forged_stubs_in_a_strangers_name_do_not_keep_them_from_joining() {
    let n = notify_arg();
    let port: u16 = n.rsplit(':').next().unwrap().parse().unwrap();
    let mut w = World::start_with(&[&n]);
    let dave = w.stranger("dave", "dave@example.net");
    let logs = w.root.path().to_path_buf();
    let silent_url = silent_outbox();
    // Mallory signs forgeries with a key of her own, in Dave's name.
    let mallory = stubmail::Identity::generate(None, "mallory@example.com", &silent_url).unwrap();
    let (list_fpr, dave_fpr) = (stubmail::protocol::Fpr::parse(&w.list.fingerprint()).unwrap(), stubmail::protocol::Fpr::parse(&dave.fingerprint()).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forger = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let stub = stubmail::protocol::udp::Stub {
                    sender: dave_fpr.clone(),
                    recipient: list_fpr.clone(),
                    id: format!("{:064x}", 0xF00D_0000 + i),
                    size: 100,
                    made: stubmail::time::unix_now(),
                    outbox: silent_url.clone(),
                };
                let sig = mallory.sign_detached(&stub.signed_part().unwrap()).unwrap();
                udp.send_to(&stub.encode(&sig).unwrap(), ("127.0.0.1", port)).unwrap();
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            i
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    w.start_robot();
    std::thread::sleep(std::time::Duration::from_secs(1));
    send(&dave, &logs, &["team-subscribe@example.org"], "From: dave@example.net\r\nTo: team-subscribe@example.org\r\nSubject: join\r\n\r\nplease\r\n");
    let t = std::time::Instant::now();
    while dave.maildir_new().is_empty() && t.elapsed() < std::time::Duration::from_secs(60) {
        dave.http2mbox_once();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!dave.maildir_new().is_empty(), "Dave was never asked to confirm; the robot:\n{}", w.robot.as_ref().unwrap().log());
    let got = wait_mail(&dave, 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forged = forger.join().unwrap();
    assert!(forged >= 8, "the forgeries went on throughout ({forged})");
    let ask = read(&got[0]);
    assert!(ask.contains("Subject: Confirm joining team@example.org (token "), "{ask}");
    let log = w.robot.as_ref().unwrap().log();
    assert!(log.contains("a stranger's messages fetched"), "{log}");
}

/// `kill -9` of the robot at random moments while members post, and again
/// while it publishes: once it runs again, every post reaches every member
/// exactly once (SECURITY row 120). Seeded: STUBMAIL_CRASH_SEED=<n>.
#[test]
fn the_robot_killed_at_random_moments_loses_and_duplicates_no_post() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("STUBMAIL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("STUBMAIL_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = World::start();
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    const POSTS: usize = 8;
    for i in 0..POSTS {
        let (author, from) = if i % 2 == 0 { (&w.alice, "alice@example.org") } else { (&w.carol, "carol@example.com") };
        send(author, &logs, &[LIST], &format!("From: {from}\r\nTo: team@example.org\r\nSubject: crash post {i}\r\n\r\nbody {i}\r\n"));
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(0..1500)));
        if i % 2 == 1 {
            // The robot dies (SIGKILL) wherever it is, and is started again.
            w.robot = None;
            w.start_robot();
        }
    }
    let count = |u: &User| {
        let mut m = std::collections::HashMap::<String, usize>::new();
        for s in subjects(u) {
            *m.entry(s).or_default() += 1;
        }
        m
    };
    wait_mail(&w.bob, POSTS);
    std::thread::sleep(std::time::Duration::from_secs(3));
    w.bob.http2mbox_once();
    let got = count(&w.bob);
    for i in 0..POSTS {
        assert_eq!(got.get(&format!("crash post {i}")), Some(&1), "post {i} at Bob (seed {seed}): {got:?}");
    }
    assert_eq!(got.len(), POSTS, "nothing else (seed {seed}): {got:?}");
}

/// Stubs signed by throwaway keys of an attacker's own (proven: each key
/// is real), each naming an outbox that never answers, sent just before a
/// real request to join: each holds one introduction slot, and the real
/// request takes a free one at once instead of waiting behind them.
#[test]
fn a_slow_introduction_holds_up_only_its_own_slot() {
    let n = notify_arg();
    let port: u16 = n.rsplit(':').next().unwrap().parse().unwrap();
    let mut w = World::start_with(&[&n]);
    let dave = w.stranger("dave", "dave@example.net");
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    let silent_url = silent_outbox();
    let list_fpr = stubmail::protocol::Fpr::parse(&w.list.fingerprint()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // More than sixteen (the slots there once were), fewer than the 64 now.
    for i in 0..40u8 {
        let key = stubmail::Identity::generate(None, &format!("throwaway{i}@example.com"), &silent_url).unwrap();
        let stub = stubmail::protocol::udp::Stub { sender: key.fpr(), recipient: list_fpr.clone(), id: hex::encode([i; 32]), size: 100, made: stubmail::time::unix_now(), outbox: silent_url.clone() };
        let inner = stub.encode(&key.sign_detached(&stub.signed_part().unwrap()).unwrap()).unwrap();
        let cert = stubmail::pgp::binary(&stubmail::pgp::minimal(&key.cert()).unwrap()).unwrap();
        udp.send_to(&stubmail::protocol::udp::encode_with_cert(&inner, &cert).unwrap(), ("127.0.0.1", port)).unwrap();
    }
    // Held and started (the robot looks every second; each look lists the
    // quarantine and the strangers kept, so not more often).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let t = std::time::Instant::now();
    send(&dave, &logs, &["team-subscribe@example.org"], "From: dave@example.net\r\nTo: team-subscribe@example.org\r\nSubject: join\r\n\r\nplease\r\n");
    let got = wait_mail(&dave, 1);
    assert!(read(&got[0]).contains("Subject: Confirm joining team@example.org (token "));
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "the request waited {:?} behind the throwaway introductions", t.elapsed());
    let log = w.robot.as_ref().unwrap().log();
    assert!(!log.contains("introduction not taken"), "the throwaway introductions were still running: {log}");
}

/// A member's post over the list's size limit is not published, and the
/// member is told so once (it would otherwise vanish without a word).
#[test]
fn a_post_over_the_size_limit_is_answered_once() {
    let mut w = World::start();
    w.list.edit_config(|t| {
        table(t, "list").insert("max_post_size".into(), 2000.into());
    });
    w.start_robot();
    let logs = w.root.path().to_path_buf();
    let big: String = (0..100).map(|i| format!("line {i} of a post far longer than the list takes\r\n")).collect();
    send(&w.bob, &logs, &[LIST], &format!("From: bob@example.net\r\nTo: team@example.org\r\nSubject: too long\r\n\r\n{big}"));
    let got = wait_mail(&w.bob, 1);
    let notice = read(&got[0]);
    assert!(notice.contains("Subject: Your message to team@example.org was not taken"), "{notice}");
    assert!(notice.contains("Posts may be at most 2000 bytes"), "{notice}");
    // Once, and published to no one.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(wait_mail(&w.bob, 1).len(), 1, "told once");
    w.carol.http2mbox_once();
    assert!(w.carol.maildir_new().is_empty(), "not published");
}
