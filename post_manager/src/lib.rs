//! post_manager: the sender's outbox. It holds each message until its
//! recipients fetch it, answers only signed requests, and keeps each
//! message's delivery status. `store` is the data directory, `handler` the
//! protocol logic shared by every way of running, `server` the standalone
//! HTTP server.

pub mod archive;
pub mod cgi;
pub mod handler;
pub mod server;
pub mod store;
pub mod udp;

/// Serve the outbox on `listener` (and UDP polls and stubs on `udp`) until
/// `shutdown`, applying the retention policy every hour (and once at start).
pub async fn serve(
    listener: tokio::net::TcpListener,
    udp: Option<(std::net::UdpSocket, udp::UdpSettings)>,
    store: store::Store,
    settings: handler::Settings,
    retention: store::Retention,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let udp_task = udp.map(|(socket, us)| {
        let (st, sd) = (store.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || udp::run(socket, st, us, sd))
    });
    let (st, sd) = (store.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let s2 = st.clone();
            match tokio::task::spawn_blocking(move || s2.expire(stubmail::time::unix_now(), retention)).await {
                Ok(Ok(e)) if e != Default::default() => tracing::info!(?e, "retention"),
                Ok(Err(e)) => tracing::error!("retention: {e}"),
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                _ = sd.cancelled() => return,
            }
        }
    });
    let r = server::run(listener, store, settings, shutdown.clone()).await;
    if let Some(t) = udp_task {
        shutdown.cancel();
        match t.await {
            Ok(Err(e)) => tracing::error!("UDP service: {e}"),
            Err(e) => tracing::error!("UDP service: {e}"),
            Ok(Ok(())) => {}
        }
    }
    r
}

/// Bind the UDP service for `serve`: `off`, an address, or (`auto`) the
/// HTTP listener's address and port number (TCP and UDP ports are separate
/// namespaces), falling back to a free port on the same address.
pub fn bind_udp(spec: &str, http: std::net::SocketAddr) -> anyhow::Result<Option<std::net::UdpSocket>> {
    use anyhow::Context as _;
    match spec {
        "off" => Ok(None),
        "auto" => Ok(Some(match std::net::UdpSocket::bind(http) {
            Ok(s) => s,
            Err(_) => std::net::UdpSocket::bind((http.ip(), 0)).with_context(|| format!("binding UDP on {}", http.ip()))?,
        })),
        a => {
            let addr: std::net::SocketAddr = a.parse().with_context(|| format!("--udp {a:?}: expected off, auto or IP:PORT"))?;
            Ok(Some(std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?))
        }
    }
}

/// Is `a` a plain mail address an abuse desk could have?
pub fn valid_abuse_contact(a: &str) -> bool {
    stubmail::mail::is_plain_address(a)
}
