//! post_manager: the sender's outbox. It holds each message until its
//! recipients fetch it, answers only signed requests, and keeps each
//! message's delivery status. `store` is the data directory, `handler` the
//! protocol logic shared by every way of running, `server` the standalone
//! HTTP server.

pub mod cgi;
pub mod handler;
pub mod server;
pub mod store;

/// Serve the outbox on `listener` until `shutdown`, applying the retention
/// policy every hour (and once at start).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: store::Store,
    settings: handler::Settings,
    retention: store::Retention,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
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
    server::run(listener, store, settings, shutdown).await
}
