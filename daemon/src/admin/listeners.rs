//! Limits for the two local listeners, the control socket and the metrics endpoint, so that no
//! client (nor a crowd of them) can take the daemon's file descriptors or its control-plane
//! thread:
//! - each listener serves at most [`MAX_CONNECTIONS`] connections at once; at the cap it stops
//!   calling `accept` until one of them ends, so new clients wait in the kernel's listen backlog;
//! - a client has [`REQUEST_TIMEOUT`] to send its request and [`REPLY_TIMEOUT`] to take the reply;
//! - a failed `accept` (EMFILE, ENFILE, ENOBUFS: the pending connection stays queued, so the
//!   listener stays readable) pauses that listener for [`ACCEPT_ERROR_PAUSE`] instead of retrying
//!   at once, and is logged at most once per [`ACCEPT_ERROR_LOG_EVERY`] with a count of the rest.
//!
//! The two listeners have separate caps: a flood of connections to the metrics port cannot keep
//! `tandem status`, `reload` or `failover` out. A `tandem events` listener holds its control-socket
//! slot for as long as it listens (it is a connection like any other), and at most half the slots
//! may be such listeners ([`super::events::MAX_EVENT_LISTENERS`]), so the other commands always
//! have room.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most connections one listener serves at once. At the cap the listener stops accepting until a
/// slot frees, rather than accepting and closing at once: a `tandem status` or a Prometheus
/// scrape that arrives during a burst then waits (at most about `backlog / MAX_CONNECTIONS *
/// REQUEST_TIMEOUT` behind idle clients) instead of failing. 32 is far more than an operator's
/// CLI and a scraper use, and keeps both listeners together (64 fds) far below the usual soft
/// `RLIMIT_NOFILE` of 1024 (systemd's default), so a reload can always open the config and key
/// files.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its whole request. Every client we know (the CLI,
/// Prometheus, curl) writes it at once on connect; an idle connection holds a slot no longer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a client may take to read the reply (a big hub's status is tens of KB: more than a
/// socket buffer, so a client that never reads would otherwise hold its slot for ever).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause of one listener after a failed `accept`. The error that matters, EMFILE, leaves the
/// connection queued, so retrying at once spins a core until a descriptor frees; 100 ms keeps the
/// retries at 10 per second and still serves the queued clients soon after a slot frees.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// At most one log line per listener per this period for failed `accept`s.
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// One listener's connection slots and its `accept` error state.
#[derive(Debug)]
pub struct Gate {
    /// `"control socket"` or `"metrics endpoint"`, for the log.
    name: &'static str,
    slots: Arc<Semaphore>,
    errors: AcceptErrors,
}

impl Gate {
    /// A gate of [`MAX_CONNECTIONS`] slots.
    pub fn new(name: &'static str) -> Self {
        Gate {
            name,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            errors: AcceptErrors::default(),
        }
    }

    /// Waits for a free slot; the connection holds the permit until it ends.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        match self.slots.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore lives in `self` and is never closed.
            Err(_) => unreachable!("the listener's semaphore is never closed"),
        }
    }

    /// After a failed `accept`: log (rate-limited) and pause the listener.
    pub async fn accept_failed(&mut self, error: &std::io::Error) {
        if let Some(suppressed) = self.errors.should_log(Instant::now()) {
            tracing::warn!(
                listener = self.name,
                %error,
                suppressed,
                pause_ms = ACCEPT_ERROR_PAUSE.as_millis() as u64,
                "accept failed; pausing this listener (EMFILE: raise LimitNOFILE= or find what holds the descriptors)"
            );
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

/// Rate limit for the log of failed `accept`s.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    /// Called on each failed `accept`: `Some(n)` when this one is to be logged, `n` being how many
    /// were not logged since the last line; `None` when it is to be counted only.
    pub fn should_log(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(at) if now.saturating_duration_since(at) < ACCEPT_ERROR_LOG_EVERY => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn accept_errors_are_logged_once_per_period_with_the_count_in_between() {
        let t0 = Instant::now();
        let mut e = AcceptErrors::default();
        assert_eq!(e.should_log(t0), Some(0));
        assert_eq!(e.should_log(t0 + ms(100)), None);
        assert_eq!(e.should_log(t0 + ms(200)), None);
        assert_eq!(e.should_log(t0 + ACCEPT_ERROR_LOG_EVERY - ms(1)), None);
        assert_eq!(e.should_log(t0 + ACCEPT_ERROR_LOG_EVERY), Some(3));
        assert_eq!(
            e.should_log(t0 + ACCEPT_ERROR_LOG_EVERY + ms(100)),
            None,
            "the period restarts at the last line"
        );
    }

    #[test]
    fn a_failed_accept_pauses_the_listener() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build();
        let Ok(rt) = rt else {
            panic!("cannot build a test runtime");
        };
        rt.block_on(async {
            let mut gate = Gate::new("test");
            let err = std::io::Error::from_raw_os_error(libc::EMFILE);
            let start = Instant::now();
            for _ in 0..10 {
                gate.accept_failed(&err).await;
            }
            let took = start.elapsed();
            assert!(
                took >= ACCEPT_ERROR_PAUSE * 10,
                "10 failed accepts took only {took:?}"
            );
        });
    }

    #[test]
    fn a_gate_hands_out_at_most_max_connections_slots() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build();
        let Ok(rt) = rt else {
            panic!("cannot build a test runtime");
        };
        rt.block_on(async {
            let gate = Gate::new("test");
            let mut held = Vec::new();
            for _ in 0..MAX_CONNECTIONS {
                held.push(gate.slot().await);
            }
            let over = tokio::time::timeout(ms(50), gate.slot()).await;
            assert!(over.is_err(), "a slot beyond the cap was handed out");
            held.pop();
            let freed = tokio::time::timeout(ms(50), gate.slot()).await;
            assert!(freed.is_ok(), "a freed slot was not handed out");
        });
    }
}
