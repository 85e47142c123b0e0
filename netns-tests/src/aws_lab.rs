//! The AWS-like lab of the IKEv2 tests: the namespace lab with two head-ends, a strongSwan charon
//! on the head-end of each ISP a test needs, standing in for one of the two endpoints AWS gives a
//! Site-to-Site VPN connection (tunnel1 ends on `vpcgw` over isp1, tunnel2 on `vpcgw2` over
//! isp2), the route into charon's libipsec TUN, the VPC routed via `vpcgw`; and `tandem run` on
//! `cgw`, with its config, PSK files, log and key log in one temporary directory.

use std::fs::OpenOptions;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;
use crate::charon::{Charon, route_into_libipsec};
use crate::process::Bg;
use crate::tandem::{Status, TempDir, tandem_bin, tandem_cmd, write_private};
use crate::topo::{Family, HeadEnds, Isp, Lab, cgw_wan, vpcgw_wan};

/// The two tunnels' PSKs, ASCII as AWS gives them.
pub const PSKS: [&str; 2] = [
    "tunnel1.psk_from_aws.0123456789",
    "tunnel2.psk_from_aws.9876543210",
];
/// The IKE proposal AWS's endpoints are configured with here.
pub const AWS_IKE: &str = "aes256gcm16-prfsha256-ecp384";
/// The ESP proposal (with PFS group) AWS's endpoints are configured with here.
pub const AWS_ESP: &str = "aes256gcm16-ecp384";

/// Tunnel `isp`'s outside addresses, IPv4: (cgw, the head-end).
pub fn v4(isp: Isp) -> (IpAddr, IpAddr) {
    (cgw_wan(isp, Family::V4), vpcgw_wan(isp, Family::V4))
}

/// The last `n` lines of `s` (for a failure message).
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The lab, its charons and the tandem under test (stopped on drop; the namespaces and the
/// directory go with the lab).
#[derive(Debug)]
pub struct AwsLab {
    /// The namespaces.
    pub lab: Lab,
    charons: Vec<(Isp, Charon)>,
    dir: TempDir,
    tandem: Option<Bg>,
}

impl AwsLab {
    /// Builds the lab with a charon on the head-end of each ISP in `isps`, started with
    /// `settings` (strongswan.conf lines of its `charon { }` section) and loaded with
    /// `conf(isp)`. `None` when `test` cannot run here (not root, `CI` unset: it says so).
    pub fn build(
        test: &str,
        isps: &[Isp],
        settings: &str,
        conf: impl Fn(Isp) -> String,
    ) -> Option<Self> {
        if !crate::can_run_as_root(test) {
            return None;
        }
        let lab = Lab::build(HeadEnds::Two).unwrap_or_else(|e| panic!("{test}: the lab: {e}"));
        let charons = isps
            .iter()
            .map(|&isp| {
                let ns = lab.head_end(isp);
                let start = || -> Result<Charon, Error> {
                    let c = Charon::start_with(ns, settings)?;
                    c.load_conf(&conf(isp))?;
                    route_into_libipsec(ns, "10.10.0.0/16")?;
                    Ok(c)
                };
                let c = start().unwrap_or_else(|e| panic!("{test}: charon on {isp:?}: {e}"));
                (isp, c)
            })
            .collect();
        lab.vpc_via(Isp::One)
            .unwrap_or_else(|e| panic!("{test}: VPC route: {e}"));
        let dir = TempDir::new(test).unwrap_or_else(|e| panic!("{test}: {e}"));
        Some(AwsLab {
            lab,
            charons,
            dir,
            tandem: None,
        })
    }

    /// The directory of tandem's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// tandem's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    /// tandem's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("tandem.log")
    }

    /// tandem's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The key log tandem writes (`TANDEM_KEYLOG`).
    pub fn keylog_path(&self) -> PathBuf {
        self.dir().join("keys.log")
    }

    /// Writes the PSK files `tunnel1.psk`, `tunnel2.psk` ([`PSKS`]) and `config` (its `SOCKET`
    /// replaced by [`AwsLab::socket`]) as `aws.toml`, and starts `tandem run` on `cgw`.
    pub fn start_tandem(&mut self, config: &str) {
        for (i, psk) in PSKS.iter().enumerate() {
            let path = self.dir().join(format!("tunnel{}.psk", i + 1));
            write_private(&path, &format!("{psk}\n")).unwrap_or_else(|e| panic!("{e}"));
        }
        let path = self.dir().join("aws.toml");
        let text = config.replace("SOCKET", &self.socket().display().to_string());
        write_private(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        self.start_tandem_with(&path);
    }

    /// Starts `tandem run -c config` on `cgw`, logging at info, with the key log on.
    pub fn start_tandem_with(&mut self, config: &Path) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("{}: {e}", self.log_path().display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", self.log_path().display()));
        let bin = tandem_bin().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = self.lab.cgw.command(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("TANDEM_KEYLOG", self.keylog_path())
            .stdout(err)
            .stderr(log);
        self.tandem = Some(Bg::spawn(cmd).unwrap_or_else(|e| panic!("tandem run: {e}")));
    }

    /// The running tandem's pid.
    pub fn pid(&self) -> u32 {
        self.tandem
            .as_ref()
            .map(Bg::pid)
            .unwrap_or_else(|| panic!("tandem was not started"))
    }

    /// `tandem status --json`, if the daemon answers.
    pub fn status(&self) -> Option<Status> {
        let sock = self.socket().display().to_string();
        let text = tandem_cmd(&["status", "--json", "--socket", &sock], None).ok()?;
        serde_json::from_str(&text).ok().map(Status)
    }

    /// Waits until `done(status)`; returns how long it took. Panics after `timeout` with the
    /// status, tandem's log and the tail of the first charon's log.
    pub fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&Status) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if self.status().is_some_and(|s| done(&s)) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{what} not within {timeout:?}: {:?}\n--- tandem log\n{}\n--- charon log tail\n{}",
                self.status().map(|s| s.0),
                self.log(),
                self.charons
                    .first()
                    .map(|(_, c)| tail(&c.log(), 60))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The charon on `isp`'s head-end; panics if the test started none there.
    pub fn charon(&self, isp: Isp) -> &Charon {
        self.charons
            .iter()
            .find(|(i, _)| *i == isp)
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("no charon on {isp:?} in this test"))
    }
}

impl Drop for AwsLab {
    fn drop(&mut self) {
        if let Some(t) = self.tandem.as_mut() {
            t.stop(Duration::from_secs(3));
        }
    }
}
