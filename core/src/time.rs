//! Time helpers. All timestamps on the wire are Unix seconds or RFC 3339 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC string ("2026-11-23T10:00:00Z") for Unix seconds.
pub fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 5322 date ("Mon, 23 Nov 2026 10:00:00 +0000") for trace headers.
pub fn rfc5322(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    // httpdate prints an IMF-fixdate ending in "GMT"; RFC 5322 prefers a
    // numeric zone.
    let s = httpdate::fmt_http_date(t);
    s.strip_suffix("GMT").map(|p| format!("{p}+0000")).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc5322(86400 * 365), "Fri, 01 Jan 1971 00:00:00 +0000");
    }
}
