//! Drive one server session over an in-memory stream: the client writes
//! `input` and closes; returns everything the server wrote. Time is paused,
//! so the servers' deliberate delays (password guessing) cost nothing.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

pub fn dialogue<F, Fut>(input: &[u8], serve: F) -> Vec<u8>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut cr, mut cw) = tokio::io::split(client);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            let _ = cw.write_all(&input).await;
            let _ = cw.shutdown().await;
        });
        let reader = tokio::spawn(async move {
            let mut v = Vec::new();
            let _ = cr.read_to_end(&mut v).await;
            v
        });
        serve(server).await;
        let _ = writer.await;
        reader.await.unwrap()
    })
}
