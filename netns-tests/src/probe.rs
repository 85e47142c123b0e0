//! The 1 ms UDP probe stream: a sender that numbers every probe and a reflector that echoes it.
//!
//! The sender sends probe `n` at `start + n × interval` (catching up at once if it falls behind),
//! records the send time of every probe and the arrival of every echo, and when told to stop
//! (EOF on stdin, or `--max-secs`) waits `--linger-ms` for late echoes and prints one JSON
//! [`ProbeReport`]. A probe is lost if its echo never came back, in either direction, so loss and
//! gaps are counted exactly, per probe. The largest gap is measured on the send schedule: the
//! time between the sends of two consecutive probes whose echoes both came back (1 interval when
//! nothing is lost), so receive-side scheduling jitter does not inflate it.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::helper::{helper_command, parse_opts};
use crate::netns::Netns;
use crate::process::Bg;

/// First bytes of every probe.
const MAGIC: [u8; 4] = *b"TDMP";
/// Magic + 64-bit sequence number.
const HEADER_LEN: usize = 12;

/// What one probe stream saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    /// Probes sent (send errors count as sent and lost).
    pub sent: u64,
    /// Distinct probes whose echo came back.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Largest time between the sends of two consecutive answered probes, in ms.
    pub largest_gap_ms: f64,
    /// Offset from the start of the stream at which the largest gap began, in ms.
    pub gap_start_ms: f64,
    /// Echoes received more than once.
    pub duplicates: u64,
    /// Echoes that arrived after an echo of a later probe.
    pub reordered: u64,
    /// Mean round-trip time of the answered probes, in ms.
    pub rtt_avg_ms: f64,
    /// Largest round-trip time, in ms.
    pub rtt_max_ms: f64,
    /// Interval between probes, in ms.
    pub interval_ms: f64,
    /// Length of the stream (first to last send), in ms.
    pub duration_ms: f64,
}

/// Computes the report from send offsets (index = sequence number) and arrivals (seq, offset).
pub fn compute_report(
    sends: &[Duration],
    arrivals: &[(u64, Duration)],
    interval: Duration,
) -> ProbeReport {
    let n = sends.len();
    let mut count = vec![0u32; n];
    let mut duplicates = 0;
    let mut reordered = 0;
    let mut highest: Option<u64> = None;
    let mut rtt_sum = 0.0;
    let mut rtt_max: f64 = 0.0;
    for &(seq, at) in arrivals {
        let Some(c) = count.get_mut(seq as usize) else {
            continue;
        };
        *c += 1;
        if *c > 1 {
            duplicates += 1;
            continue;
        }
        match highest {
            Some(h) if seq < h => reordered += 1,
            _ => highest = Some(seq),
        }
        let rtt = at.saturating_sub(sends[seq as usize]).as_secs_f64() * 1e3;
        rtt_sum += rtt;
        rtt_max = rtt_max.max(rtt);
    }
    let received = count.iter().filter(|&&c| c > 0).count() as u64;
    // Gaps on the send schedule, with virtual answered probes one interval before the first send
    // and one after the last, so leading and trailing losses count too.
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let iv = ms(interval);
    let mut prev = sends.first().map_or(0.0, |&d| ms(d) - iv);
    let mut largest_gap_ms = 0.0;
    let mut gap_start_ms = 0.0;
    for (seq, &c) in count.iter().enumerate() {
        if c > 0 {
            let t = ms(sends[seq]);
            if t - prev > largest_gap_ms {
                largest_gap_ms = t - prev;
                gap_start_ms = prev;
            }
            prev = t;
        }
    }
    if let Some(&last) = sends.last() {
        let end = ms(last) + iv;
        if end - prev > largest_gap_ms {
            largest_gap_ms = end - prev;
            gap_start_ms = prev;
        }
    }
    ProbeReport {
        sent: n as u64,
        received,
        lost: n as u64 - received,
        largest_gap_ms,
        gap_start_ms,
        duplicates,
        reordered,
        rtt_avg_ms: if received > 0 {
            rtt_sum / received as f64
        } else {
            0.0
        },
        rtt_max_ms: rtt_max,
        interval_ms: iv,
        duration_ms: sends.last().map_or(0.0, |&d| ms(d)),
    }
}

