//! The data directory backend: the shared contract, and what only it has
//! (usage cache, files left on disk, lost lists rebuilt).

use std::fs;

use sha2::{Digest, Sha256};
use stubmail::protocol::Fpr;

use super::Files;
use crate::store::{contract, Accounts, Housekeeping, Messages, Retention, Store};

fn fpr(c: char) -> Fpr {
    Fpr::parse(&c.to_string().repeat(40)).unwrap()
}

fn id_of(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn the_contract() {
    let mut dirs = Vec::new();
    contract::all(&mut || {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        dirs.push(d);
        s
    });
}

#[test]
fn bad_uploads_leave_no_file() {
    let d = tempfile::tempdir().unwrap();
    let s = Files::open(d.path()).unwrap();
    let body = b"x".repeat(1000);
    let id = id_of(&body);
    assert!(s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 999, 1).is_err());
    assert!(s.put(&fpr('A'), &id_of(b"other"), &[fpr('B')], &mut &body[..], 9999, 1).is_err());
    for dir in ["messages", "meta", "tmp", "inbox"] {
        assert_eq!(fs::read_dir(d.path().join(dir)).unwrap().count(), 0, "{dir}");
    }
    s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 9999, 1).unwrap();
    s.unsend(&fpr('A'), &id, 2).unwrap();
    assert!(!d.path().join("messages").join(&id).exists());
}

#[test]
fn lost_url_lists_are_rebuilt_only_when_the_accounts_agree() {
    use stubmail::Identity;
    let d = tempfile::tempdir().unwrap();
    let s = Files::open(d.path()).unwrap();
    let alice = Identity::generate(None, "alice@example.org", "http://b.example/").unwrap();
    s.add_account(&alice.cert()).unwrap();
    std::fs::remove_file(d.path().join("accounts/urls")).unwrap();
    assert_eq!(s.outbox_urls().unwrap(), vec!["http://b.example/".to_string()], "one URL: rebuilt");
    let mallory = Identity::generate(None, "mallory@example.org", "http://a.example/").unwrap();
    s.add_account_new_url(&mallory.cert()).unwrap();
    // A data directory from before the list was kept, whose accounts name
    // two URLs: neither is taken on trust.
    std::fs::remove_file(d.path().join("accounts/urls")).unwrap();
    assert!(s.outbox_urls().unwrap().is_empty());
}

#[test]
fn cached_usage_follows_uploads_unsends_and_retention() {
    let d = tempfile::tempdir().unwrap();
    let s = Files::open(d.path()).unwrap();
    let a = fpr('A');
    let check = |s: &Files| assert_eq!(s.usage(&a).unwrap(), s.count_usage(&a).unwrap());
    let bodies: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
    for b in &bodies {
        s.put(&a, &id_of(b), &[fpr('B')], &mut &b[..], 1 << 20, 100).unwrap();
        check(&s);
    }
    // A retried upload does not count twice.
    s.put(&a, &id_of(&bodies[0]), &[fpr('B')], &mut &bodies[0][..], 1 << 20, 100).unwrap();
    assert_eq!(s.usage(&a).unwrap(), (60, 5));
    s.unsend(&a, &id_of(&bodies[1]), 101).unwrap();
    check(&s);
    s.ack(&fpr('B'), &id_of(&bodies[2]), None, 101).unwrap();
    let r = Retention { pending_secs: 1000, keep_secs: 10, status_secs: 1000 };
    assert_eq!(s.expire(200, r).unwrap().messages_deleted, 1);
    check(&s);
    assert_eq!(s.usage(&a).unwrap(), (60 - 11 - 12, 3));
    // A lost or garbled cache is recounted.
    std::fs::write(d.path().join(format!("accounts/{a}.usage")), "garbage").unwrap();
    check(&s);
}


