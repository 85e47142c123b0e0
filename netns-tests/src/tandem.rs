//! tandem in the lab: finding the binary, keys and PSKs, docs/configuration.md configs for both gateways in a
//! private temporary directory, the daemons (`tandem run` inside `cgw` and `vpcgw`), and the
//! control commands (`status --json`, `failover`, `reload`, `drill`) over each daemon's socket.
//!
//! The binary is `$TANDEM_BIN`, else `tandem` next to the current executable, else one directory
//! up (test executables live in `target/<profile>/deps`, the binary in `target/<profile>`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Error;
use crate::netns::{Netns, checked};
use crate::process::Bg;
use crate::topo::{Family, Isp, Lab, cgw_wan, office_net, vpc_net, vpcgw_wan};

/// The connection name used in the lab.
pub const CONNECTION: &str = "lab-vpc";

/// Finds the tandem binary, or explains how to build it.
pub fn tandem_bin() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("TANDEM_BIN") {
        let p = PathBuf::from(p);
        if p.exists() {
            return Ok(p);
        }
        return Err(Error::Tandem(format!(
            "TANDEM_BIN={} does not exist",
            p.display()
        )));
    }
    if let Ok(cur) = std::env::current_exe() {
        if let Some(dir) = cur.parent() {
            for cand in [dir.join("tandem"), dir.join("../tandem")] {
                if cand.is_file() {
                    return Ok(cand);
                }
            }
        }
    }
    Err(Error::Tandem(
        "the tandem binary was not found next to this program (or in $TANDEM_BIN); build both \
         with: cargo build --release -p tandem -p tandem-netns-tests"
            .into(),
    ))
}

/// A private temporary directory (mode 0700), removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Removes the `tdm-<pid>-*` directories of lab processes that no longer exist (a run killed
/// with SIGKILL cannot clean up after itself), once per process.
fn reap_stale_dirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| reap_stale_dirs_in(&std::env::temp_dir()));
}

