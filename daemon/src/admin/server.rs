//! The daemon's side of the admin plane: the control socket's and the metrics endpoint's accept
//! loops, each behind its connection cap ([`super::listeners`]). A control request is one JSON
//! [`Request`] per connection, answered by the runtime (`crate::run`), which asks the data-plane
//! thread; a scrape is one HTTP `GET /metrics`. A `tandem events` request keeps its connection
//! (and its slot) and gets the event stream ([`super::events`]).

use std::rc::Rc;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::events::{EVENT_WRITE_TIMEOUT, End, MAX_EVENT_LISTENERS, pump};
use super::listeners::{Gate, REPLY_TIMEOUT, REQUEST_TIMEOUT};
use super::{ErrorKind, MAX_MESSAGE, Reply, Request};
use crate::dataplane::worker::Command;
use crate::run::{Ctx, ask, handle_request};

/// The control socket's accept loop (limits: [`super::listeners`]).
pub(crate) async fn serve_control_socket(ctx: Rc<Ctx>, listener: tokio::net::UnixListener) {
    let mut gate = Gate::new("control socket");
    let listeners = Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_LISTENERS));
    loop {
        let slot = gate.slot().await;
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                let listeners = listeners.clone();
                tokio::task::spawn_local(async move {
                    serve_control(ctx, stream, listeners).await;
                    drop(slot);
                });
            }
            Err(e) => {
                drop(slot);
                gate.accept_failed(&e).await;
            }
        }
    }
}

async fn serve_control(
    ctx: Rc<Ctx>,
    mut stream: tokio::net::UnixStream,
    listeners: Arc<tokio::sync::Semaphore>,
) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            // One request per connection: a newline also ends it (for `socat`-style clients).
            if buf.contains(&b'\n') || buf.len() as u64 > MAX_MESSAGE {
                break;
            }
        }
        std::io::Result::Ok(())
    })
    .await;
    let reply = match (read, serde_json::from_slice::<Request>(&buf)) {
        (Ok(Ok(())), Ok(Request::Events)) => match listeners.try_acquire_owned() {
            Ok(_listener) => return serve_events(&ctx, stream).await,
            Err(_) => Reply::error(
                ErrorKind::Internal,
                format!("too many event listeners (at most {MAX_EVENT_LISTENERS})"),
            ),
        },
        (Ok(Ok(())), Ok(req)) => handle_request(&ctx, req).await,
        (Ok(Ok(())), Err(e)) => Reply::error(ErrorKind::User, format!("bad request: {e}")),
        _ => return,
    };
    if let Ok(mut body) = serde_json::to_vec(&reply) {
        body.push(b'\n');
        let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
            stream.write_all(&body).await?;
            stream.shutdown().await
        })
        .await;
    }
}

/// One `tandem events` listener, until it leaves or is dropped.
async fn serve_events(ctx: &Ctx, mut stream: tokio::net::UnixStream) {
    let mut rx = ctx.subscribe();
    let (read, write) = stream.split();
    match pump(&mut rx, read, write, EVENT_WRITE_TIMEOUT).await {
        End::ClientGone | End::Closed => {}
        End::Lagged(missed) => tracing::warn!(
            missed,
            "events: dropping a listener that fell a whole queue behind"
        ),
        End::Stalled => tracing::warn!(
            timeout_ms = EVENT_WRITE_TIMEOUT.as_millis() as u64,
            "events: dropping a listener that stopped reading"
        ),
    }
}

/// The metrics endpoint's accept loop (limits: [`super::listeners`]).
pub(crate) async fn serve_metrics(ctx: Rc<Ctx>, listener: tokio::net::TcpListener) {
    let mut gate = Gate::new("metrics endpoint");
    loop {
        let slot = gate.slot().await;
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                drop(slot);
                gate.accept_failed(&e).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            let ok = tokio::time::timeout(REQUEST_TIMEOUT, async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&chunk[..n]);
                }
                Some(())
            })
            .await;
            if !matches!(ok, Ok(Some(()))) {
                return;
            }
            let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let response = if method == "GET"
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                match ask(&ctx, Command::Metrics).await {
                    Some(snap) => {
                        let body = super::metrics::render(&snap);
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    None => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                }
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n".to_owned()
            };
            let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        });
    }
}
