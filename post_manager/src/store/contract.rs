//! What every backend must do, as functions over a fresh [`Store`]: each
//! backend's tests run them all (`files::tests`, `pg::tests`).

use std::io::Read;

use sha2::{Digest, Sha256};
use stubmail::protocol::{DeliveryState, Fpr};

use super::{Expired, Limits, Retention, Store, StoreError};

fn fpr(c: char) -> Fpr {
    Fpr::parse(&c.to_string().repeat(40)).unwrap()
}

fn id_of(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn put_poll_fetch_ack_status(s: &Store) {
    let (a, b, c) = (fpr('A'), fpr('B'), fpr('C'));
    let body = b"ciphertext".to_vec();
    let id = id_of(&body);
    let (st, created) = s.put(&a, &id, &[b.clone(), c.clone()], &mut &body[..], 100, 1000).unwrap();
    assert!(created);
    assert_eq!(st.recipients.len(), 2);
    // Idempotent retry.
    let (_, created) = s.put(&a, &id, std::slice::from_ref(&b), &mut &body[..], 100, 1001).unwrap();
    assert!(!created);
    assert_eq!(s.poll(&b, None, None).unwrap().len(), 1);
    assert_eq!(s.poll(&b, Some(std::slice::from_ref(&c)), None).unwrap().len(), 0);
    assert_eq!(s.poll(&a, None, None).unwrap().len(), 0);
    let (mut f, n) = s.open_for(&b, &id, 0).unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!((got, n), (body.clone(), body.len() as u64));
    let mut tail = Vec::new();
    s.open_for(&b, &id, 6).unwrap().0.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, b"text", "read from an offset");
    assert!(matches!(s.open_for(&a, &id, 0), Err(StoreError::NotFound)));
    s.ack(&b, &id, None, 1002).unwrap();
    s.ack(&b, &id, None, 1003).unwrap();
    assert!(s.poll(&b, None, None).unwrap().is_empty());
    let st = s.status(&a, &id).unwrap();
    assert_eq!(st.recipients.iter().find(|r| r.fpr == b).unwrap().state, DeliveryState::Retrieved);
    assert!(matches!(s.status(&b, &id), Err(StoreError::NotFound)));
    assert_eq!(s.list(&a).unwrap().len(), 1);
    // Unsend: C has not retrieved it; B keeps it.
    let st = s.unsend(&a, &id, 1004).unwrap();
    assert_eq!(st.recipients.iter().find(|r| r.fpr == c).unwrap().state, DeliveryState::Unsent);
    assert!(s.poll(&c, None, None).unwrap().is_empty());
    assert!(s.open_for(&c, &id, 0).is_err());
    // C acks anyway, then tries to fetch: nothing changes, nothing opens.
    assert!(matches!(s.ack(&c, &id, None, 1005), Err(StoreError::NotFound)));
    assert!(matches!(s.ack(&c, &id, Some("dev"), 1005), Err(StoreError::NotFound)));
    assert!(matches!(s.open_for(&c, &id, 0), Err(StoreError::NotFound)));
    let st = s.status(&a, &id).unwrap();
    assert_eq!(st.recipients.iter().find(|r| r.fpr == c).unwrap().state, DeliveryState::Unsent, "the sender still sees it unsent");
}

pub fn quotas_and_daily_recipients(s: &Store) {
    s.set_limits(&fpr('A'), &Limits { max_bytes: 25, max_messages: 2, max_recipients_per_day: 2, ..Limits::default() }).unwrap();
    let m = |b: &[u8]| (id_of(b), b.to_vec());
    let (id1, b1) = m(b"0123456789");
    s.put(&fpr('A'), &id1, &[fpr('B')], &mut &b1[..], 100, 86400).unwrap();
    // A third distinct recipient today: refused; the same two: fine.
    let (id2, b2) = m(b"abcdefghij");
    assert!(matches!(s.put(&fpr('A'), &id2, &[fpr('C'), fpr('D')], &mut &b2[..], 100, 86401), Err(StoreError::RateLimited(_))));
    s.put(&fpr('A'), &id2, &[fpr('B'), fpr('C')], &mut &b2[..], 100, 86402).unwrap();
    // Over the byte quota, and the message count.
    let (id3, b3) = m(b"klmnopqrst");
    assert!(matches!(s.put(&fpr('A'), &id3, &[fpr('B')], &mut &b3[..], 100, 86403), Err(StoreError::QuotaExceeded(_))));
    assert!(matches!(s.status(&fpr('A'), &id3), Err(StoreError::NotFound)), "nothing stored");
    let st = s.account_status(&fpr('A'), 86404).unwrap();
    assert_eq!((st.bytes, st.messages, st.recipients_today), (20, 2, 2));
    // A new day, and space freed by unsend: accepted again.
    s.unsend(&fpr('A'), &id1, 86405).unwrap();
    s.put(&fpr('A'), &id3, &[fpr('D')], &mut &b3[..], 100, 2 * 86400).unwrap();
    // Re-uploading what is already stored never counts twice.
    s.put(&fpr('A'), &id3, &[fpr('D')], &mut &b3[..], 100, 2 * 86400).unwrap();
}

