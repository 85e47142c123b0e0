//! The head-end at scale: one real `tandem run` hub serving N branches (2N responder-only
//! tunnels on one port, one `conf.d/` file per branch through `include`), the branches played by
//! the [`branches`](crate::branches) emulator. One [`run`] per N measures, in this order:
//!
//! 1. **time until all tunnels are Up** from a cold start of every branch at once (on both
//!    ends), and from it the hub's **handshake throughput** (full handshakes per second) with its
//!    CPU seconds per handshake — a CPU-bound hub shows ~1 core busy during that phase;
//! 2. **idle CPU** of the hub over a window with only keepalives running, and its **RSS**;
//! 3. **`tandem status --json`** latency (wall time of the CLI, median and max of several) and
//!    size; and whether status calls stall the data plane: with probes running on every branch,
//!    the largest probe round-trip time over a window of [`STATUS_CALLS`] back-to-back status
//!    calls against the largest over an equally long window without any (the emulator's own
//!    scheduling is in both);
//! 4. **detection** of a silenced branch tunnel: the emulator stops one tunnel of one branch in
//!    both directions, and the hub's status is polled until it shows that tunnel not Up (the
//!    figure includes up to one status latency of polling resolution);
//! 5. **reload**: with probes running on every branch, `k` = min(100, N/2) branch files are
//!    removed and `k` new ones written, then `tandem reload`; the new branches must come Up and
//!    the branches left alone must lose no probe.
//!
//! The topology is two namespaces joined by a veth: `hub` (100.64.0.1, the hub's LAN 10.0.0.1 on
//! its loopback) and `br` (every branch address on its loopback, routed through 100.64.0.2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Error;
use crate::branches::{
    Emulator, HUB_SUBNET, Plan, branch_addr, branch_subnet, private_key, psk, public_key,
};
use crate::netns::{Netns, unique_prefix, veth};
use crate::process::Bg;
use crate::tandem::{TempDir, tandem_bin, tandem_cmd, write_private};

/// The hub's metrics endpoint, inside the hub's namespace.
const METRICS: &str = "127.0.0.1:9810";

/// The hub's one port.
pub const HUB: &str = "100.64.0.1:4500";
/// Most branch files a reload adds and removes.
pub const RELOAD_BRANCHES: u32 = 100;
/// Status calls in the data-plane stall window.
pub const STATUS_CALLS: usize = 100;

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleOpts {
    /// Branches (2 tunnels each).
    pub branches: u32,
    /// Hub and branch `dpd_interval`.
    pub dpd_interval: Duration,
    /// Hub and branch `dpd_timeout`.
    pub dpd_timeout: Duration,
    /// Length of the idle-CPU window.
    pub idle: Duration,
    /// How long all tunnels may take to come Up.
    pub up_timeout: Duration,
    /// Probe interval per branch during the reload.
    pub probe_interval: Duration,
    /// `tandem status --json` samples.
    pub status_samples: usize,
    /// The hub's `tandem` binary (else the one [`tandem_bin`] finds): `lab scale --compare`
    /// runs the same N against two builds.
    pub bin: Option<PathBuf>,
    /// Names the run in the table (the build compared).
    pub label: String,
    /// Receive the hub's datagrams in the branch namespace in a NAPI kernel thread rather than
    /// in the hub's own send call (see [`run`]); off (`lab scale --sender-pays`) shows the lab's
    /// old accounting.
    pub branch_napi_thread: bool,
}

impl ScaleOpts {
    /// The bench's settings for `n` branches: the default timers (250 ms / 1 s).
    pub fn bench(n: u32) -> Self {
        ScaleOpts {
            branches: n,
            dpd_interval: Duration::from_millis(250),
            dpd_timeout: Duration::from_secs(1),
            idle: Duration::from_secs(10),
            up_timeout: Duration::from_secs(180),
            probe_interval: Duration::from_millis(200),
            status_samples: 10,
            bin: None,
            label: String::new(),
            branch_napi_thread: true,
        }
    }
}

