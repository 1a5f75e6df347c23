//! What every listener shares: accept connections until shutdown, one task
//! per connection, and on shutdown let the open ones finish.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many connections one listener holds at once, in all and per client
/// address: slow clients (slowloris) from one address can take only their
/// share, and idle timeouts end them.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_total: usize,
    pub max_per_ip: usize,
    /// Written to a connection refused over a limit, before closing it
    /// (e.g. SMTP's `421`).
    pub refusal: &'static [u8],
}

impl ConnLimits {
    pub const fn new(refusal: &'static [u8]) -> ConnLimits {
        ConnLimits { max_total: 512, max_per_ip: 32, refusal }
    }
}

/// Holds one connection's place in the counts until dropped.
struct Slot {
    ip: IpAddr,
    counts: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("not poisoned");
        c.0 -= 1;
        if let Some(n) = c.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(&self.ip);
            }
        }
    }
}

/// Accept until `shutdown`, running `session` for each connection within
/// `limits`; then wait for the sessions in progress. Accept errors (e.g.
/// out of file descriptors) are logged and do not stop the server.
pub async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: CancellationToken, limits: ConnLimits, session: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let counts = Arc::new(Mutex::new((0usize, HashMap::new())));
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
        // Replies are small and the peer waits for each: without this, a
        // short answer waits on Nagle's algorithm and the peer's delayed
        // ACK (about 40 ms per HTTP response, measured).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "TCP_NODELAY: {e}");
        }
        let ip = peer.ip();
        let admitted = {
            let mut c = counts.lock().expect("not poisoned");
            let here = c.1.get(&ip).copied().unwrap_or(0);
            if c.0 >= limits.max_total || here >= limits.max_per_ip {
                false
            } else {
                c.0 += 1;
                *c.1.entry(ip).or_insert(0) += 1;
                true
            }
        };
        if !admitted {
            tracing::warn!(%peer, "connection refused: too many connections");
            let refusal = limits.refusal;
            tracker.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(refusal)).await;
            });
            continue;
        }
        let slot = Slot { ip, counts: counts.clone() };
        let fut = session(stream, peer);
        tracker.spawn(async move {
            fut.await;
            drop(slot);
        });
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
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_on_nagle() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        const LIMITS: ConnLimits = ConnLimits::new(b"busy\r\n");
        let sd = shutdown.clone();
        let server = tokio::spawn(accept_loop(l, sd, LIMITS, move |s, _| {
            let tx = tx.clone();
            async move {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(s.nodelay().unwrap());
                }
            }
        }));
        let _c = TcpStream::connect(addr).await.unwrap();
        assert!(rx.await.unwrap(), "TCP_NODELAY set on the accepted socket");
        shutdown.cancel();
        server.await.unwrap();
    }

    #[test]
    fn constant_eq_table() {
        assert!(super::constant_eq(b"pw", b"pw"));
        for (a, b) in [(&b"pw"[..], &b"pW"[..]), (b"pw", b"pw2"), (b"", b"x"), (b"pw2", b"pw")] {
            assert!(!super::constant_eq(a, b));
        }
    }
}
