//! The messages a list's robot writes itself (CRLF, RFC 5322): refusals,
//! the confirmation of a request to join, the welcome, and what the owner
//! is told. Pure functions; nothing from a peer reaches a header unless
//! cleaned of line breaks.

use stubmail::list::Addresses;

/// A notice from the list (`from`, one of its addresses) to `to`.
/// `about`: the header of the message it answers, if any.
fn notice(from: &str, to: &str, subject: &str, about: Option<&[u8]>, body: &str, qid: &str) -> Vec<u8> {
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut out = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{qid}@{domain}>\r\nAuto-Submitted: auto-replied\r\n",
        date = stubmail::time::rfc5322(stubmail::time::unix_now()),
    );
    if let Some(id) = about.and_then(|h| subject_and_id(h).1) {
        out.push_str(&format!("In-Reply-To: {id}\r\nReferences: {id}\r\n"));
    }
    out.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    for line in body.lines() {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// ` "SUBJECT"` of a header, or nothing.
fn quoted_subject(header: &[u8]) -> String {
    subject_and_id(header).0.map(|s| format!(" \"{s}\"")).unwrap_or_default()
}

/// The notice a refused author gets from the list.
pub fn refusal(addrs: &Addresses, to: &str, original_header: &[u8], reason: &str, qid: &str) -> Vec<u8> {
    let body = format!(
        "Your message{} was not published on the list {}, because {reason}.",
        quoted_subject(original_header),
        addrs.post
    );
    notice(&addrs.post, to, &format!("Your message to {} was not published", addrs.post), Some(original_header), &body, qid)
}

/// A message the list's poller could not take (too large once decrypted,
/// a signature that did not verify …): the sender is told once, as
/// `reason` says, with the list's size limit.
pub fn not_taken(addrs: &Addresses, to: &str, id: &str, reason: &str, max_post_size: u64, qid: &str) -> Vec<u8> {
    let body = format!(
        "A message you sent to the list {post} could not be taken, and was not published:\n         {reason}.\n\n         Posts may be at most {max_post_size} bytes. It stays in your outbox as not retrieved\n         (its id there: {id}).",
        post = addrs.post,
    );
    notice(&addrs.post, to, &format!("Your message to {} was not taken", addrs.post), None, &body, qid)
}

/// A non-member's post, refused: what the poster is told.
pub fn not_a_member(addrs: &Addresses, to: &str, original_header: &[u8], qid: &str) -> Vec<u8> {
    refusal(addrs, to, original_header, &format!("only members may post; to join, write to {}", addrs.subscribe), qid)
}

/// The question a request to join is answered with: the reply, signed by
/// the requester's key, must carry `token`.
pub fn confirm(addrs: &Addresses, to: &str, original_header: &[u8], token: &str, qid: &str) -> Vec<u8> {
    let body = format!(
        "Someone asked, with your key, to join the list {post}.\n\
         To join, reply to this message (to {sub}) keeping the token below in the subject.\n\
         If you did not ask, do nothing: you will not be added.\n\n\
         token {token}",
        post = addrs.post,
        sub = addrs.subscribe
    );
    notice(&addrs.subscribe, to, &format!("Confirm joining {} (token {token})", addrs.post), Some(original_header), &body, qid)
}

/// The token a reply to [`confirm`] carries in its Subject.
pub fn token_in(header: &[u8]) -> Option<String> {
    let subject = subject_and_id(header).0?;
    let at = subject.find("token ")? + "token ".len();
    let t: String = subject[at..].chars().take_while(char::is_ascii_hexdigit).collect();
    (t.len() == 32).then(|| t.to_ascii_lowercase())
}

/// What a new member is told.
pub fn welcome(addrs: &Addresses, to: &str, qid: &str) -> Vec<u8> {
    let body = format!(
        "Welcome to the list {post}.\nPost by writing to {post}; leave by writing to {unsub}.",
        post = addrs.post,
        unsub = addrs.unsubscribe
    );
    notice(&addrs.post, to, &format!("Welcome to {}", addrs.post), None, &body, qid)
}

/// What the owner is told about a non-member's post: refused, or held
/// (`held_as`: the id `stubmail list approve` takes).
pub fn to_owner(addrs: &Addresses, owner: &str, poster: &str, fpr: &str, original_header: &[u8], held_as: Option<&str>, qid: &str) -> Vec<u8> {
    let what = match held_as {
        Some(id) => format!(
            "is held for you to decide:\n  stubmail list approve {id}   (publish it)\n  stubmail list discard {id}   (drop it)\n\
             (each with the --home of the list)"
        ),
        None => "was refused, and the poster told so (set list.non_members = \"hold\" to decide yourself).".to_string(),
    };
    let body = format!(
        "A message{} from {poster} (key {fpr}), who is not a member of {}, {what}",
        quoted_subject(original_header),
        addrs.post
    );
    notice(&addrs.post, owner, &format!("A non-member's post to {}", addrs.post), None, &body, qid)
}

/// What a member who left is told.
pub fn goodbye(addrs: &Addresses, to: &str, original_header: &[u8], qid: &str) -> Vec<u8> {
    let body = format!(
        "You have left the list {post}; nothing more is sent to you from it.\nTo join again, write to {sub}.",
        post = addrs.post,
        sub = addrs.subscribe
    );
    notice(&addrs.unsubscribe, to, &format!("You have left {}", addrs.post), Some(original_header), &body, qid)
}

/// A confirmed request to join, now waiting for the owner: what the
/// requester is told.
pub fn waiting(addrs: &Addresses, to: &str, qid: &str) -> Vec<u8> {
    let body = format!("Your request to join {} is confirmed; the list's owner decides on it now.", addrs.post);
    notice(&addrs.post, to, &format!("Your request to join {} waits for its owner", addrs.post), None, &body, qid)
}

/// What the owner is told about a confirmed request to join.
pub fn to_owner_join(addrs: &Addresses, owner: &str, who: &str, fpr: &str, qid: &str) -> Vec<u8> {
    let body = format!(
        "{who} (key {fpr}) asked to join {} and confirmed it. To let them in:\n  stubmail list admit {fpr}\n\
         (with the --home of the list); to turn them down, do nothing.",
        addrs.post
    );
    notice(&addrs.post, owner, &format!("A request to join {}", addrs.post), None, &body, qid)
}

/// (Subject, Message-ID) of a header block, each cleaned of line breaks.
pub fn subject_and_id(header: &[u8]) -> (Option<String>, Option<String>) {
    let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    let subject = smtp2stub::worker::subject_of(header).map(|s| clean(&s));
    let id = header
        .split(|&b| b == b'\n')
        .find(|l| l.len() > 11 && l[..11].eq_ignore_ascii_case(b"message-id:"))
        .map(|l| clean(String::from_utf8_lossy(&l[11..]).trim()))
        .filter(|v| v.starts_with('<') && v.ends_with('>') && !v[1..v.len() - 1].contains(['<', '>']));
    (subject, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Addresses {
        Addresses::of("team@example.org").unwrap()
    }

    #[test]
    fn a_refusal_notice_answers_the_message_without_letting_its_fields_in() {
        let n = refusal(&addrs(), "alice@example.org", b"Subject: hi\r\n\tthere\r\nMessage-ID: <m1@x>\r\n\r\n", "it is too long", "q1");
        let s = String::from_utf8(n).unwrap();
        assert!(s.contains("In-Reply-To: <m1@x>\r\n") && s.contains("\"hi there\" was not published") && s.contains("because it is too long."), "{s}");
        // A CR inside a field cannot start a field of its own in the notice.
        let n = String::from_utf8(refusal(&addrs(), "alice@example.org", b"Message-ID: <a\rBcc: x@y>\r\nSubject: a\rBcc: z@y\r\n\r\n", "x", "q2")).unwrap();
        assert!(n.split("\r\n").all(|l| !l.contains('\r') && !l.starts_with("Bcc")), "{n:?}");
        assert!(n.contains("In-Reply-To: <aBcc: x@y>\r\n"), "{n:?}");
        let n = String::from_utf8(refusal(&addrs(), "alice@example.org", b"Message-ID: <a> <b>\r\n\r\n", "x", "q3")).unwrap();
        assert!(!n.contains("In-Reply-To"), "{n:?}");
    }

    #[test]
    fn the_token_of_a_confirmation_comes_back_in_a_replys_subject_only() {
        let t = "0123456789abcdef0123456789ABCDEF";
        let c = String::from_utf8(confirm(&addrs(), "bob@example.net", b"Subject: join\r\n\r\n", &t.to_ascii_lowercase(), "q")).unwrap();
        let subject = c.lines().find(|l| l.starts_with("Subject: ")).unwrap();
        assert!(c.starts_with("From: team-subscribe@example.org\r\n"), "{c}");
        let reply = format!("Re: {}\r\n\r\n", subject).replacen("Re: Subject: ", "Subject: Re: ", 1);
        assert_eq!(token_in(reply.as_bytes()).as_deref(), Some(t.to_ascii_lowercase().as_str()));
        assert_eq!(token_in(format!("Subject: token {t}\r\n\r\n").as_bytes()).as_deref(), Some(t.to_ascii_lowercase().as_str()));
        // In the body only, too short, or none: no token.
        assert_eq!(token_in(format!("Subject: join\r\n\r\ntoken {t}\r\n").as_bytes()), None);
        assert_eq!(token_in(b"Subject: token 0123\r\n\r\n"), None);
        assert_eq!(token_in(b"From: x@y\r\n\r\n"), None);
    }

    #[test]
    fn the_owner_is_told_how_to_decide_on_a_held_post() {
        let n = String::from_utf8(to_owner(&addrs(), "alice@example.org", "dave@example.net", "AB", b"Subject: buy\r\n\r\n", Some("l123"), "q")).unwrap();
        assert!(n.contains("stubmail list approve l123") && n.contains("\"buy\" from dave@example.net (key AB)"), "{n}");
        let n = String::from_utf8(to_owner(&addrs(), "alice@example.org", "dave@example.net", "AB", b"Subject: buy\r\n\r\n", None, "q")).unwrap();
        assert!(n.contains("was refused"), "{n}");
    }
}
