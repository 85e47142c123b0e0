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
//!
//! The report also carries a `timeline` for the HTML picture (`tandem drill --report`): probes
//! sent and answered per bucket of send time, every tunnel state and active-tunnel change of the
//! connection, the phase instants and where the longest gap lies; all in ms since the drill began.

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
/// Most buckets in the report's timeline: 1 ms buckets up to this many, then 10, 100 or 1000 ms
/// ones (a 10 s drill with its failback wait is ~14 000 ms: 1 400 buckets of 10 ms), so a long
/// drill still makes a picture of a few thousand SVG elements at most.
const MAX_BUCKETS: u64 = 4000;

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
    timeline: Timeline,
    /// Route-based tunnels only: the kernel's route changes, to time the routing daemon.
    routes: Option<RoutingWatch>,
}

/// Routing convergence on this host for a drill on a tunnel with an interface: from the
/// silenced tunnel's carrier going off to the first change a routing daemon makes to this
/// host's routing table (a route whose protocol is not the kernel's, a redirect or `ip route`'s
/// default "boot": FRR's are `bgp`, `ospf`, `static`, …).
#[derive(Debug)]
struct RoutingWatch {
    monitor: super::sys::RouteMonitor,
    buf: Box<[u8]>,
    carrier_off: Option<Instant>,
    route_changed: Option<Instant>,
}

/// Route protocols at or below this are the kernel's own or an administrator's
/// (`RTPROT_UNSPEC`, `_REDIRECT`, `_KERNEL`, `_BOOT`; linux/rtnetlink.h).
const RTPROT_BOOT: u8 = 3;
/// Receive buffer for route notifications (a few messages of ~100 bytes each per read).
const ROUTE_BUF_LEN: usize = 8192;