fn reap_stale_dirs_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(crate::netns::of_dead_lab)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod reap_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_directories_of_dead_lab_processes_are_removed_and_the_others_kept() {
        let root = std::env::temp_dir().join(format!("reap-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Above any pid_max: no such process.
        let dead = root.join("tdm-4294967-0-tandem");
        let alive = root.join(format!("tdm-{}-0-tandem", std::process::id()));
        let other = root.join("tdm-notapid-0-x");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
        }
        reap_stale_dirs_in(&root);
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

impl TempDir {
    /// Creates `$TMPDIR/tdm-<pid>-<n>-<tag>` (after removing those of dead lab processes).
    pub fn new(tag: &str) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        reap_stale_dirs();
        let path = std::env::temp_dir().join(format!(
            "tdm-{}-{}-{tag}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::Io(path.display().to_string(), e))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Writes `text` to `path` with mode 0600.
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Io(path.display().to_string(), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::Io(path.display().to_string(), e))
}

/// Runs `tandem args…` on the host (key generation, control commands).
pub fn tandem_cmd(args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let bin = tandem_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    match stdin {
        None => checked(cmd),
        Some(input) => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let desc = crate::netns::describe(&cmd);
            let mut child = cmd.spawn().map_err(|e| Error::Spawn(desc.clone(), e))?;
            if let Some(mut s) = child.stdin.take() {
                s.write_all(input.as_bytes())
                    .map_err(|e| Error::Spawn(desc.clone(), e))?;
            }
            let out = child
                .wait_with_output()
                .map_err(|e| Error::Spawn(desc.clone(), e))?;
            if !out.status.success() {
                return Err(Error::Command {
                    cmd: desc,
                    status: out.status.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
                    stdout: String::from_utf8_lossy(&out.stdout).trim().into(),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    }
}

/// Timers and options written into both gateways' configs.
#[derive(Debug, Clone, PartialEq)]
pub struct TandemOpts {
    /// Underlay family (the tunnels' outer addresses).
    pub underlay: Family,
    /// `dpd_interval`.
    pub dpd_interval: Duration,
    /// `dpd_timeout`.
    pub dpd_timeout: Duration,
    /// `failback` (`None` = "never").
    pub failback: Option<Duration>,
    /// `mode`.
    pub mode: &'static str,
    /// `[gateway] mtu` (None = the daemon's default).
    pub mtu: Option<u16>,
    /// `mss_clamp`.
    pub mss_clamp: bool,
    /// Set `TANDEM_KEYLOG` for both daemons (files `cgw.keylog`, `vpcgw.keylog` in the dir).
    pub keylog: bool,
    /// `RUST_LOG` for the daemons.
    pub log: &'static str,
    /// Extra environment for both daemons (e.g. tuning knobs for a same-run A/B bench).
    pub env: Vec<(String, String)>,
    /// `timers = "<profile>"` instead of explicit `dpd_interval` / `dpd_timeout` lines (those
    /// two fields must then hold the profile's values: the bounds are computed from them).
    pub timers: Option<&'static str>,
    /// The `tandem` binary to run (a same-run A/B of two builds); `None`: [`tandem_bin`].
    pub bin: Option<PathBuf>,
}

impl Default for TandemOpts {
    /// The drill timers of docs/protocol.md (100 ms / 300 ms), failback after 1 s.
    fn default() -> Self {
        TandemOpts {
            underlay: Family::V4,
            dpd_interval: Duration::from_millis(100),
            dpd_timeout: Duration::from_millis(300),
            failback: Some(Duration::from_secs(1)),
            mode: "active-standby",
            mtu: Some(1400),
            mss_clamp: true,
            keylog: false,
            log: "info",
            env: Vec::new(),
            timers: None,
            bin: None,
        }
    }
}

fn dur(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn sock(ip: std::net::IpAddr) -> String {
    std::net::SocketAddr::new(ip, 4500).to_string()
}

/// Which side a gateway is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `cgw`, the customer gateway.
    Cgw,
    /// `vpcgw`, the head-end (with two head-ends: tunnel1's).
    Vpcgw,
    /// `vpcgw2`, the second head-end (tunnel2's), with `HeadEnds::Two`.
    Vpcgw2,
}

impl Side {
    /// `cgw` / `vpcgw`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Cgw => "cgw",
            Side::Vpcgw => "vpcgw",
            Side::Vpcgw2 => "vpcgw2",
        }
    }
}

/// Keys, PSKs and both configs, in a private temporary directory.
#[derive(Debug)]
pub struct TandemSetup {
    dir: TempDir,
    opts: TandemOpts,
    two_head_ends: bool,
}

impl TandemSetup {
    /// Generates keys with `tandem genkey`/`pubkey`, PSKs with `tandem genpsk`, and writes both
    /// gateways' configs (docs/configuration.md).
    pub fn new(opts: TandemOpts) -> Result<Self, Error> {
        Self::build(opts, false)
    }

    /// The same for `HeadEnds::Two`: `cgw` has tunnel1 to `vpcgw` and tunnel2 to `vpcgw2` (each
    /// tunnel with its own `peer_public_key`); each head-end has its one tunnel.
    pub fn new_two_head_ends(opts: TandemOpts) -> Result<Self, Error> {
        Self::build(opts, true)
    }

    fn build(opts: TandemOpts, two_head_ends: bool) -> Result<Self, Error> {
        let dir = TempDir::new("tandem")?;
        let p = dir.path();
        let mut pubs = Vec::new();
        for side in [Side::Cgw, Side::Vpcgw, Side::Vpcgw2] {
            let key = tandem_cmd(&["genkey"], None)?;
            write_private(&p.join(format!("{}.key", side.name())), &key)?;
            pubs.push(tandem_cmd(&["pubkey"], Some(&key))?.trim().to_string());
        }
        for t in ["tunnel1", "tunnel2"] {
            let psk = tandem_cmd(&["genpsk"], None)?;
            write_private(&p.join(format!("{t}.psk")), &psk)?;
        }
        let s = TandemSetup {
            dir,
            opts,
            two_head_ends,
        };
        let (cgw, he1, he2) = (&pubs[0], &pubs[1], &pubs[2]);
        if two_head_ends {
            s.write_config(Side::Cgw, &[(Isp::One, he1), (Isp::Two, he2)])?;
            s.write_config(Side::Vpcgw, &[(Isp::One, cgw)])?;
            s.write_config(Side::Vpcgw2, &[(Isp::Two, cgw)])?;
        } else {
            s.write_config(Side::Cgw, &[(Isp::One, he1), (Isp::Two, he1)])?;
            s.write_config(Side::Vpcgw, &[(Isp::One, cgw), (Isp::Two, cgw)])?;
        }
        Ok(s)
    }

    /// Whether the configs are for two head-ends.
    pub fn two_head_ends(&self) -> bool {
        self.two_head_ends
    }

    /// The directory holding keys, configs, sockets, logs and key logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The options.
    pub fn opts(&self) -> &TandemOpts {
        &self.opts
    }

    /// Path of a side's config.
    pub fn config_path(&self, side: Side) -> PathBuf {
        self.dir().join(format!("{}.toml", side.name()))
    }

    /// Path of a side's control socket.
    pub fn socket_path(&self, side: Side) -> PathBuf {
        self.dir().join(format!("{}.sock", side.name()))
    }

    /// Path of a side's log (the daemon's stderr).
    pub fn log_path(&self, side: Side) -> PathBuf {
        self.dir().join(format!("{}.log", side.name()))
    }

    /// Path of a side's key log (when `keylog` is on).
    pub fn keylog_path(&self, side: Side) -> PathBuf {
        self.dir().join(format!("{}.keylog", side.name()))
    }

    /// The config text for `side`, with one tunnel per `(isp, peer public key)`.
    pub fn config_text(&self, side: Side, tunnels: &[(Isp, &String)]) -> String {
        let o = &self.opts;
        let d = self.dir().display().to_string();
        type NetFn = fn(Family) -> &'static str;
        let (local_nets, remote_nets): (NetFn, NetFn) = match side {
            Side::Cgw => (office_net, vpc_net),
            Side::Vpcgw | Side::Vpcgw2 => (vpc_net, office_net),
        };
        let quote = |f: NetFn| {
            Family::BOTH
                .iter()
                .map(|&fam| format!("\"{}\"", f(fam)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut t = format!(
            "# tandem lab config for {side} (generated by tandem-netns-tests)\n\
             [gateway]\nprivate_key_file = \"{d}/{side}.key\"\ntun_name = \"tandem0\"\n",
            side = side.name()
        );
        if let Some(m) = o.mtu {
            t += &format!("mtu = {m}\n");
        }
        t += &format!(
            "\n[control]\nsocket = \"{d}/{side}.sock\"\n\n[[connection]]\nname = \"{CONNECTION}\"\n\
             local_subnets = [{ln}]\nremote_subnets = [{rn}]\n\
             mode = \"{mode}\"\nfailback = \"{fb}\"\n{timers}mss_clamp = {mss}\n",
            side = side.name(),
            ln = quote(local_nets),
            rn = quote(remote_nets),
            mode = o.mode,
            fb = o.failback.map_or("never".to_string(), dur),
            timers = match o.timers {
                Some(p) => format!("timers = \"{p}\"\n"),
                None => format!(
                    "dpd_interval = \"{}\"\ndpd_timeout = \"{}\"\n",
                    dur(o.dpd_interval),
                    dur(o.dpd_timeout)
                ),
            },
            mss = o.mss_clamp,
        );
        for &(isp, peer_pub) in tunnels {
            let (local, remote) = match side {
                Side::Cgw => (cgw_wan(isp, o.underlay), vpcgw_wan(isp, o.underlay)),
                _ => (vpcgw_wan(isp, o.underlay), cgw_wan(isp, o.underlay)),
            };
            let n = match isp {
                Isp::One => 1,
                Isp::Two => 2,
            };
            t += &format!(
                "\n[[connection.tunnel]]\nname = \"tunnel{n}\"\nlocal = \"{l}\"\nremote = \"{r}\"\n\
                 peer_public_key = \"{peer_pub}\"\npsk_file = \"{d}/tunnel{n}.psk\"\npriority = {n}\n",
                l = sock(local),
                r = sock(remote),
            );
        }
        t
    }

    fn write_config(&self, side: Side, tunnels: &[(Isp, &String)]) -> Result<(), Error> {
        write_private(&self.config_path(side), &self.config_text(side, tunnels))
    }

    /// Rewrites `side`'s config with `edit` applied to its text (for reload tests).
    pub fn edit_config(
        &self,
        side: Side,
        edit: impl FnOnce(String) -> String,
    ) -> Result<(), Error> {
        let p = self.config_path(side);
        let text =
            std::fs::read_to_string(&p).map_err(|e| Error::Io(p.display().to_string(), e))?;
        write_private(&p, &edit(text))
    }
}

/// One running `tandem run` inside a gateway namespace.
#[derive(Debug)]
pub struct Daemon {
    side: Side,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    bg: Bg,
}

impl Daemon {
    /// Starts `tandem run -c <side>.toml` inside `ns`, logging to `<side>.log`.
    pub fn start(setup: &TandemSetup, side: Side, ns: &Netns) -> Result<Self, Error> {
        let mut env = setup.opts().env.clone();
        env.push(("RUST_LOG".into(), setup.opts().log.into()));
        if setup.opts().keylog {
            env.push((
                "TANDEM_KEYLOG".into(),
                setup.keylog_path(side).display().to_string(),
            ));
        }
        let bin = match &setup.opts().bin {
            Some(b) => b.clone(),
            None => tandem_bin()?,
        };
        Self::start_bin(
            &bin,
            ns,
            side,
            &setup.config_path(side),
            &setup.socket_path(side),
            &setup.log_path(side),
            &env,
        )
    }

    /// Starts `tandem run -c CONFIG` inside `ns` with `env`, logging to `log`, and waits until
    /// its control socket (`socket`, as the config names it) answers. `side` only labels it.
    pub fn start_files(
        ns: &Netns,
        side: Side,
        config: &Path,
        socket: &Path,
        log: &Path,
        env: &[(String, String)],
    ) -> Result<Self, Error> {
        Self::start_bin(&tandem_bin()?, ns, side, config, socket, log, env)
    }

    /// As [`Self::start_files`], running `bin`.
    fn start_bin(
        bin: &Path,
        ns: &Netns,
        side: Side,
        config: &Path,
        socket: &Path,
        log: &Path,
        env: &[(String, String)],
    ) -> Result<Self, Error> {
        let log = log.to_path_buf();
        let logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::Io(log.display().to_string(), e))?;
        let logf2 = logf
            .try_clone()
            .map_err(|e| Error::Io(log.display().to_string(), e))?;
        let mut cmd = ns.command(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .stdout(logf)
            .stderr(logf2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut d = Daemon {
            side,
            socket: socket.to_path_buf(),
            config: config.to_path_buf(),
            log,
            bg: Bg::spawn(cmd)?,
        };
        // Ready when the control socket answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if d.status().is_ok() {
                return Ok(d);
            }
            if !d.bg.is_running() {
                return Err(Error::Tandem(format!(
                    "tandem run ({}) exited at start: {}",
                    side.name(),
                    d.log_tail(20)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "tandem ({}) control socket never answered: {}",
                    side.name(),
                    d.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Which gateway this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The process (pid, CPU, RSS).
    pub fn process(&self) -> &Bg {
        &self.bg
    }

    /// Whether the daemon still runs.
    pub fn is_running(&mut self) -> bool {
        self.bg.is_running()
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> Result<String, Error> {
        let sock = self.socket.display().to_string();
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--socket", &sock]);
        tandem_cmd(&v, None)
    }

    /// `tandem status --json`.
    pub fn status(&self) -> Result<Status, Error> {
        let out = self.ctl(&["status", "--json"])?;
        let v: Value = serde_json::from_str(&out)
            .map_err(|e| Error::Parse(format!("status JSON {out:?}: {e}")))?;
        Ok(Status(v))
    }

    /// `tandem status` (the human table).
    pub fn status_text(&self) -> Result<String, Error> {
        self.ctl(&["status"])
    }

    /// `tandem failover CONNECTION [--to T | --auto]`.
    pub fn failover(&self, to: Option<&str>, auto: bool) -> Result<String, Error> {
        let mut args = vec!["failover", CONNECTION];
        if let Some(t) = to {
            args.extend(["--to", t]);
        }
        if auto {
            args.push("--auto");
        }
        self.ctl(&args)
    }

    /// `tandem reload`.
    pub fn reload(&self) -> Result<String, Error> {
        self.ctl(&["reload"])
    }

    /// `tandem drill CONNECTION --duration D`.
    pub fn drill(&self, duration: Duration, graceful: bool) -> Result<String, Error> {
        self.drill_with_report(duration, graceful, None)
    }

    /// `tandem drill CONNECTION --duration D [--report FILE.html]`.
    pub fn drill_with_report(
        &self,
        duration: Duration,
        graceful: bool,
        report: Option<&Path>,
    ) -> Result<String, Error> {
        let d = format!("{}ms", duration.as_millis());
        let page = report.map(|p| p.display().to_string());
        let mut args = vec!["drill", CONNECTION, "--duration", &d];
        if graceful {
            args.push("--graceful");
        }
        if let Some(page) = &page {
            args.extend(["--report", page]);
        }
        self.ctl(&args)
    }

    /// Sends a signal (`KILL`, `TERM`, `HUP`).
    pub fn signal(&self, sig: &str) -> Result<(), Error> {
        self.bg.signal(sig)
    }

    /// SIGKILLs the daemon.
    pub fn kill(&mut self) {
        self.bg.kill();
    }

    /// SIGTERM, then SIGKILL after a second.
    pub fn stop(&mut self) {
        self.bg.stop(Duration::from_secs(1));
    }

    /// The config file it runs.
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

/// A `tandem status --json` document (docs/cli.md).
#[derive(Debug, Clone)]
pub struct Status(pub Value);

impl Status {
    fn conn(&self) -> &Value {
        &self.0["connections"][0]
    }

    /// The active tunnel's name, if any.
    pub fn active(&self) -> Option<String> {
        self.conn()["active_tunnel"].as_str().map(str::to_string)
    }

    /// The state of tunnel `name`.
    pub fn state(&self, name: &str) -> Option<String> {
        self.tunnel(name)
            .and_then(|t| t["state"].as_str())
            .map(str::to_string)
    }

    /// Tunnel `name`'s object.
    pub fn tunnel(&self, name: &str) -> Option<&Value> {
        self.conn()["tunnels"]
            .as_array()?
            .iter()
            .find(|t| t["name"].as_str() == Some(name))
    }

    /// A numeric field of tunnel `name` (`rx_packets`, `failovers`, `last_handshake_unix`, …).
    pub fn num(&self, name: &str, field: &str) -> Option<f64> {
        self.tunnel(name).and_then(|t| t[field].as_f64())
    }

    /// Tunnel `name`'s (spi_in, spi_out), parsed from numbers or hex/decimal strings.
    pub fn spis(&self, name: &str) -> Option<(u32, u32)> {
        let t = self.tunnel(name)?;
        Some((parse_spi(&t["spi_in"])?, parse_spi(&t["spi_out"])?))
    }

    /// Whether every tunnel this daemon has is `up` (and it has at least one).
    pub fn all_up(&self) -> bool {
        self.conn()["tunnels"].as_array().is_some_and(|ts| {
            !ts.is_empty() && ts.iter().all(|t| t["state"].as_str() == Some("up"))
        })
    }

    /// Whether every tunnel of every connection is `up` (and there is at least one).
    pub fn every_tunnel_up(&self) -> bool {
        self.0["connections"].as_array().is_some_and(|cs| {
            cs.iter().all(|c| {
                c["tunnels"].as_array().is_some_and(|ts| {
                    !ts.is_empty() && ts.iter().all(|t| t["state"].as_str() == Some("up"))
                })
            })
        })
    }

    /// Whether both tunnels are `up`.
    pub fn both_up(&self) -> bool {
        self.state("tunnel1").as_deref() == Some("up")
            && self.state("tunnel2").as_deref() == Some("up")
    }
}

fn parse_spi(v: &Value) -> Option<u32> {
    if let Some(n) = v.as_u64() {
        return u32::try_from(n).ok();
    }
    let s = v.as_str()?;
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Both gateways running tandem in a lab.
#[derive(Debug)]
pub struct TandemPair {
    /// Keys, configs, logs.
    pub setup: TandemSetup,
    /// The customer gateway's daemon.
    pub cgw: Daemon,
    /// The head-end's daemon (tunnel1's with two head-ends).
    pub vpcgw: Daemon,
    /// The second head-end's daemon, with `HeadEnds::Two`.
    pub vpcgw2: Option<Daemon>,
}

impl TandemPair {
    /// Writes configs and starts the daemons (two head-ends when the lab has them), then waits
    /// until every tunnel is Up on every side.
    pub fn start(lab: &Lab, opts: TandemOpts) -> Result<Self, Error> {
        let two = lab.vpcgw2.is_some();
        let setup = if two {
            TandemSetup::new_two_head_ends(opts)?
        } else {
            TandemSetup::new(opts)?
        };
        let vpcgw = Daemon::start(&setup, Side::Vpcgw, &lab.vpcgw)?;
        let vpcgw2 = match &lab.vpcgw2 {
            Some(ns) => Some(Daemon::start(&setup, Side::Vpcgw2, ns)?),
            None => None,
        };
        let cgw = Daemon::start(&setup, Side::Cgw, &lab.cgw)?;
        let pair = TandemPair {
            setup,
            cgw,
            vpcgw,
            vpcgw2,
        };
        pair.wait_both_up(Duration::from_secs(10))?;
        // Tests start from the steady state: every side on its preferred tunnel (a side whose
        // tunnel2 came up first fails back to tunnel1 after the `failback` hold-down).
        pair.wait_until(Duration::from_secs(10), "both sides on tunnel1", |a, b| {
            a.active().as_deref() == Some("tunnel1") && b.active().as_deref() == Some("tunnel1")
        })?;
        Ok(pair)
    }

    /// The daemon on `side`.
    pub fn daemon(&self, side: Side) -> &Daemon {
        match (side, &self.vpcgw2) {
            (Side::Cgw, _) => &self.cgw,
            (Side::Vpcgw2, Some(d)) => d,
            _ => &self.vpcgw,
        }
    }

    /// Waits until every tunnel is Up in every daemon's status.
    pub fn wait_both_up(&self, timeout: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        loop {
            let a = self.cgw.status();
            let b = self.vpcgw.status();
            let c = self.vpcgw2.as_ref().map(Daemon::status);
            let c_up = match &c {
                None => true,
                Some(Ok(s)) => s.all_up(),
                Some(Err(_)) => false,
            };
            if let (Ok(a), Ok(b)) = (&a, &b) {
                if a.both_up() && b.all_up() && c_up {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "tunnels not Up after {timeout:?}: cgw {:?} vpcgw {:?} vpcgw2 {:?}\ncgw log:\n{}\nvpcgw log:\n{}",
                    a.map(|s| s.0),
                    b.map(|s| s.0),
                    c.map(|r| r.map(|s| s.0)),
                    self.cgw.log_tail(15),
                    self.vpcgw.log_tail(15)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until no SA has changed on either side for `stable_for` (the head-end, started
    /// first, retries its initiation about a second later, which completes as a rekey), up to
    /// `timeout`; returns how long it took.
    pub fn wait_settled(&self, stable_for: Duration, timeout: Duration) -> Result<Duration, Error> {
        let spis = || -> Result<Vec<Option<(u32, u32)>>, Error> {
            let a = self.cgw.status()?;
            let b = self.vpcgw.status()?;
            Ok(["tunnel1", "tunnel2"]
                .iter()
                .flat_map(|t| [a.spis(t), b.spis(t)])
                .collect())
        };
        let start = Instant::now();
        let mut last = spis()?;
        let mut stable_since = Instant::now();
        while stable_since.elapsed() < stable_for {
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "SAs still changing after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
            let now = spis()?;
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        Ok(start.elapsed())
    }

    /// Waits until `pred` holds for both sides' status, returning how long it took.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Status, &Status) -> bool,
    ) -> Result<Duration, Error> {
        let start = Instant::now();
        loop {
            if let (Ok(a), Ok(b)) = (self.cgw.status(), self.vpcgw.status()) {
                if pred(&a, &b) {
                    return Ok(start.elapsed());
                }
                if start.elapsed() > timeout {
                    return Err(Error::Timeout(format!(
                        "{what} after {timeout:?}: cgw {} vpcgw {}",
                        a.0, b.0
                    )));
                }
            } else if start.elapsed() > timeout {
                return Err(Error::Timeout(format!("{what}: status unavailable")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
