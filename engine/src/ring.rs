//! Bounded bookkeeping without allocation after construction: a drop-oldest queue and a
//! per-second budget.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tandem_crypto::handshake::COOKIE_REPLY_LEN;

/// A fixed-capacity FIFO (no allocation after construction); when full, a push drops the oldest
/// item. The one queue type of the engine (a tunnel's cookie replies and echoes, a shared port's
/// cookie replies).
#[derive(Debug, Clone)]
pub(crate) struct Ring<T: Copy + Default, const N: usize> {
    items: [T; N],
    head: usize,
    len: usize,
}

impl<T: Copy + Default, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Ring {
            items: [T::default(); N],
            head: 0,
            len: 0,
        }
    }
}

impl<T: Copy + Default, const N: usize> Ring<T, N> {
    pub(crate) fn push(&mut self, v: T) {
        if self.len == N {
            self.head = (self.head + 1) % N;
            self.len -= 1;
        }
        self.items[(self.head + self.len) % N] = v;
        self.len += 1;
    }
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let v = self.items[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(v)
    }
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

/// A cookie reply waiting to be sent to the source of the initiation that caused it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CookieOut {
    pub(crate) to: SocketAddr,
    pub(crate) bytes: [u8; COOKIE_REPLY_LEN],
}

impl Default for CookieOut {
    fn default() -> Self {
        CookieOut {
            to: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            bytes: [0; COOKIE_REPLY_LEN],
        }
    }
}

/// A per-second budget.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RateWindow {
    start: Option<Instant>,
    count: u32,
}

impl RateWindow {
    /// Counts one event at `now`; returns the number counted in the current one-second window.
    pub(crate) fn count(&mut self, now: Instant) -> u32 {
        match self.start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                self.count = self.count.saturating_add(1);
            }
            _ => {
                *self = RateWindow {
                    start: Some(now),
                    count: 1,
                }
            }
        }
        self.count
    }
}
