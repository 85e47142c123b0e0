//! Failover drills under load: a 1 ms probe stream office -> vpc (echoed back) and an iperf3 TCP
//! stream run while an action (an nftables blackhole of isp1, `tandem failover`, a reload, a
//! daemon kill) happens; the result carries the probe report, the TCP result and the action's own
//! figures. Shared by the end-to-end tests and the demo so both measure the same way.

use std::net::SocketAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::Error;
use crate::impair::{Direction, NftImpairment};
use crate::probe::{ProbeReport, ProbeStream, REFLECT_PORT, Reflector};
use crate::tandem::TandemPair;
use crate::topo::{Family, Lab, vpc_ip};
use crate::traffic::{Iperf3Client, Iperf3Server, IperfOpts, IperfResult};

/// iperf3 port used by drills.
pub const DRILL_IPERF_PORT: u16 = 5211;

/// The docs/protocol.md bound on the largest probe gap for an unplanned failure:
/// `dpd_timeout + 2 × dpd_interval + 50 ms`.
pub fn gap_bound(pair: &TandemPair) -> Duration {
    let o = pair.setup.opts();
    o.dpd_timeout + 2 * o.dpd_interval + Duration::from_millis(50)
}

/// The TCP stream that runs under a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpLoad {
    /// No TCP stream.
    None,
    /// A full-rate stream of this many seconds: for unplanned failures, where the bound is on
    /// the gap and the stream must survive.
    Saturating(u32),
    /// A stream capped at `mbps` for `secs`: for planned moves that must lose zero probes. A
    /// saturating TCP stream fills the bottleneck queue until it drops (that is how TCP finds
    /// the rate), which would drop probes whether or not the tunnel moves; the cap leaves
    /// headroom so any loss is the move's.
    Capped {
        /// Length in seconds.
        secs: u32,
        /// Rate cap in Mbit/s.
        mbps: u32,
    },
}

/// What a drill saw.
#[derive(Debug, Clone)]
pub struct DrillOutcome<T> {
    /// The probe stream over the whole drill.
    pub probe: ProbeReport,
    /// The TCP stream (an error if the connection broke).
    pub tcp: Result<IperfResult, String>,
    /// What the action returned.
    pub action: T,
}

/// Servers for drills (reflector and iperf3 in `vpc`), kept for several drills.
#[derive(Debug)]
pub struct DrillRig {
    _reflector: Reflector,
    _iperf: Iperf3Server,
    family: Family,
}

impl DrillRig {
    /// Starts the reflector and the iperf3 server in `vpc`.
    pub fn new(lab: &Lab, family: Family) -> Result<Self, Error> {
        Ok(DrillRig {
            _reflector: Reflector::start(&lab.vpc, REFLECT_PORT)?,
            _iperf: Iperf3Server::start(&lab.vpc, DRILL_IPERF_PORT)?,
            family,
        })
    }

    /// Runs `action` under a probe stream and a TCP stream (`load`); the streams run `lead`
    /// before the action, and the probe stream keeps going until the TCP stream ends (and at
    /// least `tail` after the action).
    pub fn run<T>(
        &self,
        lab: &Lab,
        load: TcpLoad,
        lead: Duration,
        tail: Duration,
        action: impl FnOnce() -> Result<T, Error>,
    ) -> Result<DrillOutcome<T>, Error> {
        let target = SocketAddr::new(vpc_ip(self.family), REFLECT_PORT);
        let probe = ProbeStream::start(&lab.office, target)?;
        let opts = match load {
            TcpLoad::None => None,
            TcpLoad::Saturating(secs) => Some(IperfOpts {
                secs,
                ..IperfOpts::default()
            }),
            TcpLoad::Capped { secs, mbps } => Some(IperfOpts {
                secs,
                bitrate_mbps: Some(mbps),
                ..IperfOpts::default()
            }),
        };
        let tcp = match opts {
            Some(o) => Some(Iperf3Client::spawn(
                &lab.office,
                vpc_ip(self.family),
                DRILL_IPERF_PORT,
                o,
            )?),
            None => None,
        };
        sleep(lead);
        let action = action();
        sleep(tail);
        let tcp = match tcp {
            Some(c) => c.finish().map_err(|e| e.to_string()),
            None => Err("no TCP stream".to_string()),
        };
        // Keep probing until the TCP stream is over, so the probe covers the same span.
        let probe = probe.stop()?;
        Ok(DrillOutcome {
            probe,
            tcp,
            action: action?,
        })
    }
}