pub fn retention_expires_deletes_and_forgets(s: &Store) {
    let r = Retention { pending_secs: 100, keep_secs: 10, status_secs: 50 };
    let body = b"m".to_vec();
    let id = id_of(&body);
    s.put(&fpr('A'), &id, &[fpr('B'), fpr('C')], &mut &body[..], 10, 1000).unwrap();
    s.ack(&fpr('B'), &id, None, 1050).unwrap();
    assert_eq!(s.expire(1090, r).unwrap(), Expired::default(), "C still has time");
    assert_eq!(s.expire(1101, r).unwrap().recipients_expired, 1);
    let st = s.status(&fpr('A'), &id).unwrap();
    assert_eq!(st.recipients.iter().find(|x| x.fpr == fpr('C')).unwrap().state, DeliveryState::Expired);
    assert!(s.poll(&fpr('C'), None, None).unwrap().is_empty());
    assert!(s.open_for(&fpr('B'), &id, 0).is_ok(), "kept a while after settling");
    assert_eq!(s.expire(1112, r).unwrap().messages_deleted, 1);
    assert!(s.open_for(&fpr('B'), &id, 0).is_err());
    assert!(s.status(&fpr('A'), &id).is_ok(), "the status outlives the bytes");
    assert_eq!(s.expire(1162, r).unwrap().statuses_dropped, 1);
    assert!(s.status(&fpr('A'), &id).is_err());
    assert!(s.list(&fpr('A')).unwrap().is_empty());
}

pub fn every_device_gets_every_message(s: &Store) {
    let body = b"z".to_vec();
    let id = id_of(&body);
    s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 10, 1).unwrap();
    assert_eq!(s.poll(&fpr('B'), None, Some("laptop")).unwrap().len(), 1);
    s.ack(&fpr('B'), &id, Some("laptop"), 2).unwrap();
    assert!(s.poll(&fpr('B'), None, Some("laptop")).unwrap().is_empty());
    assert_eq!(s.poll(&fpr('B'), None, Some("desktop")).unwrap().len(), 1, "the other device still sees it");
    assert!(s.open_for(&fpr('B'), &id, 0).is_ok());
    s.ack(&fpr('B'), &id, Some("desktop"), 3).unwrap();
    assert!(s.poll(&fpr('B'), None, Some("desktop")).unwrap().is_empty());
    assert_eq!(s.status(&fpr('A'), &id).unwrap().recipients[0].state, DeliveryState::Retrieved);
}

pub fn bad_uploads_store_nothing(s: &Store) {
    let body = b"x".repeat(1000);
    let id = id_of(&body);
    assert!(matches!(s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 999, 1), Err(StoreError::TooLarge(_))));
    let wrong = id_of(b"other");
    assert!(matches!(s.put(&fpr('A'), &wrong, &[fpr('B')], &mut &body[..], 9999, 1), Err(StoreError::DigestMismatch { .. })));
    assert!(s.poll(&fpr('B'), None, None).unwrap().is_empty() && s.list(&fpr('A')).unwrap().is_empty(), "nothing stored");
    assert_eq!(s.account_status(&fpr('A'), 1).unwrap().bytes, 0);
    // Another sender cannot take over an id.
    s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 9999, 1).unwrap();
    assert!(matches!(s.put(&fpr('C'), &id, &[fpr('B')], &mut &body[..], 9999, 1), Err(StoreError::Conflict)));
}

pub fn unsend_before_retrieval_deletes_bytes(s: &Store) {
    let body = b"y".to_vec();
    let id = id_of(&body);
    s.put(&fpr('A'), &id, &[fpr('B')], &mut &body[..], 10, 1).unwrap();
    assert!(matches!(s.unsend(&fpr('B'), &id, 2), Err(StoreError::NotFound)));
    assert_eq!(s.account_status(&fpr('A'), 2).unwrap().bytes, 1);
    s.unsend(&fpr('A'), &id, 2).unwrap();
    assert_eq!(s.account_status(&fpr('A'), 2).unwrap().bytes, 0, "the bytes are gone");
}

