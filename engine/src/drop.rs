//! Drop reasons: a `Copy` enum that is also the metric label (`tandem_dropped_packets_total{reason}`),
//! and the plain-`u64` counters kept per reason (an array indexed by the enum: no map on the hot path).

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Sequence number already seen or too old (anti-replay window).
    Replay,
    /// AEAD tag did not verify, or a handshake message failed authentication.
    Auth,
    /// Too short, bad header, bad padding, unknown next header.
    Malformed,
    /// Inner source/destination outside the connection's traffic selectors.
    Selector,
    /// No connection's `remote_subnets` covers the destination.
    NoRoute,
    /// The connection has no Up tunnel (or no usable SA / peer endpoint) to send on.
    NoTunnel,
    /// ESP packet with an SPI we hold no inbound SA for.
    UnknownSpi,
    /// Received on a tunnel that is silenced for a drill or admin-down.
    Silenced,
    /// Larger than the inner MTU (answered with ICMP when DF is set / IPv6).
    TooBig,
    /// The outbound SA reached its hard limit and no new SA is there yet.
    SaExpired,
    /// A handshake message that was valid but stale (replayed initiation, unexpected response).
    Handshake,
    /// A sealed datagram the kernel refused because the tunnel socket's send buffer was full
    /// (`EAGAIN`): the path (a neighbour that never resolves, a queue that does not drain) is
    /// not taking packets, and the data plane never waits for it. Counted by the daemon, which
    /// owns the sockets ([`crate::Engine::count_drops`]).
    SendQueueFull,
    /// An IKE_SA_INIT request that would have made a new responder IKE SA while such requests
    /// pile up: answered with a COOKIE (RFC 7296 §2.6) and nothing kept, no DH done. A peer
    /// that can receive at its address retries with the cookie and gets in.
    IkeCookie,
    /// An IKE_SA_INIT request refused outright: even with a valid cookie, the tunnel already
    /// made as many responder IKE SAs as it allows per second.
    IkeHalfOpen,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 14] = [
        DropReason::Replay,
        DropReason::Auth,
        DropReason::Malformed,
        DropReason::Selector,
        DropReason::NoRoute,
        DropReason::NoTunnel,
        DropReason::UnknownSpi,
        DropReason::Silenced,
        DropReason::TooBig,
        DropReason::SaExpired,
        DropReason::Handshake,
        DropReason::SendQueueFull,
        DropReason::IkeCookie,
        DropReason::IkeHalfOpen,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Replay => "replay",
            DropReason::Auth => "auth",
            DropReason::Malformed => "malformed",
            DropReason::Selector => "selector",
            DropReason::NoRoute => "no_route",
            DropReason::NoTunnel => "no_tunnel",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::Silenced => "silenced",
            DropReason::TooBig => "too_big",
            DropReason::SaExpired => "sa_expired",
            DropReason::Handshake => "handshake",
            DropReason::SendQueueFull => "send_queue_full",
            DropReason::IkeCookie => "ike_cookie",
            DropReason::IkeHalfOpen => "ike_half_open",
        }
    }
}

/// Drops per reason, plain counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::COUNT],
}

impl DropCounters {
    /// Count one drop.
    pub fn add(&mut self, reason: DropReason) {
        self.counts[reason as usize] += 1;
    }
    /// Count `n` drops.
    pub fn add_n(&mut self, reason: DropReason, n: u64) {
        self.counts[reason as usize] += n;
    }
    /// Drops for one reason.
    #[must_use]
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }
    /// `(reason, count)` for every reason (zero counts included).
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
    /// Sum over all reasons.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_label_and_its_own_counter() {
        let mut c = DropCounters::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            for _ in 0..=i {
                c.add(*r);
            }
        }
        let labels: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(c.get(*r), i as u64 + 1);
        }
    }
}
