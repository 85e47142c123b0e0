//! The Prometheus text endpoint (docs/cli.md).
//!
//! The data plane keeps its counters as plain `u64`s in the engine (no lock, no map on the hot
//! path); a scrape asks the data-plane thread for a [`MetricsSnapshot`] over the command channel
//! and renders it here, on the control-plane thread.

use std::fmt::Write as _;

/// One tunnel's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelMetric {
    /// Connection name.
    pub connection: String,
    /// Tunnel name.
    pub tunnel: String,
    /// State is Up.
    pub up: bool,
    /// Carries its connection's traffic.
    pub active: bool,
    /// Counters.
    pub rx_bytes: u64,
    /// Counters.
    pub tx_bytes: u64,
    /// Counters.
    pub rx_packets: u64,
    /// Counters.
    pub tx_packets: u64,
    /// Latest DPD RTT.
    pub rtt_seconds: Option<f64>,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Switches away from this tunnel.
    pub failovers: u64,
    /// Configured priority (lower is preferred): lets alerts tell the primary from a standby.
    pub priority: u32,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsSnapshot {
    /// Per tunnel.
    pub tunnels: Vec<TunnelMetric>,
    /// Drops per reason label.
    pub drops: Vec<(&'static str, u64)>,
    /// How late the data plane ran its due timers (keepalives, liveness checks, handshakes).
    pub timer_lateness: Lateness,
}

/// Upper bounds (seconds) of the [`Lateness`] buckets: from the loop's normal wake-up precision
/// (tens of µs) to the `fast` profile's `dpd_timeout` (30 ms) and beyond, where a late timer
/// costs a false failover (docs/failover-profiles.md).
pub const LATENESS_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1,
];

/// A Prometheus histogram of timer lateness (due deadline -> handled), kept by the data plane
/// as plain counters: one compare per bucket, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lateness {
    /// Observations at or below each bound of [`LATENESS_BUCKETS`] (not cumulative), and above
    /// the last one.
    pub counts: [u64; LATENESS_BUCKETS.len() + 1],
    /// Sum of all observations, seconds.
    pub sum: f64,
    /// Largest observation, seconds.
    pub max: f64,
}

impl Lateness {
    /// Records one timer run `late` after its deadline.
    pub fn record(&mut self, late: std::time::Duration) {
        let secs = late.as_secs_f64();
        let i = LATENESS_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENESS_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.max = self.max.max(secs);
    }