pub fn only_urls_the_operator_accepted_are_this_outboxs_names(s: &Store) {
    use stubmail::Identity;
    let alice = Identity::generate(None, "alice@example.org", "http://b.example/").unwrap();
    s.add_account(&alice.cert()).unwrap();
    assert_eq!(s.outbox_urls().unwrap(), vec!["http://b.example/".to_string()], "the first account names the outbox");
    // Another outbox's URL, on the primary User ID or on any other one.
    let mallory = Identity::generate(None, "mallory@example.org", "http://a.example/").unwrap();
    assert!(s.add_account(&mallory.cert()).unwrap_err().to_string().contains("--new-url"));
    let mut sneaky = Identity::generate(None, "sneaky@example.org", "http://b.example/").unwrap();
    sneaky.add_address("other@example.org").unwrap();
    // (add_address binds the same URL: build a second User ID bound to A by hand.)
    let mut kp = sneaky.signing_keypair().unwrap();
    let uid = stubmail::openpgp::packet::UserID::from("<third@example.org>");
    let tmpl = stubmail::openpgp::packet::signature::SignatureBuilder::new(stubmail::openpgp::types::SignatureType::PositiveCertification)
        .set_notation(
            stubmail::pgp::OUTBOX_NOTATION,
            b"http://a.example/",
            stubmail::openpgp::packet::signature::subpacket::NotationDataFlags::empty().set_human_readable(),
            false,
        )
        .unwrap();
    let sig = uid.bind(&mut kp, &sneaky.cert(), tmpl).unwrap();
    let two = sneaky.cert().insert_packets(vec![stubmail::openpgp::Packet::from(uid), sig.into()]).unwrap().0;
    assert!(s.add_account(&two).unwrap_err().to_string().contains("http://a.example/"), "every User ID's URL counts");
    assert_eq!(s.outbox_urls().unwrap().len(), 1);
    s.add_account_new_url(&mallory.cert()).unwrap();
    assert_eq!(s.outbox_urls().unwrap().len(), 2, "the operator's word");
}

pub fn a_moved_accounts_pushes_stay_bounded_and_never_name_this_outbox(s: &Store) {
    use stubmail::Identity;
    use stubmail::openpgp::packet::{signature::SignatureBuilder, UserID};
    use stubmail::openpgp::types::SignatureType;
    let mut alice = Identity::generate(None, "alice@example.org", "http://a.example/").unwrap();
    s.add_account(&alice.cert()).unwrap();
    alice.rebind("http://b.example/", None).unwrap();
    // Push after push, each with five more User IDs for her address: the
    // stored key stays within the bounds of any remembered certificate.
    for round in 0..3 {
        let mut kp = alice.signing_keypair().unwrap();
        let mut cert = alice.cert();
        for i in 0..5 {
            let uid = UserID::from(format!("Round {round} name {i} <alice@example.org>"));
            let sig = uid.bind(&mut kp, &cert, SignatureBuilder::new(SignatureType::PositiveCertification)).unwrap();
            cert = cert.insert_packets(vec![stubmail::openpgp::Packet::from(uid), sig.into()]).unwrap().0;
        }
        s.update_account_cert(&cert).unwrap();
        let kept = s.account(&alice.fpr()).unwrap().unwrap();
        assert!(kept.userids().count() <= 8, "round {round}: {} User IDs", kept.userids().count());
    }
    assert_eq!(stubmail::pgp::outbox_of(&s.account(&alice.fpr()).unwrap().unwrap()).as_deref(), Some("http://b.example/"));
    // The names stay A's, even rebuilt from the accounts (a lost list).
    assert_eq!(s.outbox_urls().unwrap(), vec!["http://a.example/".to_string()]);
}

pub fn the_recipient_cap_holds_across_reuploads(s: &Store) {
    let body = b"for many".to_vec();
    let id = id_of(&body);
    let many = |from: usize, n: usize| (from..from + n).map(|i| Fpr::parse(&format!("{i:040X}")).unwrap()).collect::<Vec<_>>();
    s.set_limits(&fpr('A'), &Limits { max_recipients_per_day: 10_000, ..Limits::default() }).unwrap();
    s.put(&fpr('A'), &id, &many(1, 600), &mut &body[..], 100, 1).unwrap();
    let r = s.put(&fpr('A'), &id, &many(601, 600), &mut &body[..], 100, 1);
    assert!(matches!(r, Err(StoreError::TooManyRecipients(1000))), "{r:?}");
    s.put(&fpr('A'), &id, &many(1, 600), &mut &body[..], 100, 1).expect("the same recipients again");
    s.put(&fpr('A'), &id, &many(601, 400), &mut &body[..], 100, 1).expect("up to the cap");
    assert_eq!(s.status(&fpr('A'), &id).unwrap().recipients.len(), 1000);
    // A list robot's account may be allowed more, upload by upload.
    s.set_limits(&fpr('A'), &Limits { max_recipients_per_day: 10_000, max_recipients_per_message: 1500, ..Limits::default() }).unwrap();
    s.put(&fpr('A'), &id, &many(1001, 500), &mut &body[..], 100, 1).expect("up to the raised cap");
    assert!(matches!(s.put(&fpr('A'), &id, &many(1501, 1), &mut &body[..], 100, 1), Err(StoreError::TooManyRecipients(1500))));
}

