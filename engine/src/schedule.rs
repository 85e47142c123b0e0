//! The gateway's timer and transmit bookkeeping, so that each event costs O(log n) in the number
//! of tunnels and connections, not a scan of all of them:
//! - each key (a tunnel, or a connection's failback) has a [`Window`]: the instant by which it
//!   must be handled (`due`) and the earliest instant it may be (`early`; a keepalive may go a
//!   little early, docs/protocol.md "Timers"). Two min-heaps hold them, one by `due` (what the
//!   caller must wake for: [`Schedule::next`]) and one by `early` (what a wake-up serves:
//!   [`Schedule::pop_due`]), so one wake-up serves every owner whose window has opened and
//!   timers that fall close together cost one wake-up, not one each. The current window of each
//!   key is kept beside the heaps; an entry that no longer matches it is stale and skipped (lazy
//!   deletion), and a heap is rebuilt when stale entries pile up;
//! - a FIFO of the tunnels that may have a datagram to send (`poll_transmit` serves them in
//!   turn and forgets a tunnel once it has nothing left).
//!
//! Capacity is reserved for every key at construction, so steady operation does not allocate.
//! A heap entry is one integer, the instant (nanoseconds since the schedule's base) above the
//! key: 16 bytes and one comparison, where `(Instant, Key)` took 24 and three (a head-end with
//! 1000 tunnels pops ~20 000 entries a second; the heap was the largest item of its own code in
//! a profile).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// A timer owner: tunnel `i` is key `i`, connection `c` is key `tunnels + c`.
pub(crate) type Key = u32;

/// When an owner wants to be handled: not after `due`, and not before `early` (<= `due`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) early: Instant,
    pub(crate) due: Instant,
}

impl Window {
    /// A deadline with no slack.
    pub(crate) fn exact(at: Instant) -> Self {
        Window { early: at, due: at }
    }
}

/// An instant (nanoseconds since the base) in the high 96 bits, a key in the low 32: ordered
/// by time, then key, as `(Instant, Key)` was.
type Entry = u128;
type Heap = BinaryHeap<Reverse<Entry>>;

/// A key's window as its two heap entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed {
    early: Entry,
    due: Entry,
}

#[derive(Debug)]
pub(crate) struct Schedule {
    /// Instants are kept as nanoseconds since this one (the engine's epoch: no deadline is
    /// earlier; one that were would count as the base itself, and be due at once).
    base: Instant,
    /// By `due`.
    due: Heap,
    /// By `early`.
    early: Heap,
    at: Vec<Option<Packed>>,
    tunnels: usize,
    ready: VecDeque<u16>,
    in_ready: Vec<bool>,
}

fn key_of(e: Entry) -> Key {
    e as Key
}

impl Schedule {
    pub(crate) fn new(tunnels: usize, connections: usize, base: Instant) -> Self {
        let keys = tunnels + connections;
        Schedule {
            base,
            due: BinaryHeap::with_capacity(4 * keys + 16),
            early: BinaryHeap::with_capacity(4 * keys + 16),
            at: vec![None; keys],
            tunnels,
            ready: VecDeque::with_capacity(tunnels),
            in_ready: vec![false; tunnels],
        }
    }

    fn entry(&self, t: Instant, key: Key) -> Entry {
        (t.saturating_duration_since(self.base).as_nanos() << 32) | Entry::from(key)
    }

    fn instant(&self, e: Entry) -> Instant {
        let nanos = u64::try_from(e >> 32).unwrap_or(u64::MAX);
        self.base
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(self.base)
    }

    pub(crate) fn tunnel_key(i: usize) -> Key {
        i as Key
    }

    pub(crate) fn conn_key(&self, c: usize) -> Key {
        (self.tunnels + c) as Key
    }

    /// The tunnel a key names, or the connection (`Err`).
    pub(crate) fn owner(&self, key: Key) -> Result<usize, usize> {
        let k = key as usize;
        if k < self.tunnels {
            Ok(k)
        } else {
            Err(k - self.tunnels)
        }
    }

    /// Sets `key`'s window (None: no timer).
    pub(crate) fn set(&mut self, key: Key, at: Option<Window>) {
        let packed = at.map(|w| Packed {
            early: self.entry(w.early, key),
            due: self.entry(w.due, key),
        });
        let Some(slot) = self.at.get_mut(key as usize) else {
            return;
        };
        if *slot == packed {
            return;
        }
        *slot = packed;
        if let Some(p) = packed {
            if self.due.len().max(self.early.len()) >= 4 * self.at.len() + 16 {
                self.rebuild();
            }
            self.due.push(Reverse(p.due));
            self.early.push(Reverse(p.early));
        }
        self.clean();
    }

    fn rebuild(&mut self) {
        self.due.clear();
        self.early.clear();
        for p in self.at.iter().flatten() {
            self.due.push(Reverse(p.due));
            self.early.push(Reverse(p.early));
        }
    }

    /// Drops stale entries from the tops, so that `next` and `pop_due` are exact.
    fn clean(&mut self) {
        while let Some(&Reverse(e)) = self.due.peek() {
            if self.at[key_of(e) as usize].is_some_and(|p| p.due == e) {
                break;
            }
            self.due.pop();
        }
        while let Some(&Reverse(e)) = self.early.peek() {
            if self.at[key_of(e) as usize].is_some_and(|p| p.early == e) {
                break;
            }
            self.early.pop();
        }
    }

