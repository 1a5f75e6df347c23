//! Certificates a peer sends: presented in polls (the outbox reduces and
//! keeps them), found by WKD (only the looked-up User ID is kept), revoked
//! ones (only revocation signatures are taken). No panic, and the bounds
//! hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubmail::pgp;

fuzz_target!(|input: &[u8]| {
    let Ok(certs) = pgp::parse_certs(input) else { return };
    for c in certs.into_iter().take(4) {
        if let Ok(r) = pgp::reduced(&c) {
            assert!(pgp::binary(&r).unwrap().len() <= pgp::MAX_REMEMBERED_CERT, "reduced certificates are bounded");
            assert_eq!(r.fingerprint(), c.fingerprint());
            assert!(r.userids().count() <= 8 && r.keys().subkeys().count() <= 8);
        }
        let _ = pgp::is_revoked(&c);
        let _ = pgp::with_revocations_from(&c, &c);
        let _ = pgp::check_contact(&c);
        for want in pgp::emails_of(&c).into_iter().take(2).chain(["nobody@example.org".to_string()]) {
            if let Some(only) = pgp::only_userid_for(c.clone(), &want) {
                assert_eq!(pgp::emails_of(&only), vec![want.clone()], "a WKD answer speaks for the address looked up only");
            }
        }
    }
});
