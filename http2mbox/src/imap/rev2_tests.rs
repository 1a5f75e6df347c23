//! IMAP4rev2 (RFC 9051) and the extensions it folds in: BINARY, ESEARCH,
//! SEARCHRES, LIST-EXTENDED, LIST-STATUS, STATUS=SIZE, and what changes
//! after `ENABLE IMAP4rev2`.

use super::tests_support::*;

const LOGIN: &str = "a LOGIN bob@example.org pw\n";

/// A message with a base64 part holding a NUL, a quoted-printable part
/// and a part in an encoding no one knows.
fn mime_maildir() -> tempfile::TempDir {
    let d = maildir();
    std::fs::write(
        d.path().join("new/1002.c.host"),
        "From: a@example.org\nSubject: parts\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"XX\"\n\n--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAGhp\nIQ==\n--XX\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9 =\nsoft\n--XX\nContent-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n--XX--\n",
    )
    .unwrap();
    d
}

#[tokio::test]
async fn binary_undoes_the_transfer_encoding_and_says_so_when_it_cannot() {
    let d = mime_maildir();
    let out = dialogue(
        ctx(d.path()),
        &format!(
            "{LOGIN}b SELECT INBOX\nc FETCH 3 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.SIZE[2])\nd FETCH 3 BINARY.PEEK[2]<0.4>\ne FETCH 3 BINARY.PEEK[3]\ne2 FETCH 3 (BINARY[3] BINARY.SIZE[])\nf FETCH 3 FLAGS\ng FETCH 3 BINARY[2]\nh FETCH 1 BINARY.PEEK[1]\ni FETCH 3 BINARY.PEEK[9]\nj LOGOUT\n"
        ),
    )
    .await;
    // base64 with a NUL: a literal8; its decoded size.
    assert!(out.contains("* 3 FETCH (BINARY[1] ~{4}\r\n\0hi! BINARY.SIZE[1] 4 BINARY.SIZE[2] 10)"), "{out}");
    assert!(out.contains("* 3 FETCH (BINARY[2]<0> {4}\r\ncaf\u{fffd})"), "a partial counts decoded octets: {out}");
    assert!(out.contains("e NO [UNKNOWN-CTE]") && out.contains("e2 NO [UNKNOWN-CTE]"), "{out}");
    assert!(out.contains("* 3 FETCH (FLAGS (\\Recent))\r\nf OK"), "a refused BINARY sets no \\Seen: {out}");
    assert!(!out.contains("* 3 FETCH (FLAGS (\\Seen"), "PEEK sets no \\Seen: {out}");
    assert!(out.contains("* 3 FETCH (BINARY[2] {10}\r\ncaf\u{e9} soft FLAGS (\\Seen"), "BINARY sets \\Seen: {out}");
    // A single-part message: part 1 is its body.
    assert!(out.contains("* 1 FETCH (BINARY[1] {12}\r\nHello Bob.\r\n)"), "{out}");
    assert!(out.contains("* 3 FETCH (BINARY[9] {0}\r\n)"), "{out}");
}

