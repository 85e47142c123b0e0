//! Traffic tools: iperf3 (server in one namespace, client in another, JSON parsed) and ping.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::Error;
use crate::netns::Netns;
use crate::process::Bg;

/// An iperf3 server in a namespace; killed on drop.
#[derive(Debug)]
pub struct Iperf3Server {
    bg: Bg,
    port: u16,
}

impl Iperf3Server {
    /// Starts `iperf3 -s -p port` in `ns` and waits until it listens.
    pub fn start(ns: &Netns, port: u16) -> Result<Self, Error> {
        let mut cmd = ns.command("iperf3");
        cmd.args(["-s", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let bg = Bg::spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let ss = ns.run("ss", ["-Hltn", &format!("sport = :{port}")])?;
            if !ss.trim().is_empty() {
                return Ok(Iperf3Server { bg, port });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(Error::Timeout(format!(
            "iperf3 server in {} not listening",
            ns.name()
        )))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process (for CPU figures).
    pub fn process(&self) -> &Bg {
        &self.bg
    }
}

/// What an iperf3 client run does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfOpts {
    /// Test length.
    pub secs: u32,
    /// Parallel streams (`-P`).
    pub parallel: u32,
    /// Server sends, client receives (`-R`).
    pub reverse: bool,
    /// UDP with this payload length, at full rate (`-u -b 0 -l LEN`); `None` = TCP.
    pub udp_len: Option<u32>,
    /// Cap the sending rate (`-b N M`), for TCP streams that must leave headroom.
    pub bitrate_mbps: Option<u32>,
    /// Socket buffers of both ends, bytes (`-w`; the server takes it from the client); `None` =
    /// the system default.
    pub socket_buffer: Option<u32>,
}

impl Default for IperfOpts {
    fn default() -> Self {
        IperfOpts {
            secs: 2,
            parallel: 1,
            reverse: false,
            udp_len: None,
            bitrate_mbps: None,
            socket_buffer: None,
        }
    }
}

/// The figures of one iperf3 run, from its JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct IperfResult {
    /// Received goodput, bits per second.
    pub bits_per_second: f64,
    /// Bytes received.
    pub bytes: u64,
    /// TCP retransmissions (sender side).
    pub retransmits: u64,
    /// UDP datagrams sent.
    pub udp_packets: u64,
    /// UDP datagrams lost.
    pub udp_lost: u64,
    /// UDP datagrams received per second.
    pub udp_received_pps: f64,
    /// Test length in seconds.
    pub seconds: f64,
}

impl IperfResult {
    /// Goodput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// Parses iperf3's `-J` output.
pub fn parse_iperf_json(text: &str) -> Result<IperfResult, Error> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::Parse(format!("iperf3 JSON: {e}: {}", head(text))))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(Error::Parse(format!("iperf3: {err}")));
    }
    let end = &v["end"];
    // A field that is missing or not a number is an error, never a 0 (a 0 would pass every
    // "nothing lost" check).
    let f = |x: &Value, path: &str| {
        x.as_f64().ok_or_else(|| {
            Error::Parse(format!("iperf3 JSON: no number at {path}: {}", head(text)))
        })
    };
    let u = |x: &Value, path: &str| {
        x.as_u64()
            .ok_or_else(|| Error::Parse(format!("iperf3 JSON: no count at {path}: {}", head(text))))
    };
    let is_udp = v["start"]["test_start"]["protocol"].as_str() == Some("UDP");
    if is_udp {
        let sum = &end["sum"];
        let packets = u(&sum["packets"], "end.sum.packets")?;
        let lost = u(&sum["lost_packets"], "end.sum.lost_packets")?;
        let seconds = f(&sum["seconds"], "end.sum.seconds")?;
        let received = packets.saturating_sub(lost);
        Ok(IperfResult {
            bits_per_second: f(&sum["bits_per_second"], "end.sum.bits_per_second")?
                * (received as f64)
                / (packets.max(1) as f64),
            bytes: u(&sum["bytes"], "end.sum.bytes")? * received / packets.max(1),
            retransmits: 0,
            udp_packets: packets,
            udp_lost: lost,
            udp_received_pps: if seconds > 0.0 {
                received as f64 / seconds
            } else {
                0.0
            },
            seconds,
        })
    } else {
        let recv = &end["sum_received"];
        Ok(IperfResult {
            bits_per_second: f(&recv["bits_per_second"], "end.sum_received.bits_per_second")?,
            bytes: u(&recv["bytes"], "end.sum_received.bytes")?,
            retransmits: u(&end["sum_sent"]["retransmits"], "end.sum_sent.retransmits")?,
            seconds: f(&recv["seconds"], "end.sum_received.seconds")?,
            ..IperfResult::default()
        })
    }
}

