//! The SMTP transport to the user's `[relay]` (lettre), for smtp2stub's
//! ordinary-mail fallback and for abuse reports that go by mail.

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use crate::config::{RelayConfig, RelayTls};

/// A transport to the configured relay, or why there is none.
pub fn transport(cfg: &RelayConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = match cfg.tls {
        RelayTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)),
        RelayTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host),
        RelayTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host),
    };
    let mut builder = builder.map_err(|e| format!("relay {}: {e}", cfg.host))?.port(cfg.port).timeout(Some(Duration::from_secs(120)));
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.expose().to_string()));
    }
    Ok(builder.build())
}