/// A data directory of the first layout (every recipient's state in the
/// message's meta file; a message acked by one device kept in the inbox
/// index for the others) reads the same once opened (upgraded).
#[test]
fn a_first_layout_data_directory_is_upgraded_when_opened() {
    let d = tempfile::tempdir().unwrap();
    let body = b"old ciphertext";
    let id = id_of(body);
    let (a, b, c) = (fpr('A'), fpr('B'), fpr('C'));
    for dir in ["meta", "messages", &format!("inbox/{b}"), &format!("inbox/{c}"), &format!("sent/{a}")] {
        fs::create_dir_all(d.path().join(dir)).unwrap();
    }
    fs::write(d.path().join(format!("messages/{id}")), body).unwrap();
    let meta = serde_json::json!({
        "id": id, "sender": a, "size": body.len(), "stored": 100,
        "recipients": [
            {"fpr": b, "state": "retrieved", "at": 110, "devices": ["laptop"]},
            {"fpr": c, "state": "stored", "at": 100}
        ]
    });
    fs::write(d.path().join(format!("meta/{id}.json")), serde_json::to_vec(&meta).unwrap()).unwrap();
    for p in [format!("inbox/{b}/{id}"), format!("inbox/{c}/{id}"), format!("sent/{a}/{id}")] {
        fs::write(d.path().join(p), b"").unwrap();
    }
    let s = Files::open(d.path()).unwrap();
    assert_eq!(fs::read_to_string(d.path().join("layout")).unwrap(), "3");
    let ids = |v: Vec<stubmail::protocol::PollItem>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(ids(s.poll(&c, None, None).unwrap()), vec![id.clone()], "still pending for C");
    assert!(s.poll(&b, None, None).unwrap().is_empty(), "retrieved by B");
    assert!(s.poll(&b, None, Some("laptop")).unwrap().is_empty(), "the device that acked it");
    assert_eq!(ids(s.poll(&b, None, Some("desktop")).unwrap()), vec![id.clone()], "B's other device");
    let st = s.status(&a, &id).unwrap();
    let states: Vec<String> = st.recipients.iter().map(|r| format!("{}={:?}", &r.fpr.as_str()[..1], r.state)).collect();
    assert_eq!(states, ["B=Retrieved", "C=Stored"]);
    assert!(!d.path().join(format!("inbox/{b}/{id}")).exists(), "B's inbox holds only what is pending");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(d.path().join(format!("meta/{id}.json"))).unwrap()).unwrap();
    assert!(m.get("recipients").is_none(), "states moved out: {m}");
    // Opened again: nothing to do, nothing changes.
    Files::open(d.path()).unwrap();
    assert_eq!(ids(s.poll(&c, None, None).unwrap()), vec![id]);
}

/// A data directory of the second layout (a JSON file per recipient,
/// `rcpt/<id>/<XX>/<FPR>.json`) reads the same once opened, each message's
/// files made its table; a crash during the upgrade (a partial table left
/// beside the files) is mended by opening again.
#[test]
fn a_second_layout_data_directory_is_upgraded_when_opened() {
    let d = tempfile::tempdir().unwrap();
    let body = b"old ciphertext";
    let id = id_of(body);
    let (a, b, c) = (fpr('A'), fpr('B'), fpr('C'));
    for dir in ["meta", "messages", &format!("inbox/{c}"), &format!("listed/{b}"), &format!("sent/{a}"), "rcpt"] {
        fs::create_dir_all(d.path().join(dir)).unwrap();
    }
    fs::write(d.path().join(format!("messages/{id}")), body).unwrap();
    let meta = serde_json::json!({"id": id, "sender": a, "size": body.len(), "stored": 100});
    fs::write(d.path().join(format!("meta/{id}.json")), serde_json::to_vec(&meta).unwrap()).unwrap();
    for p in [format!("inbox/{c}/{id}"), format!("listed/{b}/{id}"), format!("sent/{a}/{id}")] {
        fs::write(d.path().join(p), b"").unwrap();
    }
    let write_json = |f: &Fpr, v: serde_json::Value| {
        let dir = d.path().join(format!("rcpt/{id}/{}", &f.as_str()[..2]));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{f}.json")), serde_json::to_vec(&v).unwrap()).unwrap();
    };
    write_json(&b, serde_json::json!({"fpr": b, "state": "retrieved", "at": 110, "devices": ["laptop"]}));
    write_json(&c, serde_json::json!({"fpr": c, "state": "stored", "at": 100}));
    fs::write(d.path().join("layout"), "2").unwrap();
    // A crashed first attempt left a table with one recipient only.
    fs::write(d.path().join(format!("rcpt/{id}.tab")), b"SMRCPT\0\x01").unwrap();
    let s = Files::open(d.path()).unwrap();
    assert_eq!(fs::read_to_string(d.path().join("layout")).unwrap(), "3");
    assert!(!d.path().join(format!("rcpt/{id}")).exists(), "the JSON files are gone");
    let ids = |v: Vec<stubmail::protocol::PollItem>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(ids(s.poll(&c, None, None).unwrap()), vec![id.clone()], "still pending for C");
    assert!(s.poll(&b, None, Some("laptop")).unwrap().is_empty(), "B's laptop acked it");
    assert_eq!(ids(s.poll(&b, None, Some("desktop")).unwrap()), vec![id.clone()], "B's other device");
    let st = s.status(&a, &id).unwrap();
    let states: Vec<String> = st.recipients.iter().map(|r| format!("{}={:?}@{}", &r.fpr.as_str()[..1], r.state, r.at)).collect();
    assert_eq!(states.len(), 2);
    assert!(states[0].starts_with("B=Retrieved@") && states[1].starts_with("C=Stored@"), "{states:?}");
    assert_eq!(s.read_rcpt(&id, &b).unwrap().unwrap().devices, ["laptop"]);
    // C acks: its record changes in the table.
    s.ack(&c, &id, None, 120).unwrap();
    assert_eq!(s.read_rcpt(&id, &c).unwrap().unwrap().state, stubmail::protocol::DeliveryState::Retrieved);
    Files::open(d.path()).unwrap();
    assert_eq!(s.recipients_of(&id).unwrap().len(), 2, "opened again: nothing changes");
}

