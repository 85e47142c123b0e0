//! The daemon tests' lab (root): network namespaces with unique names, veth links between them,
//! a scratch directory, and the processes a test starts (daemons, listeners). Everything is
//! removed in `Drop` — processes killed, namespaces deleted, the directory removed — also when an
//! assertion fails.
//!
//! The files the helpers write follow one layout, which the tests' configs name: `a.key`/`a.pub`
//! and `b.key`/`b.pub` for the two daemons, `t1.psk`/`t2.psk` for their two tunnels, `SIDE.sock`
//! for each daemon's control socket, and one log per daemon started.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::sh;

/// The daemon under test (Cargo builds it for this package's integration tests).
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Namespaces, a scratch directory and child processes; all removed on drop.
pub struct Lab {
    /// The namespaces, in the order of the suffixes given to [`Lab::new`].
    namespaces: Vec<(String, String)>,
    /// The scratch directory (keys, configs, sockets, logs).
    pub dir: PathBuf,
    /// Every process the test started; killed and reaped on drop.
    pub children: Vec<Child>,
    /// The logs of the daemons started with [`Lab::start`], in start order.
    logs: Vec<String>,
}

impl Lab {
    /// One namespace per suffix, named `td{tag}{id}{suffix}` (loopback up), and a fresh scratch
    /// directory `tandem-{tag}-{id}` in the temporary directory.
    pub fn new(tag: &str, suffixes: &[&str]) -> Lab {
        let id = super::unique_id();
        let lab = Lab {
            namespaces: suffixes
                .iter()
                .map(|s| ((*s).to_owned(), format!("td{tag}{id}{s}")))
                .collect(),
            dir: std::env::temp_dir().join(format!("tandem-{tag}-{id}")),
            children: Vec::new(),
            logs: Vec::new(),
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(&lab.dir).unwrap();
        for (_, ns) in &lab.namespaces {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// The name of the namespace made for `suffix`.
    pub fn ns(&self, suffix: &str) -> String {
        self.namespaces
            .iter()
            .find(|(s, _)| s == suffix)
            .unwrap_or_else(|| panic!("the lab has no namespace {suffix:?}"))
            .1
            .clone()
    }

    /// A veth pair `name` (the same name on both ends) from namespace `a` to namespace `b`,
    /// `addrs[0]` on a's end and `addrs[1]` on b's (IPv6 without duplicate address detection,
    /// usable at once), both ends up.
    pub fn veth(&self, name: &str, [a, b]: [&str; 2], addrs: [&str; 2]) {
        let (a, b) = (self.ns(a), self.ns(b));
        sh(&[
            "ip", "-n", &a, "link", "add", name, "type", "veth", "peer", "name", name, "netns", &b,
        ]);
        for (ns, addr) in [(&a, addrs[0]), (&b, addrs[1])] {
            let mut cmd = vec!["ip", "-n", ns, "addr", "add", addr, "dev", name];
            if addr.contains(':') {
                cmd.push("nodad");
            }
            sh(&cmd);
            sh(&["ip", "-n", ns, "link", "set", name, "up"]);
        }
    }

    /// `name` in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A file of the scratch directory, empty while it is not there (yet).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// `tandem ARGS` with `stdin` as its input, run to the end.
    pub fn tandem(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(TANDEM)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Writes `content` to `name` in the scratch directory with mode 0600.
    pub fn write_secret(&self, name: &str, content: impl AsRef<[u8]>) {
        super::write_secret(&self.dir, name, content);
    }

    /// Keys for daemons a and b (`a.key`, `a.pub`, `b.key`, `b.pub`) and PSKs for tunnels t1
    /// and t2 (`t1.psk`, `t2.psk`), made by the daemon's own `genkey`/`pubkey`/`genpsk`.
    pub fn keys(&self) {
        let ok = |what: &str, out: Output| {
            assert!(
                out.status.success(),
                "tandem {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        for side in ["a", "b"] {
            let key = ok("genkey", self.tandem(&["genkey"], b""));
            self.write_secret(&format!("{side}.key"), &key);
            let public = ok("pubkey", self.tandem(&["pubkey"], &key));
            std::fs::write(self.path(&format!("{side}.pub")), public).unwrap();
        }
        for t in ["t1", "t2"] {
            let psk = ok("genpsk", self.tandem(&["genpsk"], b""));
            self.write_secret(&format!("{t}.psk"), &psk);
        }
    }

    /// `tandem run -c config` in namespace `ns` (a name from [`Lab::ns`]), its stderr in the
    /// scratch file `log`. `ip netns exec` execs the daemon: the child's pid is the daemon's.
    pub fn start(&mut self, ns: &str, config: &Path, log: &str) {
        let file = std::fs::File::create(self.path(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, TANDEM, "run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("TANDEM_KEYLOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        self.children.push(child);
        self.logs.push(log.to_owned());
    }

    /// Every started daemon's log, each under its name: for failure messages.
    pub fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|l| format!("--- {l}\n{}\n", self.read(l)))
            .collect()
    }

    /// `tandem status --json` of daemon `side` (socket `SIDE.sock`); None while it does not
    /// answer.
    pub fn status(&self, side: &str) -> Option<serde_json::Value> {
        let sock = self.path(&format!("{side}.sock"));
        let out = self.tandem(
            &["status", "--json", "--socket", sock.to_str().unwrap()],
            b"",
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Polls `cond` every 100 ms; fails the test with the daemons' logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// SIGTERM to every child, then each one's exit code (None: no exit within 10 s, or killed
    /// by a signal).
    pub fn stop(&mut self) -> Vec<Option<i32>> {
        for child in &self.children {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(child),
                rustix::process::Signal::TERM,
            );
        }
        let mut codes = Vec::new();
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut code = None;
            while Instant::now() < deadline {
                if let Some(st) = child.try_wait().unwrap() {
                    code = st.code();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            codes.push(code);
        }
        codes
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, ns) in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
