//! `post_manager serve`: the handler behind hyper. Each request's body is
//! bridged into a blocking reader so uploads stream to disk; file bodies
//! stream back out.

use std::convert::Infallible;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::handler::{self, Body, Settings};
use crate::store::Store;

type RespBody = BoxBody<Bytes, io::Error>;

/// Longest wait for the next piece of a request body.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

struct Shared {
    store: Store,
    settings: Settings,
}

/// Serve until `shutdown` is cancelled; then finish in-flight requests.
pub async fn run(listener: TcpListener, store: Store, settings: Settings, shutdown: CancellationToken) -> io::Result<()> {
    let limits = stubmail::server::ConnLimits {
        max_per_ip: settings.max_connections_per_ip.max(1),
        ..stubmail::server::ConnLimits::new(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    };
    let shared = Arc::new(Shared { store, settings });
    let sd = shutdown.clone();
    stubmail::server::accept_loop(listener, shutdown, limits, move |stream, peer| {
        let (shared, shutdown) = (shared.clone(), sd.clone());
        async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(shared, req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, "connection: {e}") },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    })
    .await;
    Ok(())
}

async fn respond(shared: Arc<Shared>, req: hyper::Request<Incoming>, peer: std::net::SocketAddr) -> hyper::Response<RespBody> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let headers = parts.headers.clone();
    let content_length = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Each piece of the body must come within BODY_IDLE: a client that
    // stalls mid-upload is cut off (408), not waited on forever.
    let frames = BodyStream::new(body);
    let stream = futures_util::stream::unfold(Some(frames), |state| async move {
        let mut frames = state?;
        match tokio::time::timeout(BODY_IDLE, futures_util::StreamExt::next(&mut frames)).await {
            Ok(Some(Ok(f))) => Some((Ok(f.into_data().unwrap_or_default()), Some(frames))),
            // The client went away or broke the framing.
            Ok(Some(Err(e))) => Some((Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(io::Error::new(io::ErrorKind::TimedOut, "no request body data for 30 s")), None)),
        }
    });
    let reader = SyncIoBridge::new(StreamReader::new(Box::pin(stream)));
    let now = stubmail::time::unix_now();
    let log_target = target.clone();
    let log_method = method.clone();
    let resp = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let get = |name: &str| -> Vec<String> {
            headers.get_all(name).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect()
        };
        let req = handler::Request { method: &method, target: &target, headers: &get, content_length, body: &mut reader };
        handler::handle(&shared.store, &shared.settings, req, now)
    })
    .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("handler failed: {e}");
            return plain(500, Bytes::from_static(br#"{"error":"internal","message":"internal error; try again later"}"#));
        }
    };
    tracing::info!(%peer, method = log_method, target = log_target, status = resp.status,
        signer = resp.signer.as_ref().map(|f| f.to_string()), error = resp.error, "request");
    let ct = resp.content_type();
    let mut b = hyper::Response::builder()
        .status(resp.status)
        .header(hyper::header::CONTENT_TYPE, ct)
        .header(hyper::header::ACCEPT_RANGES, "bytes");
    if resp.cors {
        b = b.header(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    }
    if let Some(cr) = &resp.content_range {
        b = b.header(hyper::header::CONTENT_RANGE, cr);
    }
    let body: RespBody = match resp.body {
        Body::Empty => Full::new(Bytes::new()).map_err(|e: Infallible| match e {}).boxed(),
        Body::Json(v) | Body::Key(v) | Body::Doc(v, _) => Full::new(Bytes::from(v)).map_err(|e: Infallible| match e {}).boxed(),
        Body::Stream(r, len) => {
            b = b.header(hyper::header::CONTENT_LENGTH, len);
            BodyExt::boxed(StreamBody::new(blocking_stream(r, len)))
        }
    };
    b.body(body).unwrap_or_else(|_| plain(500, Bytes::new()))
}

/// A blocking reader (a file, or a database's chunks) as a body stream:
/// a blocking thread reads 64 KiB pieces ahead into a small channel, so
/// memory stays bounded whatever the size.
fn blocking_stream(
    mut r: crate::store::MessageReader,
    len: u64,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; left.min(64 * 1024) as usize];
            let piece = match r.read(&mut buf) {
                Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stored message is shorter than its size")),
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p.map(Frame::data), rx)) })
}

fn plain(status: u16, body: Bytes) -> hyper::Response<RespBody> {
    let mut r = hyper::Response::new(Full::new(body).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}