    /// Observations.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &MetricsSnapshot) -> String {
    let mut out = String::new();
    type Get = fn(&TunnelMetric) -> Option<f64>;
    let series: [(&str, &str, &str, Get); 11] = [
        ("tandem_tunnel_up", "gauge", "1 if the tunnel is up", |t| {
            Some(f64::from(u8::from(t.up)))
        }),
        (
            "tandem_tunnel_active",
            "gauge",
            "1 if the tunnel carries its connection's traffic",
            |t| Some(f64::from(u8::from(t.active))),
        ),
        (
            "tandem_tunnel_rx_bytes_total",
            "counter",
            "Bytes of authenticated ESP datagrams received (UDP payload, data and liveness)",
            |t| Some(t.rx_bytes as f64),
        ),
        (
            "tandem_tunnel_tx_bytes_total",
            "counter",
            "Bytes of ESP datagrams sent (UDP payload, data and liveness)",
            |t| Some(t.tx_bytes as f64),
        ),
        (
            "tandem_tunnel_rx_packets_total",
            "counter",
            "Authenticated packets received",
            |t| Some(t.rx_packets as f64),
        ),
        (
            "tandem_tunnel_tx_packets_total",
            "counter",
            "Packets sent",
            |t| Some(t.tx_packets as f64),
        ),
        (
            "tandem_tunnel_rtt_seconds",
            "gauge",
            "Latest DPD echo round-trip time",
            |t| t.rtt_seconds,
        ),
        (
            "tandem_handshakes_total",
            "counter",
            "Completed handshakes",
            |t| Some(t.handshakes as f64),
        ),
        (
            "tandem_failovers_total",
            "counter",
            "Switches of traffic away from the tunnel",
            |t| Some(t.failovers as f64),
        ),
        (
            "tandem_tunnel_priority",
            "gauge",
            "Configured priority, lower is preferred (active-standby: the lowest Up one is active)",
            |t| Some(f64::from(t.priority)),
        ),
        (
            "tandem_tunnel_info",
            "gauge",
            "Always 1 (labels only)",
            |_| Some(1.0),
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for t in &s.tunnels {
            if let Some(v) = get(t) {
                let _ = writeln!(
                    out,
                    "{name}{{connection=\"{}\",tunnel=\"{}\"}} {v}",
                    escape(&t.connection),
                    escape(&t.tunnel)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP tandem_dropped_packets_total Packets dropped, by reason\n# TYPE tandem_dropped_packets_total counter"
    );
    for (reason, n) in &s.drops {
        let _ = writeln!(
            out,
            "tandem_dropped_packets_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let name = "tandem_timer_lateness_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long after its deadline the data plane ran a due timer (keepalive, liveness check, handshake)\n# TYPE {name} histogram"
    );
    let l = &s.timer_lateness;
    let mut cumulative = 0;
    for (bound, n) in LATENESS_BUCKETS.iter().zip(&l.counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", l.count());
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", l.sum, l.count());
    let name = "tandem_timer_lateness_max_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} The latest timer run so far, seconds after its deadline\n# TYPE {name} gauge\n{name} {}",
        l.max
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_appears_with_its_labels() {
        let s = MetricsSnapshot {
            tunnels: vec![TunnelMetric {
                connection: "prod".into(),
                tunnel: "t\"1".into(),
                up: true,
                active: true,
                rx_bytes: 10,
                tx_bytes: 20,
                rx_packets: 1,
                tx_packets: 2,
                rtt_seconds: Some(0.0005),
                handshakes: 3,
                failovers: 4,
                priority: 2,
            }],
            drops: vec![("replay", 7), ("no_route", 0)],
            timer_lateness: {
                let mut l = Lateness::default();
                l.record(std::time::Duration::from_micros(50));
                l.record(std::time::Duration::from_millis(4));
                l.record(std::time::Duration::from_millis(40));
                l
            },
        };
        let text = render(&s);
        for m in [
            "tandem_tunnel_up{connection=\"prod\",tunnel=\"t\\\"1\"} 1",
            "tandem_tunnel_active{connection=\"prod\",tunnel=\"t\\\"1\"} 1",
            "tandem_tunnel_rx_bytes_total{connection=\"prod\",tunnel=\"t\\\"1\"} 10",
            "tandem_tunnel_tx_packets_total{connection=\"prod\",tunnel=\"t\\\"1\"} 2",
            "tandem_tunnel_rtt_seconds{connection=\"prod\",tunnel=\"t\\\"1\"} 0.0005",
            "tandem_handshakes_total{connection=\"prod\",tunnel=\"t\\\"1\"} 3",
            "tandem_failovers_total{connection=\"prod\",tunnel=\"t\\\"1\"} 4",
            "tandem_tunnel_priority{connection=\"prod\",tunnel=\"t\\\"1\"} 2",
            "tandem_dropped_packets_total{reason=\"replay\"} 7",
            "tandem_dropped_packets_total{reason=\"no_route\"} 0",
            "tandem_timer_lateness_seconds_bucket{le=\"0.0001\"} 1",
            "tandem_timer_lateness_seconds_bucket{le=\"0.002\"} 1",
            "tandem_timer_lateness_seconds_bucket{le=\"0.005\"} 2",
            "tandem_timer_lateness_seconds_bucket{le=\"0.03\"} 2",
            "tandem_timer_lateness_seconds_bucket{le=\"0.05\"} 3",
            "tandem_timer_lateness_seconds_bucket{le=\"+Inf\"} 3",
            "tandem_timer_lateness_seconds_count 3",
            "tandem_timer_lateness_max_seconds 0.04",
        ] {
            assert!(text.contains(m), "missing {m} in\n{text}");
        }
    }
}