/// Several acks at once: each acked message as a single ack would leave
/// it, unknown, unsent and other recipients' ids answered `None` and
/// changing nothing, devices offered what another device acked.
pub fn acks_in_a_batch(s: &Store) {
    let (a, b, c) = (fpr('A'), fpr('B'), fpr('C'));
    let ids: Vec<String> = (0..12)
        .map(|i| {
            let body = format!("message {i}").into_bytes();
            let id = id_of(&body);
            s.put(&a, &id, &[b.clone(), c.clone()], &mut &body[..], 100, 10).unwrap();
            id
        })
        .collect();
    // One for C only, one withdrawn from B, one unknown.
    let only_c = id_of(b"for C");
    s.put(&a, &only_c, std::slice::from_ref(&c), &mut &b"for C"[..], 100, 10).unwrap();
    s.unsend(&a, &ids[11], 11).unwrap();
    let unknown = id_of(b"never stored");
    assert_eq!(s.poll(&b, None, Some("laptop")).unwrap().len(), 11);
    let mut asked: Vec<String> = ids.clone();
    asked.extend([only_c.clone(), unknown.clone()]);
    let got = s.ack_many(&b, &asked, Some("laptop"), 20).unwrap();
    assert_eq!(got.len(), asked.len());
    for (i, st) in got.iter().enumerate().take(11) {
        let st = st.as_ref().unwrap_or_else(|| panic!("message {i} acked"));
        assert_eq!(st.recipients.len(), 1, "the acking recipient's entry only");
        assert_eq!((st.recipients[0].fpr.clone(), st.recipients[0].state), (b.clone(), DeliveryState::Retrieved));
    }
    assert!(got[11].is_none() && got[12].is_none() && got[13].is_none(), "unsent, another's, unknown: {:?}", &got[11..]);
    assert!(s.poll(&b, None, Some("laptop")).unwrap().is_empty(), "nothing left for the device that acked");
    assert_eq!(s.poll(&b, None, Some("desktop")).unwrap().len(), 11, "offered to the other device");
    assert_eq!(s.poll(&c, None, None).unwrap().len(), 12, "C's own state untouched");
    assert_eq!(s.status(&a, &ids[0]).unwrap().recipients.iter().find(|r| r.fpr == b).unwrap().state, DeliveryState::Retrieved);
    assert_eq!(s.status(&a, &ids[11]).unwrap().recipients.iter().find(|r| r.fpr == b).unwrap().state, DeliveryState::Unsent);
    // Idempotent: the same batch again changes nothing and answers the same.
    let again = s.ack_many(&b, &asked, Some("laptop"), 30).unwrap();
    assert_eq!(again.iter().filter(|x| x.is_some()).count(), 11);
    assert_eq!(again[0].as_ref().unwrap().recipients[0].at, got[0].as_ref().unwrap().recipients[0].at, "the first ack's time stays");
}

/// Every contract, each on a fresh store from `fresh`.
pub fn upload_rate_per_minute(s: &Store) {
    let a = fpr('A');
    s.set_limits(&a, &Limits { max_uploads_per_minute: 3, max_upload_bytes_per_minute: 25, ..Limits::default() }).unwrap();
    let up = |b: &[u8], now: i64| s.put(&a, &id_of(b), &[fpr('B')], &mut &b[..], 100, now);
    // Three uploads a minute; the fourth waits for the next minute.
    for (i, b) in [b"one-------", b"two-------"].iter().enumerate() {
        up(&b[..], 6000 + i as i64).unwrap();
    }
    // Over the bytes (20 + 10 > 25): refused, nothing stored.
    assert!(matches!(up(b"three-----", 6002), Err(StoreError::RateLimited(m)) if m.contains("bytes")));
    assert!(matches!(s.status(&a, &id_of(b"three-----")), Err(StoreError::NotFound)));
    // Re-uploading stored bytes adds no bytes, but is an upload.
    up(b"one-------", 6003).unwrap();
    assert!(matches!(up(b"one-------", 6004), Err(StoreError::RateLimited(m)) if m.contains("uploads")));
    // The next minute starts afresh.
    up(b"three-----", 6060).unwrap();
}

