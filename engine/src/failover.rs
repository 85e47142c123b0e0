//! The failover selector of one connection (docs/protocol.md).
//!
//! Policy, in order:
//! 1. **Pinned** (`tandem failover --to` / `tandem failover` with no target): the pinned tunnel is
//!    active while it is Up. If it goes Down the pin is dropped and the rules below apply again.
//! 2. **Active-standby**: the active tunnel is the Up tunnel with the lowest priority number
//!    (ties: config order). When the active tunnel goes Down (or admin-down), traffic moves at
//!    once to the best Up tunnel — no hold-down, since every tunnel is hot (keepalives and SAs).
//! 3. **Failback**: while the active tunnel is Up, traffic moves only to a *strictly better*
//!    tunnel that has been Up continuously for `failback` (`None` = never fail back). A tunnel
//!    that flaps restarts its stability clock each time it comes Up, so a flapping primary
//!    causes at most one switch (away from it) per hold-down.
//! 4. **Active-active**: flows are spread by rendezvous (highest-random-weight) hashing of the
//!    flow hash over the Up tunnels: a tunnel going Down moves only its own flows, and when it
//!    comes back exactly those flows return. The reported "active" tunnel is the one rule 2 picks.
//!
//! The selector sees only signals (a tunnel went Up / Down at `now`) and answers with switches;
//! it never looks at packets or keys. Receive is accepted on every tunnel regardless of the
//! choice here, so the two gateways may choose independently and a switch loses nothing.

use std::time::{Duration, Instant};

use crate::config::Mode;

/// Why the active tunnel changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchReason {
    /// First Up tunnel, or one came Up while none was.
    Initial,
    /// The active tunnel went Down or admin-down.
    ActiveDown,
    /// A better tunnel was stable for the failback hold-down.
    Failback,
    /// An operator's planned switch (`tandem failover`).
    Planned,
    /// The pin was lifted (`tandem failover --auto`) and the normal rules chose another tunnel.
    Unpinned,
}

impl SwitchReason {
    /// Log/metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::Initial => "initial",
            SwitchReason::ActiveDown => "active_down",
            SwitchReason::Failback => "failback",
            SwitchReason::Planned => "planned",
            SwitchReason::Unpinned => "unpinned",
        }
    }
}

/// A change of the active tunnel (indices are members of this connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// Previous active member.
    pub from: Option<usize>,
    /// New active member.
    pub to: Option<usize>,
    /// Why.
    pub reason: SwitchReason,
}

#[derive(Debug, Clone)]
struct Member {
    priority: u32,
    up_since: Option<Instant>,
}

/// Errors of planned switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinError {
    /// The requested tunnel is not Up.
    NotUp,
    /// No other tunnel is Up.
    NoOtherUp,
}

/// The selector of one connection.
#[derive(Debug, Clone)]
pub struct Selector {
    mode: Mode,
    failback: Option<Duration>,
    members: Vec<Member>,
    active: Option<usize>,
    pinned: Option<usize>,
}