/// Timings of an isp1 cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutTimes {
    /// From the cut until cgw's status shows tunnel2 active.
    pub detect: Duration,
    /// From the cut until tunnel1 is not `up` on both sides.
    pub both_down: Duration,
}

/// Cuts isp1 (blackhole on isp1's link to cgw in `dir`), waits until both sides moved to
/// tunnel2 and tunnel1 is Down on both, holds the cut for `hold` in total, and returns the
/// timings. The cut stays in place while the returned value lives.
pub fn cut_isp1<'a>(
    lab: &'a Lab,
    pair: &TandemPair,
    dir: Direction,
    hold: Duration,
) -> Result<(NftImpairment<'a>, CutTimes), Error> {
    let t0 = Instant::now();
    let bh = NftImpairment::blackhole(&lab.isp1, "cgw", dir)?;
    let detect = pair.wait_until(Duration::from_secs(5), "cgw moves to tunnel2", |a, _| {
        a.active().as_deref() == Some("tunnel2")
    });
    let both_down = pair.wait_until(Duration::from_secs(5), "tunnel1 down on both", |a, b| {
        a.state("tunnel1").as_deref() != Some("up") && b.state("tunnel1").as_deref() != Some("up")
    });
    let elapsed = t0.elapsed();
    if elapsed < hold {
        sleep(hold - elapsed);
    }
    Ok((
        bh,
        CutTimes {
            detect: detect?,
            both_down: both_down?,
        },
    ))
}

/// The figures of a `tandem drill` report (`tandem drill` prints one line per figure; a figure
/// that is missing or not a number is a test failure, never a zero).
#[derive(Debug)]
pub struct DrillReport {
    /// Silence -> the switch away, ms.
    pub detection_ms: f64,
    /// The tunnel it switched to.
    pub switched_to: String,
    /// The longest interval between two probe replies, ms.
    pub gap_ms: f64,
    /// Probes without a reply.
    pub lost: u64,
    /// Probes sent.
    pub sent: u64,
    /// Restore -> the switch back, ms.
    pub failback_ms: f64,
}

impl DrillReport {
    /// Reads the report `tandem drill` printed; panics (a test failure) on a missing figure.
    pub fn parse(text: &str) -> DrillReport {
        let line = |label: &str| -> Vec<&str> {
            let l = text
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(label))
                .unwrap_or_else(|| panic!("no {label:?} line in the drill report:\n{text}"));
            l.split_whitespace().collect()
        };
        let num = |w: Option<&&str>, what: &str| -> f64 {
            w.and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("{what} is not a number in the drill report:\n{text}"))
        };
        let detection = line("detection time");
        let gap = line("traffic gap");
        let lost = line("probes lost");
        let failback = line("failback time");
        assert_eq!(lost.get(1), Some(&"of"), "probes lost N of M:\n{text}");
        DrillReport {
            detection_ms: num(detection.first(), "detection time"),
            // "300.0 ms (switched to tunnel2)"
            switched_to: detection
                .get(4)
                .map(|w| w.trim_end_matches(')').to_string())
                .unwrap_or_default(),
            gap_ms: num(gap.first(), "traffic gap"),
            lost: num(lost.first(), "probes lost") as u64,
            sent: num(lost.get(2), "probes sent") as u64,
            failback_ms: num(failback.first(), "failback time"),
        }
    }
}
