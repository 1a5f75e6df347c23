//! What every listener shares: accept connections until shutdown, one task
//! per connection, and on shutdown let the open ones finish.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accept until `shutdown`, running `session` for each connection; then
/// wait for the sessions in progress. Accept errors (e.g. out of file
/// descriptors) are logged and do not stop the server.
pub async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: CancellationToken, session: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    // Do not spin when the process is out of descriptors.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        tracker.spawn(session(stream, peer));
    }
    tracker.close();
    tracker.wait().await;
}

/// Compare secrets in time that does not depend on where they differ.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    let mut d = (a.len() != b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        d |= x ^ b.get(i).copied().unwrap_or(0);
    }
    d == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_eq_table() {
        assert!(super::constant_eq(b"pw", b"pw"));
        for (a, b) in [(&b"pw"[..], &b"pW"[..]), (b"pw", b"pw2"), (b"", b"x"), (b"pw2", b"pw")] {
            assert!(!super::constant_eq(a, b));
        }
    }
}
