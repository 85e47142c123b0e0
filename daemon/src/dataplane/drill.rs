//! `tandem drill`: a failover drill run by the data-plane loop on a live gateway.
//!
//! Timeline: probes start (one [`PROBE_INTERVAL`] echo over the connection's active tunnel via
//! `Engine::send_probe`); after [`WARMUP`] the active tunnel is silenced (`Engine::silence`,
//! `Silent`, or `Graceful` = closing notice first); after the requested duration it is restored;
//! the drill then waits for failback (the connection's `failback` hold-down plus
//! [`FAILBACK_GRACE`]; not at all when failback is "never"), stops probing, waits [`DRAIN`] for
//! replies in flight, and reports:
//! - detection time: silence -> the engine's switch away from the silenced tunnel;
//! - traffic gap: the longest interval between two consecutive probe replies;
//! - probes lost: sent - replied;
//! - failback time: restore -> the switch back to the original tunnel.

use std::time::{Duration, Instant};

use tandem_engine::{AdminError, Engine, Event, Silence, TunnelId};

use crate::admin::Reply;

/// Probe period: docs/cli.md ("a 1 ms echo probe stream").
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// Probing before the silence, so the gap measurement starts from a steady stream.
pub const WARMUP: Duration = Duration::from_millis(200);
/// Extra wait for failback beyond the configured hold-down (liveness must come back first:
/// a few keepalive intervals).
pub const FAILBACK_GRACE: Duration = Duration::from_secs(3);
/// Wait for probe replies in flight after the last probe.
pub const DRAIN: Duration = Duration::from_millis(200);
/// Most probes sent in one tick when the loop woke late (no burst after a stall).
const MAX_CATCH_UP: u32 = 5;

type ReplyTx = tokio::sync::oneshot::Sender<Reply>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Silenced,
    AwaitFailback,
    Draining,
}

/// A running drill.
#[derive(Debug)]
pub struct Drill {
    connection: String,
    tunnel_name: String,
    tunnel: TunnelId,
    graceful: bool,
    duration: Duration,
    failback: Option<Duration>,
    phase: Phase,
    phase_end: Instant,
    next_probe: Instant,
    next_id: u64,
    sent: u64,
    replied: u64,
    last_reply: Option<Instant>,
    max_gap: Duration,
    silenced_at: Option<Instant>,
    restored_at: Option<Instant>,
    detection: Option<Duration>,
    failover_to: Option<TunnelId>,
    failback_time: Option<Duration>,
    reply: Option<ReplyTx>,
}

impl Drill {
    /// Start a drill on `connection`'s active tunnel.
    pub fn start(
        engine: &mut Engine,
        connection: &str,
        duration: Duration,
        graceful: bool,
        failback: Option<Duration>,
        reply: ReplyTx,
        now: Instant,
    ) -> Result<Self, (ReplyTx, AdminError)> {
        let st = engine.status(now);
        let Some(c) = st.connections.iter().find(|c| c.name == connection) else {
            return Err((reply, AdminError::UnknownConnection(connection.to_owned())));
        };
        let Some(active) = c.active_tunnel.clone() else {
            return Err((reply, AdminError::NoActiveTunnel));
        };
        let Some(tunnel) = engine
            .tunnels()
            .find(|(_, i)| i.connection == connection && i.name == active)
            .map(|(id, _)| id)
        else {
            return Err((reply, AdminError::UnknownTunnel(active)));
        };
        tracing::info!(connection, tunnel = %active, ?duration, graceful, "drill started");
        Ok(Drill {
            connection: connection.to_owned(),
            tunnel_name: active,
            tunnel,
            graceful,
            duration,
            failback,
            phase: Phase::Warmup,
            phase_end: now + WARMUP,
            next_probe: now,
            next_id: 0,
            sent: 0,
            replied: 0,
            last_reply: None,
            max_gap: Duration::ZERO,
            silenced_at: None,
            restored_at: None,
            detection: None,
            failover_to: None,
            failback_time: None,
            reply: Some(reply),
        })
    }

    /// The next instant the loop must call [`Drill::on_tick`].
    pub fn next_deadline(&self) -> Instant {
        if self.phase == Phase::Draining {
            self.phase_end
        } else {
            self.next_probe.min(self.phase_end)
        }
    }

