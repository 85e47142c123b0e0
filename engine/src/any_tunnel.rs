//! The seam between the gateway and a tunnel's protocol: a tunnel speaks either tandem's own
//! protocol ([`NoiseTunnel`], docs/protocol.md) or IKEv2 ([`IkeTunnel`], docs/protocol.md
//! "IKEv2"), chosen per connection. Both offer the gateway the same vocabulary — state,
//! counters, timers, `seal_data` / `handle_esp` in place, `poll_transmit` — so the selector,
//! failover, drills, status and metrics do not know which one they drive. What only one protocol
//! has (the Noise responder that a shared port asks about, RTT echoes inside the SA) is
//! answered "none" by the other.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use tandem_crypto::handshake::InitiationPreamble;
use tandem_crypto::{Responder, StaticSecret};

use crate::config::{ConnectionConfig, TunnelConfig};
use crate::drop::DropReason;
use crate::ike_tunnel::{IkeTunnel, is_ikev2};
use crate::router::ConnectionId;
use crate::schedule::Window;
use crate::tunnel::{Ctx, NoiseTunnel, Received};
use crate::tunnel_core::TunnelCore;
use crate::types::{Silence, StateCause, TunnelId, TunnelState};

/// One tunnel of either protocol.
#[derive(Debug)]
pub(crate) enum Tunnel {
    /// tandem's Noise handshake and in-SA liveness.
    Noise(Box<NoiseTunnel>),
    /// IKEv2 and ESP.
    Ike(Box<IkeTunnel>),
}

/// `$t.$m($args)` on whichever protocol the tunnel speaks.
macro_rules! both {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            Tunnel::Noise($t) => $e,
            Tunnel::Ike($t) => $e,
        }
    };
}

/// A tunnel is its protocol-independent core (name, config, state, endpoint, counters, silence)
/// driven by one protocol: the gateway reads the core through the tunnel.
impl std::ops::Deref for Tunnel {
    type Target = TunnelCore;

    fn deref(&self) -> &TunnelCore {
        both!(self, t => t.core())
    }
}

impl std::ops::DerefMut for Tunnel {
    fn deref_mut(&mut self) -> &mut TunnelCore {
        both!(self, t => t.core_mut())
    }
}

impl Tunnel {
    pub fn new(
        id: TunnelId,
        conn: ConnectionId,
        cfg: &TunnelConfig,
        conn_cfg: &ConnectionConfig,
        secret: &StaticSecret,
        epoch: Instant,
        now: Instant,
    ) -> Self {
        if is_ikev2(conn_cfg)
            && let Some(t) = IkeTunnel::new(id, conn, cfg, conn_cfg, now)
        {
            return Tunnel::Ike(Box::new(t));
        }
        Tunnel::Noise(Box::new(NoiseTunnel::new(
            id, conn, cfg, conn_cfg, secret, epoch, now,
        )))
    }

    pub fn same_settings(&self, cfg: &TunnelConfig, conn_cfg: &ConnectionConfig) -> bool {
        match self {
            Tunnel::Noise(t) => !is_ikev2(conn_cfg) && t.same_settings(cfg, conn_cfg),
            Tunnel::Ike(t) => t.same_settings(cfg, conn_cfg),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        both!(self, t => t.poll_timeout())
    }

    /// The window in which this tunnel's next timer may be served (`schedule::Window`): the
    /// Noise driver lets keepalives share wake-ups; the IKEv2 driver's deadlines are exact.
    pub fn poll_window(&self) -> Option<Window> {
        match self {
            Tunnel::Noise(t) => t.poll_window(),
            Tunnel::Ike(t) => t.poll_timeout().map(Window::exact),
        }
    }

    pub fn spi_in(&self) -> Option<u32> {
        both!(self, t => t.spi_in())
    }

    pub fn spi_out(&self) -> Option<u32> {
        both!(self, t => t.spi_out())
    }

    /// `ikev2` tunnels: (SPIi, SPIr, state) of the IKE SA.
    pub fn ike_status(&self) -> Option<(Option<u64>, Option<u64>, &'static str)> {
        match self {
            Tunnel::Noise(_) => None,
            Tunnel::Ike(t) => Some(t.ike_status()),
        }
    }

    pub fn is_ike(&self) -> bool {
        matches!(self, Tunnel::Ike(_))
    }

    pub fn inbound_spis(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            Tunnel::Noise(t) => Box::new(t.inbound_spis()),
            Tunnel::Ike(t) => Box::new(t.inbound_spis()),
        }
    }