/// A crash between a new message's meta file and its recipients' states:
/// the uploader was not told 201 and retries; the retry stores them.
#[test]
fn a_retry_after_a_crash_between_meta_and_states_completes_the_upload() {
    let d = tempfile::tempdir().unwrap();
    let s = Files::open(d.path()).unwrap();
    let body = b"half stored".to_vec();
    let id = id_of(&body);
    s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 100, 1).unwrap();
    fs::remove_file(d.path().join(format!("rcpt/{id}.tab"))).unwrap();
    fs::remove_file(d.path().join(format!("inbox/{}/{id}", fpr('B')))).unwrap();
    let (st, created) = s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 100, 2).unwrap();
    assert!(!created && st.recipients.len() == 1);
    assert_eq!(s.poll(&fpr('B'), None, None).unwrap().len(), 1);
}

/// What a crash before an upload's flush may leave (any subset of its
/// files): each index entry whose meta, state or bytes is missing is not
/// listed, and the client's retry makes the message whole again.
#[test]
fn a_retry_repairs_whatever_a_crash_before_the_flush_left() {
    for lost in ["messages", "meta", "rcpt", "inbox"] {
        let d = tempfile::tempdir().unwrap();
        let s = Files::open(d.path()).unwrap();
        let body = b"ciphertext".to_vec();
        let id = id_of(&body);
        s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 100, 1).unwrap();
        // The crash: one of the upload's files never reached the disk.
        let gone = match lost {
            "messages" => d.path().join(format!("messages/{id}")),
            "meta" => d.path().join(format!("meta/{id}.json")),
            "rcpt" => d.path().join(format!("rcpt/{id}.tab")),
            _ => d.path().join(format!("inbox/{}/{id}", fpr('B'))),
        };
        if gone.is_dir() { fs::remove_dir_all(&gone) } else { fs::remove_file(&gone) }.unwrap();
        assert!(s.poll(&fpr('B'), None, None).unwrap().is_empty(), "{lost} lost: not listed");
        // The sender got no answer and uploads again.
        s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 100, 2).unwrap();
        assert_eq!(s.poll(&fpr('B'), None, None).unwrap().len(), 1, "{lost} lost: listed after the retry");
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut s.open_for(&fpr('B'), &id, 0).unwrap().0, &mut got).unwrap();
        assert_eq!(got, body, "{lost} lost: the bytes are whole");
    }
}

/// A damaged recipient table (a disk error, a hand edit) costs its own
/// message: the recipient's polls go on listing the others, and the
/// sender still sees the message, without recipients.
#[test]
fn a_damaged_recipient_table_costs_only_its_own_message() {
    let d = tempfile::tempdir().unwrap();
    let s = Files::open(d.path()).unwrap();
    let (a, b) = (fpr('A'), fpr('B'));
    let (one, two) = (b"first".to_vec(), b"second".to_vec());
    s.put(&a, &id_of(&one), &[b.clone(), fpr('C')], &mut &one[..], 100, 1).unwrap();
    s.put(&a, &id_of(&two), &[b.clone()], &mut &two[..], 100, 2).unwrap();
    let table = d.path().join(format!("rcpt/{}.tab", id_of(&one)));
    let mut bytes = fs::read(&table).unwrap();
    bytes[40] ^= 1;
    fs::write(&table, &bytes).unwrap();
    let polled: Vec<String> = s.poll(&b, None, None).unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(polled, vec![id_of(&two)]);
    let listed = s.list(&a).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|m| m.id == id_of(&one) && m.recipients.is_empty()));
    assert!(s.status(&a, &id_of(&one)).unwrap().recipients.is_empty(), "a status, not a storage error");
}

/// A crash cut the archive index's last line short: the next post gets a
/// line of its own (appended after the cut one, it would be lost too).
#[test]
fn a_post_archived_after_a_cut_index_line_is_listed() {
    use crate::store::Archive;
    let d = tempfile::tempdir().unwrap();
    let s = Files::open(d.path()).unwrap();
    let l = fpr('E');
    let post = |i: u8| format!("From: a@example.org\r\nSubject: post {i}\r\n\r\nx\r\n").into_bytes();
    let e = |i: u8| crate::archive::entry_of(&id_of(&post(i)), &post(i), 1000 + i64::from(i));
    assert!(s.archive_put(&l, &e(1), &post(1), b"sig").unwrap());
    let index = d.path().join(format!("archive/{l}/index"));
    let mut f = fs::OpenOptions::new().append(true).open(&index).unwrap();
    std::io::Write::write_all(&mut f, b"{\"id\":\"cut sh").unwrap();
    assert!(s.archive_put(&l, &e(2), &post(2), b"sig").unwrap());
    let (page, _) = s.archive_page(&l, 0, 10).unwrap();
    let ids: Vec<String> = page.into_iter().map(|x| x.id).collect();
    assert_eq!(ids, vec![id_of(&post(2)), id_of(&post(1))]);
    assert!(!s.archive_put(&l, &e(2), &post(2), b"sig").unwrap(), "kept once");
}