fn head(s: &str) -> String {
    s.chars().take(300).collect()
}

/// An iperf3 client running in the background (e.g. a TCP stream under a failover drill).
#[derive(Debug)]
pub struct Iperf3Client {
    bg: Bg,
    secs: u32,
}

impl Iperf3Client {
    /// Starts `iperf3 -c server -J …` in `ns`.
    pub fn spawn(ns: &Netns, server: IpAddr, port: u16, o: IperfOpts) -> Result<Self, Error> {
        let mut cmd = ns.command("iperf3");
        cmd.args(["-c", &server.to_string(), "-p", &port.to_string()])
            .args(["-t", &o.secs.to_string(), "-J", "--connect-timeout", "3000"])
            .args(["-P", &o.parallel.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if o.reverse {
            cmd.arg("-R");
        }
        if let Some(len) = o.udp_len {
            cmd.args(["-u", "-l", &len.to_string()]);
        }
        if let Some(bytes) = o.socket_buffer {
            cmd.args(["-w", &bytes.to_string()]);
        }
        match (o.bitrate_mbps, o.udp_len) {
            (Some(m), _) => cmd.args(["-b", &format!("{m}M")]),
            (None, Some(_)) => cmd.args(["-b", "0"]),
            (None, None) => &mut cmd,
        };
        Ok(Iperf3Client {
            bg: Bg::spawn(cmd)?,
            secs: o.secs,
        })
    }

    /// Waits for the run to end and parses its JSON.
    pub fn finish(self) -> Result<IperfResult, Error> {
        let secs = self.secs;
        let out = self
            .bg
            .wait_output(Duration::from_secs(u64::from(secs) + 20))?;
        parse_iperf_json(&out)
    }
}

/// Runs one iperf3 client to completion.
pub fn iperf3(ns: &Netns, server: IpAddr, port: u16, o: IperfOpts) -> Result<IperfResult, Error> {
    Iperf3Client::spawn(ns, server, port, o)?.finish()
}

/// Ping figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u64,
    /// Echo replies received.
    pub received: u64,
    /// Minimum RTT, ms.
    pub rtt_min_ms: f64,
    /// Mean RTT, ms.
    pub rtt_avg_ms: f64,
    /// Maximum RTT, ms.
    pub rtt_max_ms: f64,
}

/// Parses `ping -q` output.
pub fn parse_ping(text: &str) -> Result<PingResult, Error> {
    let mut r = PingResult::default();
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split([',', ' '])
                .filter_map(|w| w.parse().ok())
                .collect();
            if nums.len() >= 2 {
                r.transmitted = nums[0];
                r.received = nums[1];
            }
        } else if let Some(rest) = line.split(" = ").nth(1) {
            if line.starts_with("rtt") || line.starts_with("round-trip") {
                let v: Vec<f64> = rest
                    .trim_end_matches(" ms")
                    .split('/')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
                if v.len() >= 3 {
                    (r.rtt_min_ms, r.rtt_avg_ms, r.rtt_max_ms) = (v[0], v[1], v[2]);
                }
            }
        }
    }
    if r.transmitted == 0 {
        return Err(Error::Parse(format!("ping output: {}", head(text))));
    }
    Ok(r)
}

