//! What the robot does with one message a member sent the list: pure,
//! no I/O, so every rule is a unit test.

use stubmail::list::{Addresses, Request, LIST_FIELDS};
use stubmail::protocol::Fpr;

/// Largest header block the robot reads.
const MAX_HEADER: usize = 256 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Publish these bytes (the list's fields, then the author's message
    /// byte for byte) to every member, once.
    Publish(Vec<u8>),
    /// The author leaves the list.
    Unsubscribe,
    /// A request to join.
    Subscribe,
    /// Not published; the reason is told to the author.
    Refuse(String),
}

/// Decide about `raw`, a message `author` (whose certificate names
/// `author_emails`) signed with `sig` and sent to the list `addrs`.
pub fn decide(raw: &[u8], author: &Fpr, sig: &[u8], author_emails: &[String], addrs: &Addresses, description: Option<&str>) -> Decision {
    let Some(end) = stubmail::mail::header_len(&raw[..raw.len().min(MAX_HEADER)]) else {
        return Decision::Refuse(format!("its header is longer than {MAX_HEADER} bytes or has no end (a blank line)"));
    };
    let header = &raw[..end];
    // Fields only the list writes: a post carrying them is a list post
    // passed on again (a loop), or one pretending to be. Every `Stubmail-`
    // field too: members' mail programs remove them, which would break
    // the author's signature the list carries.
    let mut carried: Vec<String> = Vec::new();
    for line in header.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
        let ours = LIST_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(&name))
            || name.as_bytes().get(..9).is_some_and(|p| p.eq_ignore_ascii_case(b"stubmail-"));
        if ours && !carried.contains(&name) {
            carried.push(name);
        }
    }
    if !carried.is_empty() {
        return Decision::Refuse(format!(
            "it carries {}, which only the list writes (was it a list post sent on again?)",
            carried.join(", ")
        ));
    }
    let from = stubmail::mail::addresses(header, &["From"]);
    if from.is_empty() || !from.iter().all(|a| author_emails.contains(a)) {
        return Decision::Refuse(format!(
            "its From: ({}) is not your own address ({}): the list publishes a member's post under the member's name only",
            if from.is_empty() { "none".to_string() } else { from.join(", ") },
            author_emails.join(", ")
        ));
    }
    // Mail clients show Sender: and Resent-From: as who sent it ("bob on
    // behalf of ..."): they too must be the member's own.
    let shown = stubmail::mail::addresses(header, &["Sender", "Resent-From", "Resent-Sender"]);
    if let Some(a) = shown.iter().find(|a| !author_emails.contains(a)) {
        return Decision::Refuse(format!("its Sender: or Resent-From: names {a}, which is not your own address"));
    }
    match addrs.request(&stubmail::mail::addresses(header, &["To", "Cc"])) {
        Some(Request::Post) => {
            let mut post = addrs.post_fields(description, author, sig);
            post.extend_from_slice(raw);
            Decision::Publish(post)
        }
        Some(Request::Unsubscribe) => Decision::Unsubscribe,
        Some(Request::Subscribe) => Decision::Subscribe,
        None => Decision::Refuse(format!(
            "it names none, or more than one, of the list's addresses in To: or Cc: (post to {}, leave by writing to {})",
            addrs.post, addrs.unsubscribe
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Addresses {
        Addresses::of("team@example.org").unwrap()
    }
    fn alice() -> (Fpr, Vec<String>) {
        (Fpr::parse(&"A1".repeat(20)).unwrap(), vec!["alice@example.org".to_string()])
    }
    fn decide_on(raw: &str) -> Decision {
        let (f, e) = alice();
        decide(raw.as_bytes(), &f, b"sig", &e, &addrs(), Some("Team"))
    }

    #[test]
    fn a_members_post_is_published_with_the_list_fields_and_the_message_unchanged() {
        let raw = "From: Alice <alice@example.org>\r\nTo: team@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
        let Decision::Publish(post) = decide_on(raw) else { panic!() };
        assert!(post.ends_with(raw.as_bytes()));
        let (f, sig, at) = stubmail::list::author_of(&post).unwrap();
        assert_eq!((f, sig.as_slice(), &post[at..]), (alice().0, &b"sig"[..], raw.as_bytes()));
        let s = String::from_utf8(post).unwrap();
        assert!(s.starts_with("List-Id: \"Team\" <team.example.org>\r\nList-Post: <mailto:team@example.org>\r\n"), "{s}");
    }

    #[test]
    fn a_members_own_sender_field_is_fine() {
        assert!(matches!(decide_on("From: alice@example.org\r\nSender: Alice <ALICE@example.org>\r\nTo: team@example.org\r\n\r\n"), Decision::Publish(_)));
    }

    #[test]
    fn requests_by_address() {
        assert_eq!(decide_on("From: alice@example.org\r\nTo: team-unsubscribe@example.org\r\n\r\n"), Decision::Unsubscribe);
        assert_eq!(decide_on("From: alice@example.org\r\nCc: TEAM-subscribe@example.org\r\n\r\n"), Decision::Subscribe);
    }

    #[test]
    fn refusals_name_their_reason() {
        let refused = |raw: &str, why: &str| match decide_on(raw) {
            Decision::Refuse(r) => assert!(r.contains(why), "{raw:?}: {r}"),
            d => panic!("{raw:?}: {d:?}"),
        };
        // Someone else's name on the post.
        refused("From: ceo@bank.example\r\nTo: team@example.org\r\n\r\n", "not your own address");
        refused("From: alice@example.org, ceo@bank.example\r\nTo: team@example.org\r\n\r\n", "not your own address");
        refused("To: team@example.org\r\n\r\n", "From: (none)");
        refused("From: alice@example.org\r\nSender: bob@example.net\r\nTo: team@example.org\r\n\r\n", "names bob@example.net");
        refused("From: alice@example.org\r\nResent-From: bob@example.net\r\nTo: team@example.org\r\n\r\n", "names bob@example.net");
        // Ambiguous or no list address (a Bcc'd list cannot be told from a copy).
        refused("From: alice@example.org\r\nTo: team@example.org, team-unsubscribe@example.org\r\n\r\n", "more than one");
        refused("From: alice@example.org\r\nTo: bob@example.net\r\n\r\n", "none");
        // A list post sent on again, or fields only the list writes, in any case.
        refused("List-Id: <team.example.org>\r\nFrom: alice@example.org\r\nTo: team@example.org\r\n\r\n", "List-Id");
        refused("From: alice@example.org\r\nTo: team@example.org\r\nstubmail-author-signature: x\r\n\r\n", "stubmail-author-signature");
        refused("From: alice@example.org\r\nTo: team@example.org\r\nStubmail-Id: x\r\n\r\n", "Stubmail-Id");
        refused("From: alice@example.org\r\nTo: team@example.org\r\nList-Unsubscribe : <mailto:x@y>\r\n\r\n", "List-Unsubscribe");
        // A field name with a multi-byte character across the prefix (found
        // by the list_posts fuzz target): no panic.
        let (f, e) = alice();
        assert!(matches!(decide(b"[\xff\xff\xff\xff\xff\xff\xe1:\n\n", &f, b"s", &e, &addrs(), None), Decision::Refuse(_)));
        assert!(matches!(decide("Stubmail\u{e9}: x\r\nFrom: alice@example.org\r\nTo: team@example.org\r\n\r\n".as_bytes(), &f, b"s", &e, &addrs(), None), Decision::Publish(_)));
        // No end to the header.
        let long = format!("From: alice@example.org\r\nX: {}\r\n", "a".repeat(MAX_HEADER));
        refused(&long, "header is longer");
    }
}