pub fn complaints_and_suspension(s: &Store) {
    use super::{Complaint, Suspension};
    let (a, b, c) = (fpr('A'), fpr('B'), fpr('C'));
    let day = 100 * 86400;
    let k = |id: &str, by: &Fpr, at: i64| Complaint { sender: a.clone(), id: id.into(), by: by.clone(), at };
    assert!(s.record_complaint(&k("x", &b, day)).unwrap());
    assert!(!s.record_complaint(&k("x", &b, day + 5)).unwrap(), "once per recipient and message");
    // One recipient complaining about several messages is one voice.
    assert!(s.record_complaint(&k("z", &b, day + 5)).unwrap());
    assert!(s.record_complaint(&k("x", &c, day + 6)).unwrap());
    assert!(s.record_complaint(&k("y", &b, day + 86400)).unwrap());
    assert_eq!(s.complaint_counts(&a, day + 7, 0).unwrap(), (2, 4));
    assert_eq!(s.complaint_counts(&a, day + 86400, 0).unwrap(), (1, 4));
    assert_eq!(s.complaint_counts(&b, day, 0).unwrap(), (0, 0));
    // Only complaints at or after a resume count.
    assert_eq!(s.complaint_counts(&a, day + 7, day + 6).unwrap(), (1, 4));
    let recent = s.recent_complaints(&a, 2).unwrap();
    assert_eq!(recent.iter().map(|c| c.at).collect::<Vec<_>>(), [day + 86400, day + 6]);
    assert_eq!(s.suspension(&a).unwrap(), None);
    assert_eq!(s.resumed_at(&a).unwrap(), 0);
    let sus = Suspension { since: day, reason: "spam run".into() };
    s.set_suspension(&a, Some(&sus), day).unwrap();
    assert_eq!(s.suspension(&a).unwrap(), Some(sus));
    s.set_suspension(&a, None, day + 10).unwrap();
    s.set_suspension(&a, None, day + 10).unwrap();
    assert_eq!(s.suspension(&a).unwrap(), None);
    assert_eq!(s.resumed_at(&a).unwrap(), day + 10);
}

pub fn a_lists_archive_keeps_each_post_once_newest_first(s: &Store) {
    let (l, m) = (fpr('A'), fpr('B'));
    let post = |i: usize| format!("Subject: post {i}\r\n\r\nbody {i}\r\n").into_bytes();
    for i in 0..5 {
        let p = post(i);
        let e = crate::archive::entry_of(&id_of(&p), &p, 1000 + i as i64);
        assert!(s.archive_put(&l, &e, &p, b"sig").unwrap());
        // Again: kept once.
        assert!(!s.archive_put(&l, &e, &p, b"other").unwrap());
    }
    let (page, total) = s.archive_page(&l, 1, 2).unwrap();
    assert_eq!(total, 5);
    assert_eq!(page.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(), ["post 3", "post 2"]);
    assert_eq!(s.archive_page(&l, 10, 2).unwrap(), (vec![], 5));
    assert_eq!(s.archive_page(&m, 0, 2).unwrap(), (vec![], 0), "another list's archive is its own");
    let id = id_of(&post(4));
    assert_eq!(s.archive_get(&l, &id).unwrap(), Some((post(4), b"sig".to_vec())));
    assert_eq!(s.archive_get(&m, &id).unwrap(), None);
    assert_eq!(s.archive_get(&l, &"0".repeat(64)).unwrap(), None);
}

pub fn all(fresh: &mut dyn FnMut() -> Store) {
    a_lists_archive_keeps_each_post_once_newest_first(&fresh());
    put_poll_fetch_ack_status(&fresh());
    quotas_and_daily_recipients(&fresh());
    retention_expires_deletes_and_forgets(&fresh());
    every_device_gets_every_message(&fresh());
    bad_uploads_store_nothing(&fresh());
    unsend_before_retrieval_deletes_bytes(&fresh());
    only_urls_the_operator_accepted_are_this_outboxs_names(&fresh());
    a_moved_accounts_pushes_stay_bounded_and_never_name_this_outbox(&fresh());
    the_recipient_cap_holds_across_reuploads(&fresh());
    acks_in_a_batch(&fresh());
    upload_rate_per_minute(&fresh());
    complaints_and_suspension(&fresh());
}