/// `ping -c count -i interval` from `ns` to `dst`; returns the figures even when replies were
/// missing (check `received`).
pub fn ping(ns: &Netns, dst: IpAddr, count: u32, interval: Duration) -> Result<PingResult, Error> {
    let out = ns
        .command("ping")
        .args(["-q", "-n", "-c", &count.to_string()])
        .args(["-i", &format!("{:.3}", interval.as_secs_f64()), "-W", "1"])
        .arg(dst.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Spawn("ping".into(), e))?;
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// Every echo reply's RTT in ms, in order, from `count` pings from `ns` to `dst` `interval`
/// apart (root may go below ping's 200 ms floor). An answer with no reply line at all is an
/// error, not an empty list.
pub fn ping_rtts(
    ns: &Netns,
    dst: IpAddr,
    count: u32,
    interval: Duration,
) -> Result<Vec<f64>, Error> {
    let out = ns
        .command("ping")
        .args(["-n", "-c", &count.to_string()])
        .args(["-i", &format!("{:.3}", interval.as_secs_f64()), "-W", "1"])
        .arg(dst.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Spawn("ping".into(), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts = parse_ping_rtts(&text);
    if rtts.is_empty() {
        return Err(Error::Parse(format!("ping replies: {}", head(&text))));
    }
    Ok(rtts)
}

/// The `time=X ms` of each reply line of `ping` output.
pub fn parse_ping_rtts(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.split(" time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse().ok())
        .collect()
}

/// Waits until one ping from `ns` to `dst` is answered, up to `timeout`.
pub fn wait_reachable(ns: &Netns, dst: IpAddr, timeout: Duration) -> Result<Duration, Error> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let ok = ns
            .command("ping")
            .args(["-q", "-n", "-c", "1", "-W", "1", &dst.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Timeout(format!(
        "{dst} not reachable from {} within {timeout:?}",
        ns.name()
    )))
}

/// One ping with DF set and `payload` bytes of ICMP payload; returns (success, combined output).
pub fn ping_df(ns: &Netns, dst: IpAddr, payload: u32) -> Result<(bool, String), Error> {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            &payload.to_string(),
        ])
        .arg(dst.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Spawn("ping".into(), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ping_reply_lines_give_one_rtt_each() {
        let t = "PING 10.20.0.10 (10.20.0.10) 56(84) bytes of data.\n64 bytes from 10.20.0.10: icmp_seq=1 ttl=61 time=0.181 ms\n64 bytes from 10.20.0.10: icmp_seq=2 ttl=61 time=1.05 ms\n\n--- 10.20.0.10 ping statistics ---\nrtt min/avg/max/mdev = 0.181/0.615/1.050/0.434 ms\n";
        assert_eq!(parse_ping_rtts(t), vec![0.181, 1.05]);
    }

    #[test]
    fn ping_summary_lines_are_parsed() {
        let t = "--- 10.20.0.10 ping statistics ---\n5 packets transmitted, 4 received, 20% packet loss, time 41ms\nrtt min/avg/max/mdev = 0.031/0.045/0.071/0.013 ms\n";
        let r = parse_ping(t).unwrap();
        assert_eq!((r.transmitted, r.received), (5, 4));
        assert_eq!(
            (r.rtt_min_ms, r.rtt_avg_ms, r.rtt_max_ms),
            (0.031, 0.045, 0.071)
        );
    }

    #[test]
    fn an_iperf_result_missing_a_figure_is_an_error_not_a_zero() {
        let tcp = r#"{"start":{"test_start":{"protocol":"TCP"}},"end":{"sum_sent":{"retransmits":3},"sum_received":{"bits_per_second":1e9,"bytes":1000,"seconds":1.0}}}"#;
        assert_eq!(parse_iperf_json(tcp).unwrap().retransmits, 3);
        assert!(parse_iperf_json(&tcp.replace("\"retransmits\":3", "\"x\":3")).is_err());
        let udp = r#"{"start":{"test_start":{"protocol":"UDP"}},"end":{"sum":{"packets":100,"lost_packets":1,"bytes":1000,"bits_per_second":8000,"seconds":1.0}}}"#;
        assert_eq!(parse_iperf_json(udp).unwrap().udp_lost, 1);
        assert!(parse_iperf_json(&udp.replace("lost_packets", "lost")).is_err());
    }

    #[test]
    fn an_iperf_error_is_reported() {
        let e = parse_iperf_json(r#"{"start":{},"end":{},"error":"unable to connect"}"#);
        assert!(e.is_err());
    }
}