fn opt<T: std::str::FromStr>(
    opts: &[(String, String)],
    key: &str,
    default: T,
) -> Result<T, String> {
    match opts.iter().find(|(k, _)| k == key) {
        Some((_, v)) => v.parse().map_err(|_| format!("bad --{key} {v}")),
        None => Ok(default),
    }
}

/// `probe send --to ADDR:PORT [--interval-us 1000] [--size 64] [--max-secs 600] [--linger-ms 500]
/// [--from-port 0]` (a fixed source port makes the stream one known flow, for ECMP tests)
pub fn sender_main(args: &[String]) -> Result<(), String> {
    let opts = parse_opts(args)?;
    let to: SocketAddr = opts
        .iter()
        .find(|(k, _)| k == "to")
        .ok_or("--to is required")?
        .1
        .parse()
        .map_err(|e| format!("--to: {e}"))?;
    let interval = Duration::from_micros(opt(&opts, "interval-us", 1000)?);
    let size: usize = opt(&opts, "size", 64usize)?.max(HEADER_LEN);
    let max = Duration::from_secs(opt(&opts, "max-secs", 600)?);
    let linger = Duration::from_millis(opt(&opts, "linger-ms", 500)?);
    let from_port: u16 = opt(&opts, "from-port", 0u16)?;
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], from_port))
    } else {
        SocketAddr::from(([0u16; 8], from_port))
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    sock.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    let rx = sock.try_clone().map_err(|e| format!("{e}"))?;
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| format!("{e}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let done_rx = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let arrivals = Arc::new(Mutex::new(Vec::<(u64, Duration)>::with_capacity(1 << 16)));

    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let receiver = {
        let done_rx = done_rx.clone();
        let arrivals = arrivals.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !done_rx.load(Ordering::SeqCst) {
                if let Ok(n) = rx.recv(&mut buf) {
                    let at = start.elapsed();
                    if n >= HEADER_LEN && buf[..4] == MAGIC {
                        let mut seq = [0u8; 8];
                        seq.copy_from_slice(&buf[4..12]);
                        if let Ok(mut a) = arrivals.lock() {
                            a.push((u64::from_be_bytes(seq), at));
                        }
                    }
                }
            }
        })
    };

    let mut sends = Vec::<Duration>::with_capacity(1 << 16);
    let mut pkt = vec![0u8; size];
    pkt[..4].copy_from_slice(&MAGIC);
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < max {
        let due = interval * seq as u32;
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        pkt[4..12].copy_from_slice(&seq.to_be_bytes());
        sends.push(start.elapsed());
        // A send error (no route during a failover, a full queue) is a lost probe.
        let _ = sock.send(&pkt);
        seq += 1;
    }
    std::thread::sleep(linger);
    done_rx.store(true, Ordering::SeqCst);
    let _ = receiver.join();
    let arrivals = arrivals.lock().map_err(|_| "poisoned")?.clone();
    let report = compute_report(&sends, &arrivals, interval);
    let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    #[allow(clippy::print_stdout)]
    {
        println!("{json}");
    }
    Ok(())
}

