//! Shutdown on Ctrl-C or SIGTERM (systemd, kill).

/// Resolves when the process is asked to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Cancel `token` when the process is asked to stop.
pub fn cancel_on_signal(token: &tokio_util::sync::CancellationToken) {
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        t.cancel();
    });
}