/// What the picture needs, recorded as the drill runs (instants from [`Timeline::began`]).
#[derive(Debug)]
struct Timeline {
    began: Instant,
    /// The connection's tunnels, in configuration order.
    tunnels: Vec<(TunnelId, String)>,
    /// Per probe id: when it was sent.
    sent_at: Vec<Duration>,
    /// Per probe id: whether a reply came back (duplicates count once).
    answered: Vec<bool>,
    /// (when, tunnel name, new state), starting with each tunnel's state at the start.
    states: Vec<(Duration, String, &'static str)>,
    /// (when, active tunnel name), starting with the active tunnel at the start.
    active: Vec<(Duration, Option<String>)>,
    /// The two replies that bound the longest gap.
    gap: Option<(Duration, Duration)>,
}

impl Timeline {
    fn name(&self, id: TunnelId) -> Option<&str> {
        self.tunnels
            .iter()
            .find(|(t, _)| *t == id)
            .map(|(_, n)| n.as_str())
    }
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
        let tunnels = engine
            .tunnels()
            .filter(|(_, i)| i.connection == connection)
            .map(|(id, i)| (id, i.name.clone()))
            .collect();
        let states = c
            .tunnels
            .iter()
            .map(|t| (Duration::ZERO, t.name.clone(), t.state.as_str()))
            .collect();
        let timeline = Timeline {
            began: now,
            tunnels,
            sent_at: Vec::new(),
            answered: Vec::new(),
            states,
            active: vec![(Duration::ZERO, Some(active.clone()))],
            gap: None,
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
            timeline,
            routes: None,
        })
    }

    /// The silenced tunnel has an interface: watch this host's routes to time the routing
    /// daemon's reaction to its carrier (a drill without it reports no routing figure).
    pub fn watch_routes(&mut self) {
        match super::sys::RouteMonitor::new() {
            Ok(monitor) => {
                self.routes = Some(RoutingWatch {
                    monitor,
                    buf: vec![0u8; ROUTE_BUF_LEN].into_boxed_slice(),
                    carrier_off: None,
                    route_changed: None,
                });
            }
            Err(e) => tracing::warn!(error = %e, "drill: cannot watch route changes"),
        }
    }

    /// The silenced tunnel.
    pub fn tunnel(&self) -> TunnelId {
        self.tunnel
    }

    /// The silenced tunnel's interface carrier as it is now.
    pub fn on_carrier(&mut self, on: bool, now: Instant) {
        if let Some(w) = self.routes.as_mut() {
            if !on && self.silenced_at.is_some() && w.carrier_off.is_none() {
                w.carrier_off = Some(now);
            }
        }
    }

    fn poll_routes(&mut self, now: Instant) {
        let Some(w) = self.routes.as_mut() else {
            return;
        };
        let mut changed = false;
        w.monitor.drain(&mut w.buf, |c| {
            changed |= c.protocol > RTPROT_BOOT;
        });
        if changed && w.carrier_off.is_some() && w.route_changed.is_none() {
            w.route_changed = Some(now);
        }
    }

    /// The connection drilled.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// The tunnel silenced.
    pub fn tunnel_name(&self) -> &str {
        &self.tunnel_name
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
        self.poll_routes(now);
        if self.phase != Phase::Draining {
            let mut n = 0;
            while self.next_probe <= now && n < MAX_CATCH_UP {
                // An error (no active tunnel during the outage) is a lost probe.
                let _ = engine.send_probe(&self.connection, self.next_id, now);
                self.timeline
                    .sent_at
                    .push(now.saturating_duration_since(self.timeline.began));
                self.timeline.answered.push(false);
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
            Phase::Draining => return Some(self.report(engine, now)),
        }
        None
    }

    /// Watch the engine's events for the switch away, the switch back and probe replies.
    pub fn on_event(&mut self, ev: &Event, now: Instant) {
        match ev {
            Event::ProbeReply { id, .. } => {
                self.replied += 1;
                if let Some(a) = usize::try_from(*id)
                    .ok()
                    .and_then(|i| self.timeline.answered.get_mut(i))
                {
                    *a = true;
                }
                let at = now.saturating_duration_since(self.timeline.began);
                if let Some(last) = self.last_reply {
                    let gap = now.saturating_duration_since(last);
                    if gap > self.max_gap {
                        self.max_gap = gap;
                        self.timeline.gap = Some((at - gap, at));
                    }
                }
                self.last_reply = Some(now);
            }
            Event::TunnelState { tunnel, to, .. } => {
                if let Some(name) = self.timeline.name(*tunnel) {
                    let entry = (
                        now.saturating_duration_since(self.timeline.began),
                        name.to_owned(),
                        to.as_str(),
                    );
                    self.timeline.states.push(entry);
                }
            }
            Event::ActiveChanged { from, to, .. } => {
                let ours = |t: &Option<TunnelId>| t.and_then(|t| self.timeline.name(t)).is_some();
                if ours(from) || ours(to) {
                    let name = to.and_then(|t| self.timeline.name(t)).map(str::to_owned);
                    self.timeline
                        .active
                        .push((now.saturating_duration_since(self.timeline.began), name));
                }
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

    fn report(&mut self, engine: &Engine, now: Instant) -> (ReplyTx, Reply) {
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
        let since =
            |i: Option<Instant>| i.map(|i| i.saturating_duration_since(self.timeline.began));
        let tl = &self.timeline;
        let end = now.saturating_duration_since(tl.began);
        let end_ms = u64::try_from(end.as_millis()).unwrap_or(u64::MAX) + 1;
        let bucket_ms = [1u64, 10, 100, 1000]
            .into_iter()
            .find(|b| end_ms.div_ceil(*b) <= MAX_BUCKETS)
            .unwrap_or(1000);
        let mut probes = vec![[0u64; 2]; usize::try_from(end_ms.div_ceil(bucket_ms)).unwrap_or(0)];
        for (at, answered) in tl.sent_at.iter().zip(&tl.answered) {
            let b = u64::try_from(at.as_millis()).unwrap_or(u64::MAX) / bucket_ms;
            if let Some(slot) = usize::try_from(b).ok().and_then(|b| probes.get_mut(b)) {
                slot[0] += 1;
                slot[1] += u64::from(*answered);
            }
        }
        let switched_at = since(self.silenced_at)
            .zip(self.detection)
            .map(|(s, d)| s + d);
        let failback_at = since(self.restored_at)
            .zip(self.failback_time)
            .map(|(r, d)| r + d);
        let timeline = serde_json::json!({
            "bucket_ms": bucket_ms,
            "probes": probes,
            "end_ms": ms(Some(end)),
            "silenced_at_ms": ms(since(self.silenced_at)),
            "restored_at_ms": ms(since(self.restored_at)),
            "switched_at_ms": ms(switched_at),
            "failback_at_ms": ms(failback_at),
            "gap_from_ms": ms(tl.gap.map(|g| g.0)),
            "gap_to_ms": ms(tl.gap.map(|g| g.1)),
            "tunnels": tl.tunnels.iter().map(|(_, n)| n).collect::<Vec<_>>(),
            "tunnel_states": tl.states.iter().map(|(at, t, s)| serde_json::json!({
                "at_ms": ms(Some(*at)), "tunnel": t, "state": s,
            })).collect::<Vec<_>>(),
            "active": tl.active.iter().map(|(at, t)| serde_json::json!({
                "at_ms": ms(Some(*at)), "tunnel": t,
            })).collect::<Vec<_>>(),
        });
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
            "carrier_off_ms": ms(self.routes.as_ref().and_then(|w| w.carrier_off)
                .zip(self.silenced_at)
                .map(|(c, s)| c.saturating_duration_since(s))),
            "routing_convergence_ms": ms(self.routes.as_ref().and_then(|w| w.route_changed.zip(w.carrier_off))
                .map(|(r, c)| r.saturating_duration_since(c))),
            "settings": {
                "probe_interval_ms": PROBE_INTERVAL.as_millis() as u64,
                "warmup_ms": WARMUP.as_millis() as u64,
                "failback_hold_ms": self.failback.map(|d| d.as_millis() as u64),
                "failback_grace_ms": FAILBACK_GRACE.as_millis() as u64,
                "drain_ms": DRAIN.as_millis() as u64,
            },
            "timeline": timeline,
        });
        tracing::info!(
            connection = %self.connection,
            detection_ms = ?data.get("detection_ms"),
            traffic_gap_ms = ?data.get("traffic_gap_ms"),
            probes_lost = ?data.get("probes_lost"),
            "drill finished"
        );
        let reply = self.reply.take();
        // `reply` is always Some here: it is only taken when the drill ends.
        (
            reply.unwrap_or_else(|| tokio::sync::oneshot::channel().0),
            Reply::ok(Some(data)),
        )
    }
}