    pub fn initiation_sent_to(&self) -> Option<SocketAddr> {
        match self {
            Tunnel::Noise(t) => t.initiation_sent_to(),
            Tunnel::Ike(_) => None,
        }
    }

    pub fn responder(&self) -> Option<&Responder> {
        match self {
            Tunnel::Noise(t) => t.responder(),
            Tunnel::Ike(_) => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        both!(self, t => t.handle_timeout(now, ctx))
    }

    pub fn refresh(
        &mut self,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Option<(TunnelState, TunnelState, StateCause)> {
        match self {
            Tunnel::Noise(t) => t.refresh(now, ctx),
            Tunnel::Ike(t) => t.refresh(now),
        }
    }

    pub fn seal_data(
        &mut self,
        buf: &mut [u8],
        packet: Range<usize>,
        next_header: u8,
        now: Instant,
    ) -> Result<(SocketAddr, Range<usize>), DropReason> {
        both!(self, t => t.seal_data(buf, packet, next_header, now))
    }

    /// The next control datagram: destination, length, and the local address to send it from
    /// when that is not the tunnel's own socket (an IKEv2 tunnel's port 500).
    pub fn poll_transmit(
        &mut self,
        buf: &mut [u8],
        now: Instant,
    ) -> Option<(SocketAddr, usize, Option<SocketAddr>)> {
        match self {
            Tunnel::Noise(t) => t.poll_transmit(buf, now).map(|(d, l)| (d, l, None)),
            Tunnel::Ike(t) => t.poll_transmit(buf, now),
        }
    }

    pub fn set_send_counter_for_testing(&mut self, seq: u64) {
        both!(self, t => t.set_send_counter_for_testing(seq))
    }

    /// Queues a DPD echo (drill probe or RTT). IKEv2 SAs carry no tandem liveness messages (a
    /// standard peer would drop them): there a drill probe is an ICMP echo request to the
    /// tunnel's probe target (`ike_probe`), and an RTT echo is not sent.
    pub fn queue_echo(&mut self, id: u64, timestamp: u64, probe: bool) {
        match self {
            Tunnel::Noise(t) => t.queue_echo(id, timestamp, probe),
            Tunnel::Ike(t) if probe => t.queue_probe(id, timestamp),
            Tunnel::Ike(_) => {}
        }
    }

    /// `ikev2` tunnels: the negotiated (IKE, ESP) proposals.
    pub fn ike_proposals(&self) -> Option<(Option<String>, Option<String>)> {
        match self {
            Tunnel::Noise(_) => None,
            Tunnel::Ike(t) => Some(t.proposals()),
        }
    }

    pub fn set_silence(&mut self, mode: Silence, now: Instant, ctx: &mut Ctx<'_>) {
        match self {
            Tunnel::Noise(t) => t.set_silence(mode, now),
            Tunnel::Ike(t) => t.set_silence(mode, now, ctx),
        }
    }

    pub fn close(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        match self {
            Tunnel::Noise(t) => t.close(now),
            Tunnel::Ike(t) => t.close(now, ctx),
        }
    }

    /// A datagram that starts with the non-ESP marker: a Noise handshake message, or an IKE
    /// message.
    pub fn handle_handshake(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        match self {
            Tunnel::Noise(t) => t.handle_handshake(from, msg, now, ctx),
            Tunnel::Ike(t) => t.handle_ike(from, msg, now, ctx),
        }
    }

    /// A datagram on an IKEv2 tunnel's IKE port (500): an IKE message without a marker.
    pub fn handle_ike_plain(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        match self {
            Tunnel::Noise(_) => Err(DropReason::Handshake),
            Tunnel::Ike(t) => t.handle_ike_plain(from, msg, now, ctx),
        }
    }

    pub fn handle_claimed_initiation(
        &mut self,
        from: SocketAddr,
        pre: &InitiationPreamble,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        match self {
            Tunnel::Noise(t) => t.handle_claimed_initiation(from, pre, msg, now, ctx),
            Tunnel::Ike(_) => Err(DropReason::Auth),
        }
    }

    pub fn handle_esp(
        &mut self,
        from: SocketAddr,
        buf: &mut [u8],
        range: Range<usize>,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<Received, DropReason> {
        match self {
            Tunnel::Noise(t) => t.handle_esp(from, buf, range, now, ctx),
            Tunnel::Ike(t) => t.handle_esp(from, buf, range, now, ctx),
        }
    }
}