/// splitmix64 finaliser: a cheap, well-mixed 64-bit permutation for rendezvous weights.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Selector {
    /// A selector over tunnels with these priorities (config order), all not Up.
    #[must_use]
    pub fn new(
        mode: Mode,
        failback: Option<Duration>,
        priorities: impl IntoIterator<Item = u32>,
    ) -> Self {
        Selector {
            mode,
            failback,
            members: priorities
                .into_iter()
                .map(|priority| Member {
                    priority,
                    up_since: None,
                })
                .collect(),
            active: None,
            pinned: None,
        }
    }

    /// The active member.
    #[must_use]
    pub fn active(&self) -> Option<usize> {
        self.active
    }

    /// The pinned member.
    #[must_use]
    pub fn pinned(&self) -> Option<usize> {
        self.pinned
    }

    /// The mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn is_up(&self, i: usize) -> bool {
        self.members[i].up_since.is_some()
    }

    fn better(&self, a: usize, b: usize) -> bool {
        (self.members[a].priority, a) < (self.members[b].priority, b)
    }

    fn best_up(&self, except: Option<usize>) -> Option<usize> {
        (0..self.members.len())
            .filter(|&i| self.is_up(i) && Some(i) != except)
            .min_by_key(|&i| (self.members[i].priority, i))
    }

    /// Member `i` went Up (`Some(now)`) or Down/admin-down (`None`); returns the switch, if any.
    pub fn set_up(&mut self, i: usize, up: bool, now: Instant) -> Option<Switch> {
        self.mark(i, up, now);
        self.evaluate(now)
    }

    /// Applies the policy at `now`.
    pub fn evaluate(&mut self, now: Instant) -> Option<Switch> {
        if let Some(p) = self.pinned
            && !self.is_up(p)
        {
            self.pinned = None;
        }
        let (target, reason) = match (self.pinned, self.active) {
            (Some(p), _) => (Some(p), SwitchReason::Planned),
            (None, Some(a)) if self.is_up(a) => {
                let stable = |i: usize| match (self.failback, self.members[i].up_since) {
                    (Some(hold), Some(since)) => now.saturating_duration_since(since) >= hold,
                    _ => false,
                };
                let candidate = (0..self.members.len())
                    .filter(|&i| self.is_up(i) && self.better(i, a) && stable(i))
                    .min_by_key(|&i| (self.members[i].priority, i));
                match candidate {
                    Some(c) => (Some(c), SwitchReason::Failback),
                    None => (Some(a), SwitchReason::Failback),
                }
            }
            (None, Some(_)) => (self.best_up(None), SwitchReason::ActiveDown),
            (None, None) => (self.best_up(None), SwitchReason::Initial),
        };
        self.switch_to(target, reason)
    }

    fn switch_to(&mut self, target: Option<usize>, reason: SwitchReason) -> Option<Switch> {
        if target == self.active {
            return None;
        }
        let from = self.active;
        self.active = target;
        Some(Switch {
            from,
            to: target,
            reason,
        })
    }

    /// The next instant at which `evaluate` may fail back (a better tunnel becomes stable).
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let (hold, a) = (self.failback?, self.active?);
        if self.pinned.is_some() {
            return None;
        }
        (0..self.members.len())
            .filter(|&i| self.better(i, a))
            .filter_map(|i| self.members[i].up_since?.checked_add(hold))
            .min()
    }

    /// Records member `i`'s state without applying the policy (reload re-seeding).
    pub fn mark(&mut self, i: usize, up: bool, now: Instant) {
        let m = &mut self.members[i];
        match (up, m.up_since) {
            (true, None) => m.up_since = Some(now),
            (false, Some(_)) => m.up_since = None,
            _ => {}
        }
    }

    /// After a reload: keep `active` (and the pin) if that member is Up, then apply the policy.
    pub fn restore(&mut self, active: Option<usize>, pinned: bool, now: Instant) -> Option<Switch> {
        if let Some(a) = active.filter(|&a| self.is_up(a)) {
            self.active = Some(a);
            if pinned {
                self.pinned = Some(a);
            }
            return self.evaluate(now);
        }
        self.evaluate(now)
    }

    /// Pins member `i` (it must be Up) and makes it active.
    pub fn pin(&mut self, i: usize, now: Instant) -> Result<Option<Switch>, PinError> {
        if !self.is_up(i) {
            return Err(PinError::NotUp);
        }
        self.pinned = Some(i);
        Ok(self.evaluate(now))
    }

    /// Pins the best Up member other than the active one.
    pub fn pin_best_other(&mut self, now: Instant) -> Result<Option<Switch>, PinError> {
        let i = self.best_up(self.active).ok_or(PinError::NoOtherUp)?;
        self.pin(i, now)
    }

    /// Lifts the pin; the normal rules apply (with the usual failback hold-down).
    pub fn unpin(&mut self, now: Instant) -> Option<Switch> {
        self.pinned = None;
        let s = self.evaluate(now);
        s.map(|s| Switch {
            reason: SwitchReason::Unpinned,
            ..s
        })
    }

    /// The member a flow with this hash is sent on, or `None` if no tunnel is Up.
    #[must_use]
    pub fn pick(&self, flow_hash: u64) -> Option<usize> {
        match (self.mode, self.pinned) {
            (Mode::ActiveStandby, _) | (Mode::ActiveActive, Some(_)) => self.active,
            (Mode::ActiveActive, None) => (0..self.members.len())
                .filter(|&i| self.is_up(i))
                .max_by_key(|&i| mix(flow_hash ^ mix(i as u64 + 1))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sel(failback: Option<Duration>) -> (Selector, Instant) {
        (
            Selector::new(Mode::ActiveStandby, failback, [1, 2]),
            Instant::now(),
        )
    }

    #[test]
    fn the_lowest_priority_up_tunnel_becomes_active_and_a_down_active_moves_at_once() {
        let (mut s, t0) = sel(Some(ms(10_000)));
        assert_eq!(s.set_up(1, true, t0).unwrap().to, Some(1));
        // Primary comes up later: not stable yet, no switch.
        assert_eq!(s.set_up(0, true, t0 + ms(5)), None);
        let sw = s.set_up(1, false, t0 + ms(100)).unwrap();
        assert_eq!(
            (sw.from, sw.to, sw.reason),
            (Some(1), Some(0), SwitchReason::ActiveDown)
        );
        let sw = s.set_up(0, false, t0 + ms(200)).unwrap();
        assert_eq!(sw.to, None);
    }

    #[test]
    fn failback_waits_for_the_hold_down_and_never_means_never() {
        let (mut s, t0) = sel(Some(ms(10_000)));
        s.set_up(0, true, t0);
        s.set_up(1, true, t0);
        assert_eq!(s.active(), Some(0));
        s.set_up(0, false, t0 + ms(1000));
        assert_eq!(s.active(), Some(1));
        assert_eq!(s.set_up(0, true, t0 + ms(2000)), None);
        assert_eq!(s.next_deadline(), Some(t0 + ms(12_000)));
        assert_eq!(s.evaluate(t0 + ms(11_999)), None);
        let sw = s.evaluate(t0 + ms(12_000)).unwrap();
        assert_eq!((sw.to, sw.reason), (Some(0), SwitchReason::Failback));

        let (mut s, t0) = sel(None);
        s.set_up(1, true, t0);
        s.set_up(0, true, t0 + ms(1));
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.evaluate(t0 + ms(3_600_000)), None);
        assert_eq!(s.active(), Some(1));
    }

    #[test]
    fn a_flapping_primary_restarts_its_stability_clock() {
        let (mut s, t0) = sel(Some(ms(1000)));
        s.set_up(0, true, t0);
        s.set_up(1, true, t0);
        let mut switches = 0;
        for k in 0..20u64 {
            let up = k % 2 == 1;
            if s.set_up(0, up, t0 + ms(200 * (k + 1))).is_some() {
                switches += 1;
            }
        }
        assert_eq!(switches, 1, "only the move away from the primary");
    }

    #[test]
    fn a_pin_holds_until_auto_or_until_the_pinned_tunnel_goes_down() {
        let (mut s, t0) = sel(Some(ms(10)));
        s.set_up(0, true, t0);
        s.set_up(1, true, t0);
        assert_eq!(s.pin_best_other(t0).unwrap().unwrap().to, Some(1));
        assert_eq!(s.evaluate(t0 + ms(100_000)), None, "pinned: no failback");
        let sw = s.unpin(t0 + ms(100_001)).unwrap();
        assert_eq!((sw.to, sw.reason), (Some(0), SwitchReason::Unpinned));
        s.pin(1, t0 + ms(100_002)).unwrap();
        let sw = s.set_up(1, false, t0 + ms(100_003)).unwrap();
        assert_eq!((sw.to, s.pinned()), (Some(0), None));
        assert_eq!(s.pin(1, t0), Err(PinError::NotUp));
    }

    #[test]
    fn active_active_moves_only_the_dead_tunnels_flows() {
        let mut s = Selector::new(Mode::ActiveActive, Some(ms(10)), [1, 1, 1]);
        let t0 = Instant::now();
        for i in 0..3 {
            s.set_up(i, true, t0);
        }
        let before: Vec<_> = (0..3000u64).map(|f| s.pick(mix(f)).unwrap()).collect();
        for i in 0..3 {
            let n = before.iter().filter(|&&t| t == i).count();
            assert!((800..1200).contains(&n), "tunnel {i} got {n} of 3000 flows");
        }
        s.set_up(1, false, t0 + ms(1));
        for (f, &b) in before.iter().enumerate() {
            let now = s.pick(mix(f as u64)).unwrap();
            if b == 1 {
                assert_ne!(now, 1);
            } else {
                assert_eq!(now, b, "flow {f} moved although its tunnel is alive");
            }
        }
    }
}
