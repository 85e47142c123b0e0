//! Local ports shared by many tunnels: a head-end serves every branch on one UDP port (as an
//! IPsec responder does on 4500), so a datagram that arrives there must be attributed to its
//! tunnel without ambiguity and without a scan for data packets:
//! - ESP by its SPI: SPIs are unique per gateway (the gateway's SPI table, O(1));
//! - a handshake initiation by the tunnel whose PSK-bound prologue opens its encrypted static
//!   key: `mac1`, the cookie check and the one DH (`es`) are shared, then each candidate costs a
//!   hash and a 48-byte AEAD, no DH — tunnels whose peer was last seen at the source are tried
//!   first, so a rekey from a known peer finds its tunnel at once;
//! - a handshake response or cookie reply by the tunnels whose initiation in flight went to the
//!   datagram's source;
//! - on a port of IKEv2 tunnels, an IKE message by the tunnel whose peer is its source.
//!
//! The cookie mechanism works per port: past a load threshold that grows with the number of
//! tunnels on the port, an initiation without a valid `mac2` for its source gets a cookie reply
//! before any DH, whichever tunnel it is for.

use std::net::SocketAddr;
use std::time::Instant;

use tandem_crypto::handshake::CookieJar;

use crate::ring::{CookieOut, RateWindow, Ring};

use crate::types::TunnelId;

/// Tuning: initiations per second a shared port handles without demanding cookies: the
/// per-tunnel threshold of an exclusive port (50) plus one per tunnel on it (a thousand branches
/// that all restart at once get cookies, then get in on their retry).
pub(crate) fn under_load_threshold(members: usize) -> u32 {
    50 + u32::try_from(members).unwrap_or(u32::MAX)
}

/// Cookie replies a shared port holds between two `poll_transmit` drains (one receive batch).
pub(crate) const PORT_COOKIE_QUEUE: usize = 128;

/// One local address:port shared by the tunnels in `members` (one socket in the daemon).
pub(crate) struct SharedPort {
    pub local: SocketAddr,
    pub members: Vec<TunnelId>,
    /// Its tunnels speak IKEv2 (the config keeps the protocols on separate local addresses):
    /// a datagram with the non-ESP marker is an IKE message for the tunnel of its source.
    pub ikev2: bool,
    /// The IKE port (500) of IKEv2 tunnels with a bare `local`: every datagram is an IKE
    /// message without a marker, for the tunnel of its source.
    pub plain_ike: bool,
    pub cookies: CookieJar,
    initiations: RateWindow,
    /// Cookie replies to send; bounded, oldest dropped first.
    pub cookie_out: Ring<CookieOut, PORT_COOKIE_QUEUE>,
}

impl std::fmt::Debug for SharedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPort")
            .field("local", &self.local)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl SharedPort {
    pub(crate) fn new(local: SocketAddr, cookies: CookieJar) -> Self {
        SharedPort {
            local,
            members: Vec::new(),
            ikev2: false,
            plain_ike: false,
            cookies,
            initiations: RateWindow::default(),
            cookie_out: Ring::default(),
        }
    }

    /// Counts an initiation at `now`; whether the port is under load.
    pub(crate) fn under_load(&mut self, now: Instant) -> bool {
        self.initiations.count(now) > under_load_threshold(self.members.len())
    }
}
