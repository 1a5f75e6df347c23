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
            "{LOGIN}b SELECT INBOX\nc FETCH 3 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.SIZE[2])\nd FETCH 3 BINARY.PEEK[2]<0.4>\ne FETCH 3 BINARY.PEEK[3]\nf FETCH 3 FLAGS\ng FETCH 3 BINARY[2]\nh FETCH 1 BINARY.PEEK[1]\ni FETCH 3 BINARY.PEEK[9]\nj LOGOUT\n"
        ),
    )
    .await;
    // base64 with a NUL: a literal8; its decoded size.
    assert!(out.contains("* 3 FETCH (BINARY[1] ~{4}\r\n\0hi! BINARY.SIZE[1] 4 BINARY.SIZE[2] 10)"), "{out}");
    assert!(out.contains("* 3 FETCH (BINARY[2]<0> {4}\r\ncaf\u{fffd})"), "a partial counts decoded octets: {out}");
    assert!(out.contains("e NO [UNKNOWN-CTE]"), "{out}");
    assert!(!out.contains("* 3 FETCH (FLAGS (\\Seen"), "PEEK sets no \\Seen: {out}");
    assert!(out.contains("* 3 FETCH (BINARY[2] {10}\r\ncaf\u{e9} soft FLAGS (\\Seen"), "BINARY sets \\Seen: {out}");
    // A single-part message: part 1 is its body.
    assert!(out.contains("* 1 FETCH (BINARY[1] {12}\r\nHello Bob.\r\n)"), "{out}");
    assert!(out.contains("* 3 FETCH (BINARY[9] {0}\r\n)"), "{out}");
}
