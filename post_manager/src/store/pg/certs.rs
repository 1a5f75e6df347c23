//! Recipients' certificates remembered from their polls.

use stubmail::openpgp::Cert;
use stubmail::pgp;
use stubmail::protocol::Fpr;

use super::Pg;
use crate::store::Certs;

fn first_cert(bytes: &[u8]) -> Option<Cert> {
    pgp::parse_certs(bytes).ok()?.into_iter().next()
}

impl Certs for Pg {
    fn known_cert(&self, f: &Fpr) -> std::io::Result<Option<Cert>> {
        let mut c = self.conn()?;
        let row = c
            .query_opt(
                "SELECT cert FROM certs WHERE fpr = $1 UNION ALL SELECT cert FROM accounts WHERE fpr = $1 LIMIT 1",
                &[&f.as_str()],
            )
            .map_err(super::io_err)?;
        Ok(row.and_then(|r| first_cert(r.get(0))))
    }

    fn remember_cert(&self, cert: &Cert) -> anyhow::Result<()> {
        let f = pgp::fpr_of(cert);
        let bytes = pgp::binary(&pgp::reduced(cert)?)?;
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let old = tx.query_opt("SELECT cert FROM certs WHERE fpr = $1 FOR UPDATE", &[&f.as_str()])?;
        if let Some(old) = old {
            let old: &[u8] = old.get(0);
            // A revocation once seen sticks.
            if old == bytes.as_slice() || first_cert(old).is_some_and(|o| pgp::is_revoked(&o)) {
                return Ok(());
            }
        }
        tx.execute(
            "INSERT INTO certs VALUES ($1, $2) ON CONFLICT (fpr) DO UPDATE SET cert = EXCLUDED.cert",
            &[&f.as_str(), &bytes],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn take_revocation(&self, presented: &Cert) -> anyhow::Result<bool> {
        if !crate::store::revokes_itself(presented) {
            return Ok(false);
        }
        let f = pgp::fpr_of(presented);
        let mut took = false;
        let mut c = self.conn()?;
        for table in ["certs", "accounts"] {
            let mut tx = c.transaction()?;
            let Some(row) = tx.query_opt(&format!("SELECT cert FROM {table} WHERE fpr = $1 FOR UPDATE"), &[&f.as_str()])? else {
                continue;
            };
            let Some(known) = first_cert(row.get(0)) else { continue };
            if pgp::is_revoked(&known) {
                continue;
            }
            let merged = pgp::with_revocations_from(&known, presented)?;
            if pgp::is_revoked(&merged) {
                tx.execute(&format!("UPDATE {table} SET cert = $2 WHERE fpr = $1"), &[&f.as_str(), &pgp::binary(&merged)?])?;
                tx.commit()?;
                tracing::info!(fpr = %f, "stored a revocation");
                took = true;
            }
        }
        Ok(took)
    }
}