#[tokio::test]
async fn esearch_answers_min_max_count_all_and_saves_for_dollar() {
    let d = mime_maildir();
    let out = dialogue(
        ctx(d.path()),
        &format!(
            "{LOGIN}b SELECT INBOX\nc SEARCH RETURN (MIN MAX COUNT) ALL\nd UID SEARCH RETURN () ALL\ne SEARCH RETURN (COUNT) SUBJECT nothing-like-this\nf SEARCH RETURN (SAVE) OR SUBJECT first SUBJECT parts\ng FETCH $ (UID)\nh UID FETCH $ (FLAGS)\ni SEARCH RETURN (ALL) NOT $\nj UID SEARCH RETURN (ALL) UID $ SUBJECT parts\nk SEARCH RETURN (MIN SAVE) ALL\nl FETCH $ UID\nm SEARCH RETURN (PARTIAL 1:2) ALL\nn SEARCH ALL\no UNSELECT\np SELECT INBOX\nq FETCH $ FLAGS\nr SEARCH $\ns LOGOUT\n"
        ),
    )
    .await;
    assert!(out.contains("* ESEARCH (TAG \"c\") MIN 1 MAX 3 COUNT 3\r\n"), "{out}");
    let uids = out.lines().find(|l| l.starts_with("* ESEARCH (TAG \"d\") UID ALL ")).unwrap_or_else(|| panic!("{out}")).to_string();
    assert!(out.contains("* ESEARCH (TAG \"e\") COUNT 0\r\n"), "no MIN/MAX/ALL of nothing: {out}");
    // SAVE alone: no ESEARCH; `$` then names messages 1 and 3.
    assert!(!out.contains("(TAG \"f\")"), "{out}");
    assert!(out.contains("* 1 FETCH (UID ") && out.contains("* 3 FETCH (UID "), "{out}");
    let g = out.split("g OK").next().unwrap();
    assert!(!g.split("f OK").nth(1).unwrap().contains("* 2 FETCH"), "message 2 is not in $: {out}");
    assert!(out.contains("* ESEARCH (TAG \"i\") ALL 2\r\n"), "{out}");
    assert!(out.contains("* ESEARCH (TAG \"j\") UID ALL "), "{out}");
    assert!(out.contains("k OK") && !out.contains("(TAG \"k\") MIN 1 ALL"), "{out}");
    assert!(out.contains("* ESEARCH (TAG \"k\") MIN 1\r\n"), "{out}");
    let l = out.split("k OK SEARCH completed\r\n").nth(1).unwrap().split("l OK").next().unwrap();
    assert!(l.contains("* 1 FETCH") && !l.contains("* 3 FETCH"), "MIN with SAVE saves the minimum: {l}");
    assert!(out.contains("m BAD "), "{out}");
    assert!(out.contains("* SEARCH 1 2 3\r\n"), "without RETURN, an IMAP4rev1 client gets SEARCH: {out}");
    // A new SELECT forgets the saved result.
    assert!(out.contains("q OK nothing done: the saved search result ($) is empty"), "{out}");
    assert!(out.contains("* SEARCH\r\nr OK"), "{out}");
    assert!(uids.contains(':') || uids.matches(',').count() == 2, "{uids}");
}

#[tokio::test]
async fn list_extended_selects_returns_and_lists_status() {
    let d = mime_maildir();
    let out = dialogue(
        ctx(d.path()),
        &format!(
            "{LOGIN}b CREATE Work\nc CREATE Work.Old\nd UNSUBSCRIBE Work\nd2 SUBSCRIBE Gone\nd3 LSUB \"\" Gone\ne LIST (SUBSCRIBED) \"\" *\nf LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %\ng LIST \"\" (INBOX Sent INBOX) RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN SIZE))\nh LIST (SPECIAL-USE) \"\" *\ni LIST \"\" % RETURN (STATUS (BOGUS))\nj STATUS INBOX (SIZE MESSAGES)\nk LIST (REMOTE) \"\" Work\nl LOGOUT\n"
        ),
    )
    .await;
    let part = |tag: &str| -> String {
        let prev = out.find(&format!("\r\n{tag} ")).unwrap_or_else(|| panic!("{tag}: {out}"));
        let start = out[..prev].rfind(" completed\r\n").map_or(0, |i| i + 12);
        out[start..prev + 2].to_string()
    };
    let e = part("e");
    assert!(e.contains("\"Work.Old\"") || e.contains(" Work.Old\r\n"), "{e}");
    assert!(!e.contains(" Work\r\n"), "Work is not subscribed: {e}");
    assert!(e.contains("\\Subscribed"), "{e}");
    // A subscribed name that is no folder (RFC 5258 §3.4).
    assert!(e.contains("* LIST (\\NonExistent \\Subscribed) \".\" Gone\r\n"), "{e}");
    assert!(out.contains("* LSUB (\\Noselect) \".\" Gone\r\nd3 OK"), "{out}");
    let f = part("f");
    assert!(f.contains("Work (\"CHILDINFO\" (\"SUBSCRIBED\"))"), "{f}");
    let g = part("g");
    assert_eq!(g.matches("* LIST").count(), 2, "INBOX once: {g}");
    assert!(g.contains("* STATUS INBOX (MESSAGES 3 UNSEEN 3 SIZE "), "{g}");
    assert!(g.contains("* STATUS Sent (MESSAGES 0 UNSEEN 0 SIZE 0)"), "{g}");
    let h = part("h");
    assert!(h.contains("\\Sent") && h.contains("\\Junk") && !h.contains("INBOX") && !h.contains("Work"), "{h}");
    assert!(out.contains("i BAD "), "{out}");
    assert!(out.contains("* STATUS INBOX (SIZE "), "{out}");
    assert!(part("k").contains(" Work\r\n"), "{out}");
}