/// One run's figures (all times in milliseconds unless the name says otherwise).
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    /// The build (`lab scale --compare`), empty for the default one.
    pub label: String,
    /// Branches.
    pub branches: u32,
    /// Tunnels on the hub.
    pub tunnels: u32,
    /// `tandem check` wall time of the generated config (all files).
    pub check_ms: f64,
    /// From starting every branch to every tunnel Up on the branch side.
    pub up_branch_side_ms: f64,
    /// ... and on the hub (its status), polled.
    pub up_ms: f64,
    /// Tunnels per second over `up_ms`: full handshakes the hub completed per second.
    pub handshakes_per_s: f64,
    /// Hub CPU seconds spent in that phase, per handshake, in ms.
    pub cpu_ms_per_handshake: f64,
    /// Hub CPU use during that phase, in % of a core (about 100 % = CPU-bound).
    pub handshake_phase_cpu_pct: f64,
    /// Hub RSS with everything Up and idle, KiB.
    pub rss_kib: u64,
    /// Hub peak RSS over the run so far, KiB.
    pub rss_peak_kib: u64,
    /// The budget: 64 MiB + 16 KiB per tunnel, KiB.
    pub rss_budget_kib: u64,
    /// Hub CPU with only keepalives running, in % of one core.
    pub idle_cpu_pct: f64,
    /// Keepalive datagrams per second the hub receives plus sends (each side sends one or two per
    /// `dpd_interval` per tunnel, from the timers' definition).
    pub keepalives_per_s: f64,
    /// `tandem status --json`: median wall time.
    pub status_ms_median: f64,
    /// ... max.
    pub status_ms_max: f64,
    /// ... size of the JSON document, bytes.
    pub status_bytes: usize,
    /// Largest probe RTT over a window of [`STATUS_CALLS`] status calls, ms.
    pub probe_rtt_max_status_ms: f64,
    /// ... over an equally long window without status calls, ms.
    pub probe_rtt_max_quiet_ms: f64,
    /// Silenced branch tunnel seen not-Up on the hub, after.
    pub detect_ms: Option<f64>,
    /// The bound: `dpd_timeout + dpd_interval`.
    pub detect_bound_ms: f64,
    /// Branches removed and added by the reload.
    pub reload_changed: u32,
    /// `tandem reload` wall time.
    pub reload_ms: f64,
    /// From the reload to every added branch Up (branch side).
    pub reload_new_up_ms: Option<f64>,
    /// Probes sent by the branches the reload left alone, during the reload window.
    pub reload_probes_sent: u64,
    /// ... of which lost.
    pub reload_probes_lost: u64,
    /// Packets the hub dropped over the reload window, by reason (its
    /// `tandem_dropped_packets_total`; reasons with none left out).
    pub reload_hub_drops: BTreeMap<String, u64>,
}

struct Hub {
    ns: Netns,
    dir: PathBuf,
    daemon: Option<Bg>,
}

impl Hub {
    fn socket(&self) -> String {
        self.dir.join("control.sock").display().to_string()
    }

    fn config(&self) -> PathBuf {
        self.dir.join("tandem.toml")
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Bg::pid)
    }

    /// The hub's `tandem_dropped_packets_total` by reason, from its metrics endpoint.
    fn drops(&self) -> Result<BTreeMap<String, u64>, Error> {
        let text = self.ns.run(
            "python3",
            [
                "-c",
                &format!(
                    "import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics', timeout=10).read().decode())"
                ),
            ],
        )?;
        let drops: BTreeMap<String, u64> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("tandem_dropped_packets_total{reason=\"")?;
                let (reason, value) = rest.split_once("\"} ")?;
                Some((reason.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
        if drops.is_empty() {
            return Err(Error::Parse(format!(
                "the hub's metrics have no tandem_dropped_packets_total: {text}"
            )));
        }
        Ok(drops)
    }

    fn status_text(&self) -> Result<String, Error> {
        tandem_cmd(&["status", "--json", "--socket", &self.socket()], None)
    }

    /// (connection, tunnel, state) of every tunnel.
    fn states(&self) -> Option<Vec<(String, String, String)>> {
        let text = self.status_text().ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let mut out = Vec::new();
        for c in v["connections"].as_array()? {
            for t in c["tunnels"].as_array()? {
                out.push((
                    c["name"].as_str()?.to_owned(),
                    t["name"].as_str()?.to_owned(),
                    t["state"].as_str()?.to_owned(),
                ));
            }
        }
        Some(out)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(3));
        }
    }
}

