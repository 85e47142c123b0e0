//! The gateway's timer and transmit bookkeeping, so that each event costs O(log n) in the number
//! of tunnels and connections, not a scan of all of them:
//! - a min-heap of deadlines keyed by tunnel or connection (the selector's failback), with the
//!   current deadline of each key kept beside it; an entry whose deadline is no longer current is
//!   stale and skipped (lazy deletion), and the heap is rebuilt when stale entries pile up;
//! - a FIFO of the tunnels that may have a datagram to send (`poll_transmit` serves them in
//!   turn and forgets a tunnel once it has nothing left).
//!
//! Capacity is reserved for every key at construction, so steady operation does not allocate.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

/// A timer owner: tunnel `i` is key `i`, connection `c` is key `tunnels + c`.
pub(crate) type Key = u32;

#[derive(Debug, Default)]
pub(crate) struct Schedule {
    heap: BinaryHeap<Reverse<(Instant, Key)>>,
    at: Vec<Option<Instant>>,
    tunnels: usize,
    ready: VecDeque<u16>,
    in_ready: Vec<bool>,
}

impl Schedule {
    pub(crate) fn new(tunnels: usize, connections: usize) -> Self {
        let keys = tunnels + connections;
        Schedule {
            heap: BinaryHeap::with_capacity(4 * keys + 16),
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

    /// Sets `key`'s deadline (None: no timer).
    pub(crate) fn set(&mut self, key: Key, at: Option<Instant>) {
        let Some(slot) = self.at.get_mut(key as usize) else {
            return;
        };
        if *slot == at {
            return;
        }
        *slot = at;
        if let Some(t) = at {
            if self.heap.len() >= 4 * self.at.len() + 16 {
                self.rebuild();
            }
            self.heap.push(Reverse((t, key)));
        }
        self.clean();
    }

    fn rebuild(&mut self) {
        self.heap.clear();
        for (k, at) in self.at.iter().enumerate() {
            if let Some(t) = at {
                self.heap.push(Reverse((*t, k as Key)));
            }
        }
    }

    /// Drops stale entries from the top, so that `next` is exact.
    fn clean(&mut self) {
        while let Some(Reverse((t, k))) = self.heap.peek().copied() {
            if self.at[k as usize] == Some(t) {
                return;
            }
            self.heap.pop();
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the earliest key due at `now` (its deadline is cleared), if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Key> {
        let Reverse((t, k)) = self.heap.peek().copied()?;
        if t > now {
            return None;
        }
        self.heap.pop();
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
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let mut s = Schedule::new(3, 1);
        s.set(0, at(30));
        s.set(1, at(10));
        s.set(2, at(20));
        s.set(s.conn_key(0), at(25));
        assert_eq!(s.next(), at(10));
        s.set(1, at(40)); // moved later: the old entry is stale
        assert_eq!(s.next(), at(20));
        s.set(2, None);
        assert_eq!(s.next(), at(25));
        let now = t0 + Duration::from_millis(35);
        let mut due = Vec::new();
        while let Some(k) = s.pop_due(now) {
            due.push(s.owner(k));
        }
        assert_eq!(due, [Err(0), Ok(0)]);
        assert_eq!(s.next(), at(40));
    }

    #[test]
    fn many_moves_of_one_deadline_keep_the_heap_bounded() {
        let t0 = Instant::now();
        let mut s = Schedule::new(2, 0);
        for i in 0..10_000u64 {
            s.set(0, Some(t0 + Duration::from_millis(1_000_000 - i)));
        }
        assert!(s.heap.len() <= 4 * 2 + 16 + 1, "{}", s.heap.len());
        assert_eq!(
            s.next(),
            Some(t0 + Duration::from_millis(1_000_000 - 9_999))
        );
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