    /// The earliest `due`: when the caller must act.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.due.peek().map(|&Reverse(e)| self.instant(e))
    }

    /// Takes a key whose window has opened at `now` (its timer is cleared), if any: the earliest
    /// `early` first.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Key> {
        let &Reverse(e) = self.early.peek()?;
        // Every entry at `now` or before sorts below this one, whatever its key.
        if e > self.entry(now, Key::MAX) {
            return None;
        }
        self.early.pop();
        let k = key_of(e);
        self.at[k as usize] = None;
        self.clean();
        Some(k)
    }

    /// Tunnel `i` may have something to send.
    pub(crate) fn mark_ready(&mut self, i: usize) {
        if let Some(flag) = self.in_ready.get_mut(i)
            && !*flag
        {
            *flag = true;
            self.ready.push_back(i as u16);
        }
    }

    /// The next tunnel that may have something to send.
    pub(crate) fn pop_ready(&mut self) -> Option<usize> {
        let i = usize::from(self.ready.pop_front()?);
        self.in_ready[i] = false;
        Some(i)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a base instant for the tests; the engine itself takes time as input
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_current_deadline_comes_first_and_stale_ones_never() {
        let t0 = Instant::now();
        let at = |ms| Some(Window::exact(t0 + Duration::from_millis(ms)));
        let mut s = Schedule::new(3, 1, t0);
        s.set(0, at(30));
        s.set(1, at(10));
        s.set(2, at(20));
        s.set(s.conn_key(0), at(25));
        let due = |ms| Some(t0 + Duration::from_millis(ms));
        assert_eq!(s.next(), due(10));
        s.set(1, at(40)); // moved later: the old entry is stale
        assert_eq!(s.next(), due(20));
        s.set(2, None);
        assert_eq!(s.next(), due(25));
        let now = t0 + Duration::from_millis(35);
        let mut due = Vec::new();
        while let Some(k) = s.pop_due(now) {
            due.push(s.owner(k));
        }
        assert_eq!(due, [Err(0), Ok(0)]);
        assert_eq!(s.next(), Some(t0 + Duration::from_millis(40)));
    }

    #[test]
    fn many_moves_of_one_deadline_keep_the_heap_bounded() {
        let t0 = Instant::now();
        let mut s = Schedule::new(2, 0, t0);
        for i in 0..10_000u64 {
            s.set(
                0,
                Some(Window::exact(t0 + Duration::from_millis(1_000_000 - i))),
            );
        }
        assert!(s.due.len() <= 4 * 2 + 16 + 1, "{}", s.due.len());
        assert!(s.early.len() <= 4 * 2 + 16 + 1, "{}", s.early.len());
        assert_eq!(
            s.next(),
            Some(t0 + Duration::from_millis(1_000_000 - 9_999))
        );
    }

    #[test]
    fn a_wake_up_for_one_deadline_serves_every_window_that_has_opened() {
        let t0 = Instant::now();
        let ms = |ms| t0 + Duration::from_millis(ms);
        let mut s = Schedule::new(3, 0, t0);
        s.set(
            0,
            Some(Window {
                early: ms(8),
                due: ms(10),
            }),
        );
        s.set(
            1,
            Some(Window {
                early: ms(9),
                due: ms(12),
            }),
        );
        s.set(
            2,
            Some(Window {
                early: ms(11),
                due: ms(13),
            }),
        );
        // One wake-up, at the first due: the two open windows, not the third.
        assert_eq!(s.next(), Some(ms(10)));
        let mut served = Vec::new();
        while let Some(k) = s.pop_due(ms(10)) {
            served.push(k);
        }
        assert_eq!(served, [0, 1]);
        assert_eq!(s.next(), Some(ms(13)));
        assert_eq!(s.pop_due(ms(10)), None);
    }

    #[test]
    fn deadlines_a_nanosecond_apart_keep_their_order_and_their_exact_instant() {
        let t0 = Instant::now();
        let ns = |n| t0 + Duration::from_nanos(n);
        let mut s = Schedule::new(4, 0, t0);
        // Keys in the opposite order of their deadlines: time sorts first, then the key.
        s.set(0, Some(Window::exact(ns(3_000_000_002))));
        s.set(1, Some(Window::exact(ns(3_000_000_001))));
        s.set(3, Some(Window::exact(ns(3_000_000_000))));
        s.set(2, Some(Window::exact(ns(3_000_000_000))));
        assert_eq!(s.next(), Some(ns(3_000_000_000)));
        // Not one nanosecond early.
        assert_eq!(s.pop_due(ns(2_999_999_999)), None);
        let mut order = Vec::new();
        while let Some(k) = s.pop_due(ns(3_000_000_001)) {
            order.push(k);
        }
        assert_eq!(order, [2, 3, 1]);
        assert_eq!(s.next(), Some(ns(3_000_000_002)));
        // A deadline before the base (none should be) is due at once rather than lost.
        s.set(3, Some(Window::exact(t0 - Duration::from_millis(5))));
        assert_eq!(s.next(), Some(t0));
        assert_eq!(s.pop_due(t0), Some(3));
    }

    #[test]
    fn ready_tunnels_are_served_in_turn_once_each() {
        let mut s = Schedule::new(3, 0, Instant::now());
        s.mark_ready(2);
        s.mark_ready(0);
        s.mark_ready(2);
        assert_eq!(s.pop_ready(), Some(2));
        assert_eq!(s.pop_ready(), Some(0));
        assert_eq!(s.pop_ready(), None);
    }
}
