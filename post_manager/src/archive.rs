//! A public list's archive (docs/PROTOCOL.md §10.5): the robot uploads
//! each post it publishes, signed by the list's key; the outbox serves
//! them to anyone as an Atom feed (RFC 4287), paged (RFC 5005 §3), each
//! entry linking the post and its signature. Pure functions here; the
//! bytes are kept by the store (`store::Archive`).

use atom_syndication::{ContentBuilder, EntryBuilder, FeedBuilder, FixedDateTime, LinkBuilder, PersonBuilder, Text};
use stubmail::protocol::Fpr;

/// Entries per page of the feed.
pub const PAGE: usize = 50;
/// Largest archived post.
pub const MAX_POST: u64 = 10 * 1024 * 1024;
/// Characters of a post's text shown in its feed entry.
const MAX_SUMMARY: usize = 16 * 1024;

/// What the feed shows of one archived post.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub id: String,
    pub subject: String,
    pub author: String,
    /// Unix time it was archived (the Date: field is the author's word).
    pub stored: i64,
    /// The start of its text.
    pub text: String,
}

/// The feed entry of a post (the RFC 5322 bytes the list signed).
pub fn entry_of(id: &str, post: &[u8], stored: i64) -> Entry {
    let msg = mail_parser::MessageParser::default().parse(post);
    let subject = msg.as_ref().and_then(|m| m.subject().map(str::to_string)).unwrap_or_else(|| "(no subject)".into());
    let author = msg
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(e)) => format!("{n} <{e}>"),
            (None, Some(e)) => e.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => "(unknown)".into(),
        })
        .unwrap_or_else(|| "(unknown)".into());
    let text: String = msg.as_ref().and_then(|m| m.body_text(0).map(|t| t.into_owned())).unwrap_or_default().chars().take(MAX_SUMMARY).collect();
    Entry { id: id.to_string(), subject: xml_safe(&subject), author: xml_safe(&author), stored, text: xml_safe(&text) }
}

/// Only the characters XML 1.0 allows (a post may carry any byte; a
/// feed with a control character is no feed at all).
fn xml_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

fn date(t: i64) -> FixedDateTime {
    chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().fixed_offset()
}

/// Page `page` (1 = the newest posts) of a list's feed: `entries` are that
/// page's, newest first, of `total`. Links are relative to the feed's own
/// URL (`…/v1/archive/<FPR>/feed`).
pub fn feed(list: &Fpr, title: &str, entries: &[Entry], page: usize, total: usize) -> String {
    let pages = total.div_ceil(PAGE).max(1);
    let link = |rel: &str, p: usize| LinkBuilder::default().rel(rel.to_string()).href(format!("feed?page={p}")).mime_type(Some("application/atom+xml".to_string())).build();
    let mut links = vec![link("self", page), link("first", 1), link("last", pages)];
    if page > 1 {
        links.push(link("previous", page - 1));
    }
    if page < pages {
        links.push(link("next", page + 1));
    }
    let items: Vec<_> = entries
        .iter()
        .map(|e| {
            EntryBuilder::default()
                .id(format!("tag:stubmail.org,2026:post:{}", e.id))
                .title(Text::plain(e.subject.clone()))
                .updated(date(e.stored))
                .published(Some(date(e.stored)))
                .authors(vec![PersonBuilder::default().name(e.author.clone()).build()])
                .links(vec![
                    LinkBuilder::default().rel("alternate".to_string()).href(format!("{}.eml", e.id)).mime_type(Some("message/rfc822".to_string())).build(),
                    LinkBuilder::default()
                        .rel("related".to_string())
                        .href(format!("{}.sig", e.id))
                        .mime_type(Some("application/pgp-signature".to_string()))
                        .title(Some("the list's OpenPGP signature over the post".to_string()))
                        .build(),
                ])
                .content(Some(ContentBuilder::default().content_type(Some("text".to_string())).value(Some(e.text.clone())).build()))
                .build()
        })
        .collect();
    let updated = entries.first().map_or(0, |e| e.stored);
    let feed = FeedBuilder::default()
        .id(format!("tag:stubmail.org,2026:list:{list}"))
        .title(Text::plain(xml_safe(title)))
        .updated(date(updated))
        .links(links)
        .entries(items)
        .build();
    feed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_becomes_an_entry_without_what_xml_cannot_carry() {
        let post = b"List-Id: <t.example.org>\r\nFrom: =?utf-8?q?Ali=C3=A7e?= <alice@example.org>\r\nSubject: hi\x01 <b>&amp;\r\n\r\nbody \x00\x07 text\r\n";
        let e = entry_of("ab", post, 1_800_000_000);
        assert_eq!((e.subject.as_str(), e.author.as_str()), ("hi\u{FFFD} <b>&amp;", "Aliçe <alice@example.org>"));
        assert!(e.text.starts_with("body \u{FFFD}\u{FFFD} text"), "{:?}", e.text);
        let none = entry_of("cd", b"garbage", 0);
        assert_eq!(none.subject, "(no subject)");
    }

    #[test]
    fn pages_link_to_each_other_as_rfc_5005_asks() {
        let f = Fpr::parse(&"AB".repeat(20)).unwrap();
        let e = |i: usize| entry_of(&format!("{i:064x}"), format!("Subject: post {i}\r\n\r\ntext {i}\r\n").as_bytes(), 1_800_000_000 + i as i64);
        let xml = feed(&f, "team@example.org", &[e(2), e(1)], 2, 2 * PAGE + 1);
        for want in ["href=\"feed?page=2\" rel=\"self\"", "href=\"feed?page=1\" rel=\"first\"", "href=\"feed?page=3\" rel=\"last\"", "href=\"feed?page=1\" rel=\"previous\"", "href=\"feed?page=3\" rel=\"next\"", "<title>post 2</title>", &format!("href=\"{:064x}.sig\"", 1)] {
            assert!(xml.contains(want), "{want} not in {xml}");
        }
        let first = feed(&f, "t", &[], 1, 0);
        assert!(!first.contains("rel=\"previous\"") && !first.contains("rel=\"next\"") && first.contains("href=\"feed?page=1\""), "{first}");
        // The markup of a subject is text, not markup.
        let xml = feed(&f, "t", &[entry_of("00", b"Subject: </title><script>x</script>\r\n\r\n", 0)], 1, 1);
        assert!(xml.contains("&lt;/title&gt;&lt;script&gt;") && !xml.contains("<script>"), "{xml}");
    }
}
