//! TLS for the servers (SMTP STARTTLS, POP3 STLS): rustls with ring.

/// Load a PEM certificate chain and key into a STARTTLS acceptor.
pub fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    crate::client::init_tls();
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("{} is not a PEM private key", key.display()))?;
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// The acceptor a listener's config asks for: both files (relative to the
/// home), or neither (no TLS). `table` names the config table in errors.
pub fn from_config(
    home: &crate::Home,
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    table: &str,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(acceptor(&home.path(c), &home.path(k))?)),
        (None, None) => Ok(None),
        _ => anyhow::bail!("set both {table}.tls_cert and {table}.tls_key, or neither"),
    }
}
