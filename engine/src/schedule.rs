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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

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

type Heap = BinaryHeap<Reverse<(Instant, Key)>>;

#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// By `due`.
    due: Heap,
    /// By `early`.
    early: Heap,
    at: Vec<Option<Window>>,
    tunnels: usize,
    ready: VecDeque<u16>,
    in_ready: Vec<bool>,
}

impl Schedule {
    pub(crate) fn new(tunnels: usize, connections: usize) -> Self {
        let keys = tunnels + connections;
        Schedule {
            due: BinaryHeap::with_capacity(4 * keys + 16),
            early: BinaryHeap::with_capacity(4 * keys + 16),
            at: vec![None; keys],
            tunnels,
            ready: VecDeque::with_capacity(tunnels),
            in_ready: vec![false; tunnels],
        }
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
        let Some(slot) = self.at.get_mut(key as usize) else {
            return;
        };
        if *slot == at {
            return;
        }
        *slot = at;
        if let Some(w) = at {
            if self.due.len().max(self.early.len()) >= 4 * self.at.len() + 16 {
                self.rebuild();
            }
            self.due.push(Reverse((w.due, key)));
            self.early.push(Reverse((w.early, key)));
        }
        self.clean();
    }

    fn rebuild(&mut self) {
        self.due.clear();
        self.early.clear();
        for (k, at) in self.at.iter().enumerate() {
            if let Some(w) = at {
                self.due.push(Reverse((w.due, k as Key)));
                self.early.push(Reverse((w.early, k as Key)));
            }
        }
    }

    /// Drops stale entries from the tops, so that `next` and `pop_due` are exact.
    fn clean(&mut self) {
        while let Some(Reverse((t, k))) = self.due.peek().copied() {
            if self.at[k as usize].is_some_and(|w| w.due == t) {
                break;
            }
            self.due.pop();
        }
        while let Some(Reverse((t, k))) = self.early.peek().copied() {
            if self.at[k as usize].is_some_and(|w| w.early == t) {
                break;
            }
            self.early.pop();
        }
    }

    /// The earliest `due`: when the caller must act.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes a key whose window has opened at `now` (its timer is cleared), if any: the earliest
    /// `early` first.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Key> {
        let Reverse((t, k)) = self.early.peek().copied()?;
        if t > now {
            return None;
        }
        self.early.pop();
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
        let mut s = Schedule::new(3, 1);
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
        let mut s = Schedule::new(2, 0);
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
        let mut s = Schedule::new(3, 0);
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
    fn ready_tunnels_are_served_in_turn_once_each() {
        let mut s = Schedule::new(3, 0);
        s.mark_ready(2);
        s.mark_ready(0);
        s.mark_ready(2);
        assert_eq!(s.pop_ready(), Some(2));
        assert_eq!(s.pop_ready(), Some(0));
        assert_eq!(s.pop_ready(), None);
    }
}