/// `probe reflect --port PORT`: echoes every probe back to its sender (dual-stack socket).
pub fn reflector_main(args: &[String]) -> Result<(), String> {
    let opts = parse_opts(args)?;
    let port: u16 = opt(&opts, "port", 7777)?;
    let sock = UdpSocket::bind(("::", port)).map_err(|e| format!("bind [::]:{port}: {e}"))?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
        if n >= HEADER_LEN && buf[..4] == MAGIC {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// The default UDP port of the probe reflector.
pub const REFLECT_PORT: u16 = 7777;

/// A reflector running in a namespace; killed on drop.
#[derive(Debug)]
pub struct Reflector {
    _bg: Bg,
}

impl Reflector {
    /// Starts the reflector on `[::]:port` inside `ns` and waits until it is bound.
    pub fn start(ns: &Netns, port: u16) -> Result<Self, Error> {
        let mut cmd = helper_command(ns, "reflect");
        cmd.args(["--port", &port.to_string()])
            .stdout(std::process::Stdio::null());
        let bg = Bg::spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let ss = ns.run("ss", ["-Hlun", &format!("sport = :{port}")])?;
            if !ss.trim().is_empty() {
                return Ok(Reflector { _bg: bg });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(Error::Timeout(format!(
            "reflector in {} not bound",
            ns.name()
        )))
    }
}

/// A running probe stream (sender in one namespace towards a reflector in another).
#[derive(Debug)]
pub struct ProbeStream {
    bg: Bg,
}

impl ProbeStream {
    /// Starts a 1 ms stream from `ns` to `target` (a reflector).
    pub fn start(ns: &Netns, target: SocketAddr) -> Result<Self, Error> {
        Self::start_with(ns, target, Duration::from_millis(1), 64)
    }

    /// Starts a 1 ms stream from `ns` to `target` from source port `port` (one known flow).
    pub fn start_from(ns: &Netns, target: SocketAddr, port: u16) -> Result<Self, Error> {
        let mut cmd = helper_command(ns, "send");
        cmd.args(["--to", &target.to_string()])
            .args(["--from-port", &port.to_string()])
            .stdout(std::process::Stdio::piped());
        Ok(ProbeStream {
            bg: Bg::spawn(cmd)?,
        })
    }

    /// Starts a stream with a given interval and probe size.
    pub fn start_with(
        ns: &Netns,
        target: SocketAddr,
        interval: Duration,
        size: usize,
    ) -> Result<Self, Error> {
        let mut cmd = helper_command(ns, "send");
        cmd.args(["--to", &target.to_string()])
            .args(["--interval-us", &interval.as_micros().to_string()])
            .args(["--size", &size.to_string()])
            .stdout(std::process::Stdio::piped());
        Ok(ProbeStream {
            bg: Bg::spawn(cmd)?,
        })
    }

    /// Stops sending, waits for late echoes and returns the report.
    pub fn stop(mut self) -> Result<ProbeReport, Error> {
        self.bg.close_stdin();
        let out = self.bg.wait_output(Duration::from_secs(10))?;
        serde_json::from_str(out.trim())
            .map_err(|e| Error::Parse(format!("probe report {out:?}: {e}")))
    }
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} received {} lost {} largest gap {:.1} ms (at {:.0} ms) duplicates {} reordered {} rtt avg {:.3} ms max {:.3} ms",
            self.sent,
            self.received,
            self.lost,
            self.largest_gap_ms,
            self.gap_start_ms,
            self.duplicates,
            self.reordered,
            self.rtt_avg_ms,
            self.rtt_max_ms
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_lossless_stream_has_a_gap_of_one_interval() {
        let sends: Vec<_> = (0..10).map(ms).collect();
        let arr: Vec<_> = (0..10).map(|s| (s, ms(s + 1))).collect();
        let r = compute_report(&sends, &arr, ms(1));
        assert_eq!((r.sent, r.received, r.lost, r.duplicates), (10, 10, 0, 0));
        assert!((r.largest_gap_ms - 1.0).abs() < 1e-9);
        assert!((r.rtt_avg_ms - 1.0).abs() < 1e-9);
    }

    #[test]
    fn losses_duplicates_and_reordering_are_counted_exactly() {
        let sends: Vec<_> = (0..10).map(ms).collect();
        // 3, 4, 5 lost; 7 duplicated; 9 arrives before 8.
        let arr = vec![
            (0, ms(1)),
            (1, ms(2)),
            (2, ms(3)),
            (6, ms(7)),
            (7, ms(8)),
            (7, ms(8)),
            (9, ms(10)),
            (8, ms(11)),
        ];
        let r = compute_report(&sends, &arr, ms(1));
        assert_eq!((r.sent, r.received, r.lost), (10, 7, 3));
        assert_eq!((r.duplicates, r.reordered), (1, 1));
        assert!((r.largest_gap_ms - 4.0).abs() < 1e-9, "{r}");
        assert!((r.gap_start_ms - 2.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn trailing_and_leading_losses_make_gaps() {
        let sends: Vec<_> = (0..10).map(ms).collect();
        let r = compute_report(&sends, &[(5, ms(6))], ms(1));
        assert_eq!(r.lost, 9);
        assert!((r.largest_gap_ms - 6.0).abs() < 1e-9, "{r}");
        let r = compute_report(&sends, &[], ms(1));
        assert!((r.largest_gap_ms - 11.0).abs() < 1e-9, "{r}");
    }
}
