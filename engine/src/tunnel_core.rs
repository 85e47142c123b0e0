//! What every tunnel has, whatever protocol drives it (`tunnel::NoiseTunnel`,
//! `ike_tunnel::IkeTunnel`): its place in the engine, its config, the peer's endpoint, its
//! state, its silence and its counters; and the timer table each driver keeps. The drivers change these; the gateway reads them through
//! `any_tunnel::Tunnel`, which dereferences to this.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::TunnelConfig;
use crate::router::ConnectionId;
use crate::types::{Silence, TunnelCounters, TunnelId, TunnelState};

/// The protocol-independent part of a tunnel.
#[derive(Debug)]
pub(crate) struct TunnelCore {
    pub id: TunnelId,
    pub conn: ConnectionId,
    pub cfg: TunnelConfig,
    /// The peer's endpoint: configured, or learned from authenticated packets.
    pub remote: Option<SocketAddr>,
    pub state: TunnelState,
    /// Whether the tunnel has been Up: not Up again is then `Down`, not `Connecting`.
    pub ever_up: bool,
    pub silence: Silence,
    pub counters: TunnelCounters,
}

impl TunnelCore {
    /// A new tunnel's core: `Connecting`, not silenced, nothing counted.
    pub fn new(id: TunnelId, conn: ConnectionId, cfg: &TunnelConfig) -> Self {
        TunnelCore {
            id,
            conn,
            cfg: cfg.clone(),
            remote: cfg.remote,
            state: TunnelState::Connecting,
            ever_up: false,
            silence: Silence::Off,
            counters: TunnelCounters::default(),
        }
    }

    /// Gives a kept tunnel its place in a reloaded engine.
    pub fn renumber(&mut self, id: TunnelId, conn: ConnectionId) {
        self.id = id;
        self.conn = conn;
    }

    pub fn id(&self) -> TunnelId {
        self.id
    }

    pub fn conn(&self) -> ConnectionId {
        self.conn
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &TunnelConfig {
        &self.cfg
    }

    pub fn state(&self) -> TunnelState {
        self.state
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    pub fn counters(&self) -> &TunnelCounters {
        &self.counters
    }

    /// Counts a move of traffic away from this tunnel.
    pub fn count_failover(&mut self) {
        self.counters.failovers += 1;
    }

    pub fn is_silenced(&self) -> bool {
        self.silence != Silence::Off
    }
}

/// A driver's timer table: one deadline per kind of timer `T` (an enum whose discriminants are
/// `0..N`), the earliest of them what the tunnel reports to the gateway's schedule.
#[derive(Debug, Clone)]
pub(crate) struct Timers<T, const N: usize> {
    at: [Option<Instant>; N],
    kind: PhantomData<T>,
}

impl<T, const N: usize> Default for Timers<T, N> {
    fn default() -> Self {
        Timers {
            at: [None; N],
            kind: PhantomData,
        }
    }
}

impl<T: Copy + Into<usize>, const N: usize> Timers<T, N> {
    pub fn set(&mut self, t: T, at: Option<Instant>) {
        self.at[t.into()] = at;
    }

    pub fn get(&self, t: T) -> Option<Instant> {
        self.at[t.into()]
    }

    pub fn due(&self, t: T, now: Instant) -> bool {
        self.get(t).is_some_and(|at| at <= now)
    }

    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}