fn b64(k: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn branch_file(dir: &Path, b: u32) -> PathBuf {
    dir.join("conf.d").join(format!("branch-{b:05}.toml"))
}

/// Writes branch `b`'s connection file and its two PSK files.
fn write_branch(dir: &Path, b: u32, opts: &ScaleOpts, run: u32) -> Result<(), Error> {
    let mut text = format!(
        "[[connection]]\nname = \"branch{b:05}\"\npeer_public_key = \"{}\"\n\
         local_subnets = [\"{HUB_SUBNET}\"]\nremote_subnets = [\"{}\"]\n\
         dpd_interval = \"{}ms\"\ndpd_timeout = \"{}ms\"\n",
        b64(&public_key(1 + b, run)),
        branch_subnet(b),
        opts.dpd_interval.as_millis(),
        opts.dpd_timeout.as_millis(),
    );
    for t in 0..2 {
        let name = format!("psk/b{b:05}-t{}.psk", t + 1);
        write_private(&dir.join(&name), &b64(&psk(b, t, run)))?;
        text.push_str(&format!(
            "\n[[connection.tunnel]]\nname = \"tunnel{}\"\nlocal = \"{HUB}\"\npsk_file = \"{name}\"\n",
            t + 1
        ));
    }
    std::fs::write(branch_file(dir, b), text)
        .map_err(|e| Error::Io(branch_file(dir, b).display().to_string(), e))
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if cond() {
            return Some(t.elapsed());
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One scale run with `opts.branches` branches: builds the lab, runs every measurement, tears
/// everything down. `log` gets one line per step (the bench prints it; the test ignores it).
pub fn run(opts: &ScaleOpts, log: &mut dyn FnMut(&str)) -> Result<ScaleResult, Error> {
    let n = opts.branches;
    let k = RELOAD_BRANCHES.min(n / 2);
    let run = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let prefix = unique_prefix();
    let hub_ns = Netns::new(&prefix, "hub")?;
    let br_ns = Netns::new(&prefix, "br")?;
    veth(&hub_ns, "wan0", &br_ns, "hub0")?;
    hub_ns.ipw("addr add 100.64.0.1/24 dev wan0")?;
    hub_ns.ipw("addr add 10.0.0.1/32 dev lo")?;
    hub_ns.ipw("route add 100.80.0.0/15 via 100.64.0.2")?;
    br_ns.ipw("addr add 100.64.0.2/24 dev hub0")?;
    if opts.branch_napi_thread {
        // A veth delivers a datagram inside the sender's send call: the branch namespace's IP
        // and UDP receive work and the emulator's wake-up would be charged to the hub's CPU
        // (a fifth of it at 1000 tunnels, by perf), work a real network does on the branches'
        // machines. With GRO on, the branch end takes the hub's datagrams through NAPI, and
        // threaded NAPI runs that in its own kernel thread, off the hub's account. A veth
        // whose sending end can segment TCP (wan0, by default) hands a datagram to the
        // receiving end's NAPI only if that end can also take UDP through GRO
        // (`rx-udp-gro-forwarding`); without it the datagrams still went through the backlog,
        // in the hub's send call (perf: `process_backlog` under the hub's `sendmmsg`, a quarter
        // of its samples at 1000 tunnels).
        br_ns.run(
            "ethtool",
            ["-K", "hub0", "gro", "on", "rx-udp-gro-forwarding", "on"],
        )?;
        br_ns.run("sh", ["-c", "echo 1 > /sys/class/net/hub0/threaded"])?;
    }
    // Every branch address on the branch namespace's loopback, in one `ip -batch`.
    let tmp = TempDir::new("scale")?;
    let dir = tmp.path().join("hub");
    std::fs::create_dir_all(dir.join("conf.d")).map_err(|e| Error::Io("conf.d".into(), e))?;
    std::fs::create_dir_all(dir.join("psk")).map_err(|e| Error::Io("psk".into(), e))?;
    let batch = tmp.path().join("addrs.batch");
    let mut lines = String::new();
    for b in 0..n + k {
        for t in 0..2 {
            lines.push_str(&format!("addr add {}/32 dev lo\n", branch_addr(b, t).ip()));
        }
    }
    std::fs::write(&batch, lines).map_err(|e| Error::Io(batch.display().to_string(), e))?;
    br_ns.ip(["-batch".as_ref(), batch.as_os_str()])?;

    // The hub's config: the main file and one file per branch.
    write_private(&dir.join("hub.key"), &b64(&private_key(0, run)))?;
    write_private(
        &dir.join("tandem.toml"),
        &format!(
            "include = [\"conf.d/*.toml\"]\n\n[gateway]\nprivate_key_file = \"hub.key\"\n\
             tun_name = \"tdm0\"\n\n[control]\nsocket = \"{}\"\nmetrics_listen = \"{METRICS}\"\n",
            dir.join("control.sock").display()
        ),
    )?;
    for b in 0..n {
        write_branch(&dir, b, opts, run)?;
    }
    let t = Instant::now();
    tandem_cmd(
        &[
            "check",
            "-c",
            &dir.join("tandem.toml").display().to_string(),
        ],
        None,
    )?;
    let check_ms = ms(t.elapsed());
    log(&format!(
        "{n} branches: config of {} files checked in {check_ms:.0} ms",
        n + 1
    ));

    let mut hub = Hub {
        ns: hub_ns,
        dir,
        daemon: None,
    };
    let bin = match &opts.bin {
        Some(b) => b.clone(),
        None => tandem_bin()?,
    };
    let mut cmd = hub.ns.command(bin);
    cmd.args(["run", "-c"])
        .arg(hub.config())
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("TANDEM_KEYLOG")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(hub.dir.join("daemon.log"))
                .map_err(|e| Error::Io("daemon.log".into(), e))?,
        );
    hub.daemon = Some(Bg::spawn(cmd)?);
    wait_for(Duration::from_secs(20), || hub.states().is_some()).ok_or_else(|| {
        Error::Timeout(format!(
            "the hub's control socket did not answer:\n{}",
            hub.log_tail()
        ))
    })?;

    let emu = Emulator::start(
        br_ns.name(),
        Plan {
            hub: HUB.parse().map_err(|_| Error::Parse(HUB.into()))?,
            hub_public: public_key(0, run),
            run,
            capacity: n + k,
            dpd_interval: opts.dpd_interval,
            dpd_timeout: opts.dpd_timeout,
        },
    )?;

    // 1. Cold start of every branch at once.
    let cpu0 = crate::process::cpu_seconds(hub.pid()).unwrap_or(0.0);
    let t0 = Instant::now();
    for b in 0..n {
        emu.start_branch(b);
    }
    let up_branch = wait_for(opts.up_timeout, || emu.up_count(0..n) == 2 * n as usize);
    let up_hub = wait_for(opts.up_timeout.saturating_sub(t0.elapsed()), || {
        hub.states()
            .is_some_and(|s| s.len() == 2 * n as usize && s.iter().all(|t| t.2 == "up"))
    });
    let (Some(up_branch), Some(_)) = (up_branch, up_hub) else {
        return Err(Error::Timeout(format!(
            "{} of {} tunnels Up on the branch side after {:?}\n{}",
            emu.up_count(0..n),
            2 * n,
            opts.up_timeout,
            hub.log_tail()
        )));
    };
    let up_all = t0.elapsed();
    let cpu1 = crate::process::cpu_seconds(hub.pid()).unwrap_or(0.0);
    let tunnels = 2 * n;
    let handshakes_per_s = f64::from(tunnels) / up_all.as_secs_f64();
    log(&format!(
        "all {tunnels} tunnels Up after {:.0} ms (branch side {:.0} ms), hub CPU {:.2} s",
        ms(up_all),
        ms(up_branch),
        cpu1 - cpu0
    ));

    // 2. Idle: keepalives only.
    std::thread::sleep(Duration::from_secs(2));
    let c0 = crate::process::cpu_seconds(hub.pid()).unwrap_or(0.0);
    let w0 = Instant::now();
    std::thread::sleep(opts.idle);
    let c1 = crate::process::cpu_seconds(hub.pid()).unwrap_or(0.0);
    let idle_cpu_pct = 100.0 * (c1 - c0) / w0.elapsed().as_secs_f64();
    let rss_kib = crate::process::rss_kib(hub.pid(), false).unwrap_or(0);
    let rss_peak_kib = crate::process::rss_kib(hub.pid(), true).unwrap_or(0);
    log(&format!(
        "idle: hub CPU {idle_cpu_pct:.1} % of a core, RSS {rss_kib} KiB (peak {rss_peak_kib})"
    ));

    // 3. Status.
    let mut lat = Vec::with_capacity(opts.status_samples);
    let mut status_bytes = 0;
    for _ in 0..opts.status_samples.max(1) {
        let t = Instant::now();
        let text = hub.status_text()?;
        lat.push(ms(t.elapsed()));
        status_bytes = text.len();
    }
    lat.sort_by(f64::total_cmp);
    let status_ms_median = lat[lat.len() / 2];
    let status_ms_max = lat[lat.len() - 1];
    log(&format!(
        "status --json: median {status_ms_median:.1} ms, max {status_ms_max:.1} ms, {status_bytes} bytes"
    ));
    // Does a status call stall the data plane? Probe RTT max with and without status calls.
    emu.probe(Some(opts.probe_interval));
    std::thread::sleep(Duration::from_secs(1));
    let _ = emu.take_rtt_max();
    let t = Instant::now();
    for _ in 0..STATUS_CALLS {
        hub.status_text()?;
    }
    let window = t.elapsed();
    let probe_rtt_max_status_ms = ms(emu.take_rtt_max());
    std::thread::sleep(window);
    let probe_rtt_max_quiet_ms = ms(emu.take_rtt_max());
    emu.probe(None);
    log(&format!(
        "probe RTT max: {probe_rtt_max_status_ms:.1} ms over {STATUS_CALLS} status calls ({:.0} ms), {probe_rtt_max_quiet_ms:.1} ms over as long without",
        ms(window)
    ));
    std::thread::sleep(Duration::from_millis(500));

    // 4. Detection of a silenced branch tunnel.
    let victim = n / 2;
    let name = format!("branch{victim:05}");
    emu.silence(victim, 0, true);
    let ts = Instant::now();
    let detect = wait_for(opts.dpd_timeout * 10, || {
        hub.states().is_some_and(|s| {
            s.iter()
                .any(|t| t.0 == name && t.1 == "tunnel1" && t.2 != "up")
        })
    })
    .map(|_| ms(ts.elapsed()));
    emu.silence(victim, 0, false);
    log(&format!(
        "a silenced tunnel of {name} seen down on the hub after {} (bound {:.0} ms)",
        detect.map_or("never".to_owned(), |d| format!("{d:.0} ms")),
        ms(opts.dpd_timeout + opts.dpd_interval)
    ));
    let _ = wait_for(Duration::from_secs(20), || emu.is_up(victim, 0));

    // 5. Reload under probes: remove k branches, add k new ones.
    emu.probe(Some(opts.probe_interval));
    std::thread::sleep(Duration::from_secs(2));
    let others = k..n;
    let before: Vec<_> = others.clone().map(|b| emu.probes(b)).collect();
    let drops0 = hub.drops()?;
    for b in n..n + k {
        write_branch(&hub.dir, b, opts, run)?;
    }
    for b in 0..k {
        std::fs::remove_file(branch_file(&hub.dir, b))
            .map_err(|e| Error::Io(format!("branch file {b}"), e))?;
    }
    let t = Instant::now();
    tandem_cmd(&["reload", "--socket", &hub.socket()], None)?;
    let reload_ms = ms(t.elapsed());
    for b in 0..k {
        emu.stop_branch(b);
    }
    for b in n..n + k {
        emu.start_branch(b);
    }
    let reload_new_up_ms = wait_for(opts.up_timeout, || emu.up_count(n..n + k) == 2 * k as usize)
        .map(|_| ms(t.elapsed()));
    std::thread::sleep(Duration::from_secs(2));
    emu.probe(None);
    // Let the last probes' replies come back.
    std::thread::sleep(Duration::from_millis(1500));
    let drops1 = hub.drops()?;
    let reload_hub_drops: BTreeMap<String, u64> = drops1
        .iter()
        .filter_map(|(r, &n)| {
            let d = n.saturating_sub(drops0.get(r).copied().unwrap_or(0));
            (d > 0).then(|| (r.clone(), d))
        })
        .collect();
    let (mut sent, mut lost) = (0, 0);
    for (b, p0) in others.zip(before) {
        let p1 = emu.probes(b);
        let s = p1.sent - p0.sent;
        let r = p1.received - p0.received;
        sent += s;
        lost += s.saturating_sub(r);
    }
    log(&format!(
        "reload (-{k} +{k} branches) in {reload_ms:.0} ms, new branches Up after {}; {lost} of {sent} probes lost on the other {} branches",
        reload_new_up_ms.map_or("never".to_owned(), |d| format!("{d:.0} ms")),
        n - k
    ));
    log(&format!(
        "hub drops over the reload window: {}",
        if reload_hub_drops.is_empty() {
            "none".to_owned()
        } else {
            reload_hub_drops
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    let after_states = hub.states().unwrap_or_default();
    let expected = 2 * n as usize;
    if after_states.len() != expected {
        log(&format!(
            "warning: the hub lists {} tunnels after the reload, expected {expected}",
            after_states.len()
        ));
    }

    drop(emu);
    drop(hub);
    drop(br_ns);
    Ok(ScaleResult {
        label: opts.label.clone(),
        branches: n,
        tunnels,
        check_ms,
        up_branch_side_ms: ms(up_branch),
        up_ms: ms(up_all),
        handshakes_per_s,
        cpu_ms_per_handshake: 1e3 * (cpu1 - cpu0) / f64::from(tunnels),
        handshake_phase_cpu_pct: 100.0 * (cpu1 - cpu0) / up_all.as_secs_f64(),
        rss_kib,
        rss_peak_kib,
        rss_budget_kib: 64 * 1024 + 16 * u64::from(tunnels),
        idle_cpu_pct,
        keepalives_per_s: 2.0
            * f64::from(tunnels)
            * f64::from(tandem_engine::keepalives_per_interval(opts.dpd_interval))
            / opts.dpd_interval.as_secs_f64(),
        status_ms_median,
        status_ms_max,
        status_bytes,
        probe_rtt_max_status_ms,
        probe_rtt_max_quiet_ms,
        detect_ms: detect,
        detect_bound_ms: ms(opts.dpd_timeout + opts.dpd_interval),
        reload_changed: k,
        reload_ms,
        reload_new_up_ms,
        reload_probes_sent: sent,
        reload_probes_lost: lost,
        reload_hub_drops,
    })
}

/// A hand-written SVG: four panels (time to all Up, RSS per tunnel, idle CPU, status latency)
/// against the number of tunnels, one point per run, on linear axes.
pub fn svg(results: &[ScaleResult]) -> String {
    type Metric = (&'static str, &'static str, fn(&ScaleResult) -> f64);
    let panels: [Metric; 4] = [
        ("time until all Up", "s", |r| r.up_ms / 1e3),
        ("hub RSS", "MiB", |r| r.rss_kib as f64 / 1024.0),
        ("hub idle CPU", "% of a core", |r| r.idle_cpu_pct),
        ("status --json", "ms (median)", |r| r.status_ms_median),
    ];
    let (pw, ph, m) = (300.0, 200.0, 45.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        2.0 * (pw + m) + m,
        2.0 * (ph + m) + m
    );
    let xmax = results
        .iter()
        .map(|r| f64::from(r.tunnels))
        .fold(1.0, f64::max);
    for (i, (title, unit, f)) in panels.iter().enumerate() {
        let ox = m + (i % 2) as f64 * (pw + m);
        let oy = m + (i / 2) as f64 * (ph + m);
        let ymax = results.iter().map(f).fold(0.0, f64::max).max(1e-9) * 1.15;
        out.push_str(&format!(
            "<g transform=\"translate({ox},{oy})\">\n<text x=\"0\" y=\"-8\" font-weight=\"bold\">{title} ({unit})</text>\n\
             <line x1=\"0\" y1=\"{ph}\" x2=\"{pw}\" y2=\"{ph}\" stroke=\"black\"/>\n\
             <line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"{ph}\" stroke=\"black\"/>\n\
             <text x=\"{pw}\" y=\"{}\" text-anchor=\"end\">tunnels (max {xmax})</text>\n\
             <text x=\"-4\" y=\"8\" text-anchor=\"end\">{ymax:.1}</text>\n<text x=\"-4\" y=\"{ph}\" text-anchor=\"end\">0</text>\n",
            ph + 28.0
        ));
        let mut labels: Vec<&str> = results.iter().map(|r| r.label.as_str()).collect();
        labels.dedup();
        labels.sort_unstable();
        labels.dedup();
        for (li, label) in labels.iter().enumerate() {
            let color = ["steelblue", "darkorange", "seagreen", "firebrick"][li % 4];
            let runs: Vec<&ScaleResult> = results.iter().filter(|r| r.label == *label).collect();
            let pts: Vec<(f64, f64)> = runs
                .iter()
                .map(|r| (pw * f64::from(r.tunnels) / xmax, ph - ph * f(r) / ymax))
                .collect();
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            out.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                path.join(" ")
            ));
            if !label.is_empty() {
                out.push_str(&format!(
                    "<text x=\"{pw}\" y=\"{}\" text-anchor=\"end\" fill=\"{color}\">{label}</text>\n",
                    12.0 * (li as f64 + 1.0)
                ));
            }
            for ((x, y), r) in pts.iter().zip(runs) {
                out.push_str(&format!(
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1}</text>\n<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                    y - 6.0,
                    f(r),
                    ph + 14.0,
                    r.tunnels
                ));
            }
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}
