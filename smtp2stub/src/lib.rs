//! smtp2stub: the local SMTP server mail clients send through. Each accepted
//! message is fsync'd into the spool before `250`; a worker then signs and
//! encrypts it for its Stubmail recipients and stores it in the sender's own
//! outbox.

pub mod session;
pub mod spool;
pub mod worker;

use std::sync::Arc;

use stubmail::keyring::Keyring;
use stubmail::protocol::Fpr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use session::{Ctx, Policy, Reply};

/// The submission rules of one user.
pub struct Router {
    /// The user's own addresses, lower-cased: the only allowed MAIL FROM.
    pub own: Vec<String>,
    pub keyring: Keyring,
}

impl Policy for Router {
    fn sender(&self, addr: &str) -> Result<(), Reply> {
        if self.own.contains(&addr.to_ascii_lowercase()) {
            Ok(())
        } else {
            Err(Reply::new(
                550,
                format!("5.7.1 <{addr}> is not your address; this server only sends as {} (no relaying)", self.own.join(", ")),
            ))
        }
    }

    fn recipient(&self, addr: &str) -> Result<Fpr, Reply> {
        let certs = self.keyring.by_email(addr).map_err(|e| {
            tracing::error!("keyring: {e}");
            Reply::new(451, "4.3.0 Cannot read the keyring; try again later")
        })?;
        // A contact with an outbox speaks Stubmail. Several keys for one
        // address: take the newest.
        let mut stub: Vec<_> = certs.into_iter().filter(|c| stubmail::pgp::outbox_of(c).is_some()).collect();
        stub.sort_by_key(|c| std::cmp::Reverse(c.primary_key().key().creation_time()));
        match stub.first() {
            Some(c) => Ok(stubmail::pgp::fpr_of(c)),
            None => Err(Reply::new(
                550,
                format!(
                    "5.1.1 <{addr}>: no Stubmail key for this address and no SMTP relay configured; \
                     import their key with `stubmail keys import`"
                ),
            )),
        }
    }
}

/// Accept SMTP sessions until `shutdown`; then let open sessions finish.
pub async fn run(listener: TcpListener, ctx: Arc<Ctx>, shutdown: CancellationToken) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!("accept: {e}"); continue; }
            },
            _ = shutdown.cancelled() => break,
        };
        let ctx = ctx.clone();
        tracker.spawn(async move {
            if let Err(e) = session::serve(stream, peer.to_string(), &ctx).await {
                tracing::debug!(%peer, "session ended: {e}");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
