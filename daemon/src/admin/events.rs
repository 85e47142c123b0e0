//! `tandem events`: the control-socket connections that stay open and get one JSON
//! [`EventRecord`] per line (docs/cli.md, "tandem events").
//!
//! Flow: the data-plane thread publishes into a `tokio::sync::broadcast` ring of
//! [`EVENT_QUEUE`] records and never waits; each listener is a task here that takes records from
//! its own receiver and writes them out. A listener is dropped (its connection closed, a warning
//! logged) when it falls [`EVENT_QUEUE`] records behind (the ring overwrote what it had not
//! taken) or when one line waits longer than [`EVENT_WRITE_TIMEOUT`] for room in the socket: a
//! client that stops reading costs a bounded amount of memory and never slows anyone else.
//!
//! Listeners hold one of the control socket's [`MAX_CONNECTIONS`] slots for as long as they
//! listen, and at most [`MAX_EVENT_LISTENERS`] of them at once, so that half the slots always stay
//! free for `status`, `reload`, `failover` and `drill`.
//!
//! [`MAX_CONNECTIONS`]: super::listeners::MAX_CONNECTIONS

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::{self, error::RecvError};

use super::EventRecord;
pub use crate::dataplane::worker::EVENT_QUEUE;

/// Most `tandem events` listeners at once: half of [`super::listeners::MAX_CONNECTIONS`].
pub const MAX_EVENT_LISTENERS: usize = super::listeners::MAX_CONNECTIONS / 2;

/// How long one event line may wait for room in a listener's socket before the listener is
/// dropped. Events are rare and small (a line is ~200 bytes, the socket buffer holds hundreds),
/// so a full buffer means a client that stopped reading; the same figure as a reply's deadline.
pub const EVENT_WRITE_TIMEOUT: Duration = super::listeners::REPLY_TIMEOUT;

/// Why a listener's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its side (or the connection failed).
    ClientGone,
    /// It fell this many records behind: dropped.
    Lagged(u64),
    /// A line waited [`EVENT_WRITE_TIMEOUT`] for room: dropped.
    Stalled,
    /// The data plane stopped.
    Closed,
}

/// Copy events from `rx` to the client until one of the [`End`]s. `read` is the client's half of
/// the connection (only watched for its close), `write` gets the lines.
pub async fn pump(
    rx: &mut broadcast::Receiver<EventRecord>,
    mut read: impl AsyncRead + Unpin,
    mut write: impl AsyncWrite + Unpin,
    write_timeout: Duration,
) -> End {
    let mut scratch = [0u8; 64];
    loop {
        let rec = tokio::select! {
            r = rx.recv() => r,
            n = read.read(&mut scratch) => match n {
                // Whatever the client sends after its request is ignored; EOF ends it.
                Ok(n) if n > 0 => continue,
                _ => return End::ClientGone,
            },
        };
        let rec = match rec {
            Ok(rec) => rec,
            Err(RecvError::Lagged(n)) => return End::Lagged(n),
            Err(RecvError::Closed) => return End::Closed,
        };
        let Ok(mut line) = serde_json::to_vec(&rec) else {
            continue;
        };
        line.push(b'\n');
        match tokio::time::timeout(write_timeout, write.write_all(&line)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return End::ClientGone,
            Err(_) => return End::Stalled,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::admin::Event;

    fn rec(i: u64) -> EventRecord {
        EventRecord {
            unix_ms: i,
            event: Event::Switch {
                connection: "c".into(),
                from: Some("t1".into()),
                to: Some("t2".into()),
                reason: "manual".into(),
            },
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("cannot build a test runtime: {e}"),
        }
    }

    #[test]
    fn a_listener_that_stops_reading_is_dropped_while_another_keeps_receiving() {
        rt().block_on(async {
            let (tx, _) = broadcast::channel(4);
            let mut slow_rx = tx.subscribe();
            let mut fast_rx = tx.subscribe();
            // The slow client's socket holds less than one line and is never read.
            let (slow_srv, _slow_cli) = tokio::io::duplex(16);
            let (slow_r, slow_w) = tokio::io::split(slow_srv);
            let (fast_srv, fast_cli) = tokio::io::duplex(1 << 16);
            let (fast_r, fast_w) = tokio::io::split(fast_srv);
            let slow = tokio::spawn(async move {
                pump(&mut slow_rx, slow_r, slow_w, Duration::from_millis(200)).await
            });
            let fast = tokio::spawn(async move {
                pump(&mut fast_rx, fast_r, fast_w, Duration::from_millis(200)).await
            });
            let mut lines = tokio::io::BufReader::new(fast_cli);
            for i in 0..10 {
                tx.send(rec(i)).ok();
                let mut line = String::new();
                tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line)
                    .await
                    .ok();
                let got: EventRecord = serde_json::from_str(&line).unwrap();
                assert_eq!(got, rec(i), "the reading listener missed an event");
            }
            let end = tokio::time::timeout(Duration::from_secs(2), slow).await;
            assert!(
                matches!(end, Ok(Ok(End::Stalled | End::Lagged(_)))),
                "the slow listener was not dropped: {end:?}"
            );
            assert!(!fast.is_finished(), "the reading listener was dropped");
            drop(lines);
            let end = tokio::time::timeout(Duration::from_secs(2), fast).await;
            assert!(matches!(end, Ok(Ok(End::ClientGone))), "{end:?}");
        });
    }

    #[test]
    fn a_listener_that_falls_a_whole_queue_behind_is_dropped_as_lagged() {
        rt().block_on(async {
            let (tx, mut rx) = broadcast::channel(4);
            for i in 0..10 {
                tx.send(rec(i)).ok();
            }
            let (srv, _cli) = tokio::io::duplex(1 << 16);
            let (r, w) = tokio::io::split(srv);
            let end = pump(&mut rx, r, w, Duration::from_millis(200)).await;
            assert_eq!(end, End::Lagged(6));
        });
    }
}