#[tokio::test]
async fn after_enable_imap4rev2_the_rev2_rules_apply() {
    let d = mime_maildir();
    let out = dialogue(
        ctx(d.path()),
        &format!(
            "{LOGIN}b ENABLE IMAP4rev2\nc CREATE \"Entwürfe\"\nd SELECT INBOX\ne FETCH 1 FLAGS\nf SEARCH SUBJECT first\ng SELECT \"Entwürfe\"\nh LIST \"\" *\ni LOGOUT\n"
        ),
    )
    .await;
    assert!(out.contains("* ENABLED IMAP4rev2\r\n"), "{out}");
    assert!(out.contains("c OK"), "{out}");
    assert!(d.path().join(".Entw&APw-rfe/cur").is_dir(), "stored in modified UTF-7");
    let select = out.split("c OK").nth(1).unwrap().split("d OK").next().unwrap();
    assert!(!select.contains("RECENT") && !select.contains("[UNSEEN"), "{select}");
    assert!(select.contains("* LIST () \".\" INBOX\r\n"), "{select}");
    assert!(out.contains("* 1 FETCH (FLAGS ())\r\n"), "no \\Recent: {out}");
    assert!(out.contains("* ESEARCH (TAG \"f\") ALL 1\r\n"), "{out}");
    assert!(out.contains("* OK [CLOSED]"), "{out}");
    assert!(out.contains("* LIST () \".\" \"Entwürfe\"\r\n"), "{out}");
    assert!(out.contains("* LIST (\\HasNoChildren) \".\" \"Entwürfe\"\r\n"), "{out}");
    // An IMAP4rev1 client sees the same folder in modified UTF-7.
    let out = dialogue(ctx(d.path()), &format!("{LOGIN}h LIST \"\" Entw*\ni LOGOUT\n")).await;
    assert!(out.contains("* LIST (\\HasNoChildren) \".\" Entw&APw-rfe\r\n"), "{out}");
}

#[tokio::test]
async fn dollar_is_a_set_only_where_a_set_goes_and_is_bounded() {
    let d = mime_maildir();
    let out = dialogue(
        ctx(d.path()),
        &format!(
            "{LOGIN}b SELECT INBOX\nc SEARCH RETURN (SAVE) 1:2\nd SEARCH SUBJECT $\ne SEARCH HEADER Subject $\nf SEARCH $ $ $ $ $ $ $ $\ng SEARCH $ $ $ $ $ $ $ $ $\nh LIST \"\" * RETURN (STATUS ())\ni SEARCH RETURN (SAVE BOGUS) ALL\nj FETCH $ UID\ni2 SEARCH RETURN (SAVE) 2\nj2 SEARCH RETURN (SAVE) NOSUCHKEY\nk FETCH $ UID\nl LOGOUT\n"
        ),
    )
    .await;
    // `SUBJECT $` looks for a "$" in subjects (there is none), whatever $ holds.
    assert!(out.contains("* SEARCH\r\nd OK") && out.contains("* SEARCH\r\ne OK"), "{out}");
    assert!(out.contains("* SEARCH 1 2\r\nf OK"), "{out}");
    assert!(out.contains("g NO [LIMIT]"), "{out}");
    assert!(out.contains("h BAD"), "{out}");
    // A SEARCH with SAVE that fails leaves $ empty (RFC 5182 §2.1).
    assert!(out.contains("i BAD") && out.contains("j OK nothing done"), "{out}");
    assert!(out.contains("j2 BAD") && out.contains("k OK nothing done"), "{out}");
}

#[tokio::test]
async fn an_imap4rev2_clients_names_are_utf8_throughout() {
    let d = mime_maildir();
    let out = dialogue(ctx(d.path()), &format!("{LOGIN}b ENABLE IMAP4rev2\nc CREATE \"R&D\"\nd CREATE \"a\u{2028}b\"\ne CREATE \"INBOX\u{200B}\"\nf LIST \"\" R*\nf2 CREATE \"äü\"\nf3 LIST \"\" \"ä*\"\ng LOGOUT\n")).await;
    assert!(out.contains("c OK") && d.path().join(".R&-D").is_dir(), "{out}");
    assert!(out.contains("* LIST (\\HasNoChildren) \".\" R&D\r\n"), "the name as created: {out}");
    assert!(out.contains("d NO") && out.contains("e NO"), "no separators or invisible characters: {out}");
    assert!(out.contains("* LIST (\\HasNoChildren) \".\" \"äü\"\r\nf3 OK"), "a UTF-8 pattern matches UTF-8 names: {out}");
}