    /// Send due probes and move through the phases; returns the report when the drill is over.
    pub fn on_tick(&mut self, engine: &mut Engine, now: Instant) -> Option<(ReplyTx, Reply)> {
        if self.phase != Phase::Draining {
            let mut n = 0;
            while self.next_probe <= now && n < MAX_CATCH_UP {
                // An error (no active tunnel during the outage) is a lost probe.
                let _ = engine.send_probe(&self.connection, self.next_id, now);
                self.next_id += 1;
                self.sent += 1;
                self.next_probe += PROBE_INTERVAL;
                n += 1;
            }
            if self.next_probe <= now {
                self.next_probe = now + PROBE_INTERVAL;
            }
        }
        if now < self.phase_end {
            return None;
        }
        match self.phase {
            Phase::Warmup => {
                let mode = if self.graceful {
                    Silence::Graceful
                } else {
                    Silence::Silent
                };
                if let Err(e) = engine.silence(&self.connection, &self.tunnel_name, mode, now) {
                    return self.finish_error(e);
                }
                tracing::info!(connection = %self.connection, tunnel = %self.tunnel_name, "drill: tunnel silenced");
                self.silenced_at = Some(now);
                self.phase = Phase::Silenced;
                self.phase_end = now + self.duration;
            }
            Phase::Silenced => {
                if let Err(e) =
                    engine.silence(&self.connection, &self.tunnel_name, Silence::Off, now)
                {
                    return self.finish_error(e);
                }
                tracing::info!(connection = %self.connection, tunnel = %self.tunnel_name, "drill: tunnel restored");
                self.restored_at = Some(now);
                self.phase = Phase::AwaitFailback;
                self.phase_end = match self.failback {
                    Some(hold) => now + hold + FAILBACK_GRACE,
                    None => now + DRAIN,
                };
                if self.detection.is_none() {
                    // Never switched away: there is nothing to fail back from.
                    self.phase_end = now + DRAIN;
                }
            }
            Phase::AwaitFailback => {
                self.phase = Phase::Draining;
                self.phase_end = now + DRAIN;
            }
            Phase::Draining => return Some(self.report(engine)),
        }
        None
    }

    /// Watch the engine's events for the switch away, the switch back and probe replies.
    pub fn on_event(&mut self, ev: &Event, now: Instant) {
        match ev {
            Event::ProbeReply { .. } => {
                self.replied += 1;
                if let Some(last) = self.last_reply {
                    self.max_gap = self.max_gap.max(now.saturating_duration_since(last));
                }
                self.last_reply = Some(now);
            }
            Event::ActiveChanged { from, to, .. } => {
                if let (Some(s), None) = (self.silenced_at, self.detection) {
                    if *from == Some(self.tunnel) && *to != Some(self.tunnel) {
                        self.detection = Some(now.saturating_duration_since(s));
                        self.failover_to = *to;
                    }
                }
                if let (Some(r), None) = (self.restored_at, self.failback_time) {
                    if *to == Some(self.tunnel) {
                        self.failback_time = Some(now.saturating_duration_since(r));
                        if self.phase == Phase::AwaitFailback {
                            // Keep probing a moment after the switch back to see it was lossless.
                            self.phase_end = now + DRAIN;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn finish_error(&mut self, e: AdminError) -> Option<(ReplyTx, Reply)> {
        let reply = self.reply.take()?;
        Some((reply, crate::admin::refused(&e)))
    }

    fn report(&mut self, engine: &Engine) -> (ReplyTx, Reply) {
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
        let to_name = self.failover_to.and_then(|t| {
            engine
                .tunnels()
                .find(|(id, _)| *id == t)
                .map(|(_, i)| i.name.clone())
        });
        let data = serde_json::json!({
            "connection": self.connection,
            "silenced_tunnel": self.tunnel_name,
            "graceful": self.graceful,
            "duration_ms": self.duration.as_millis() as u64,
            "failover_to": to_name,
            "detection_ms": ms(self.detection),
            "traffic_gap_ms": ms(Some(self.max_gap)),
            "probes_sent": self.sent,
            "probes_lost": self.sent.saturating_sub(self.replied),
            "failback_ms": ms(self.failback_time),
        });
        tracing::info!(report = %data, "drill finished");
        let reply = self.reply.take();
        // `reply` is always Some here: it is only taken when the drill ends.
        (
            reply.unwrap_or_else(|| tokio::sync::oneshot::channel().0),
            Reply::ok(Some(data)),
        )
    }
}
