//! End to end: the real `tandem run` talks to a real `NOTIFY_SOCKET`, as systemd would see it.
//!
//! Each test runs the daemon in network and mount namespaces of its own (`unshare --net --mount`:
//! they die with the process, nothing to clean up) with a responder-only tunnel bound on the
//! namespace's loopback, and listens on a datagram socket in a temp dir:
//! - `READY=1` arrives only once the TUN is up, the tunnel socket is bound and the routes are
//!   installed (checked from inside the namespace the moment READY arrives), with a `STATUS=`;
//! - `WATCHDOG=1` arrives every `WATCHDOG_USEC / 2`;
//! - SIGHUP gives `RELOADING=1` + a current `MONOTONIC_USEC`, then `READY=1`; so does the units'
//!   `ExecReload=` command, `tandem reload -c FILE`, before it returns;
//! - `STATUS=` follows the tunnel: `connecting`, `up (active)` once a peer gateway (a second
//!   daemon in the same namespace) completes the handshake, and not up once that peer shuts down;
//! - SIGTERM gives `STOPPING=1` and a clean exit;
//! - the `TANDEM_TEST_STALL_AFTER` hook stalls the data-plane loop and the pings stop while the
//!   process lives on (what systemd's watchdog turns into a restart);
//! - as `nobody` with only `CAP_NET_ADMIN` (setpriv) the daemon comes up; without it, it refuses
//!   to start with a message naming the capability.
//!
//! Needs root (namespaces, TUN). Skips loudly when not root and `CI` is unset.
#![allow(clippy::unwrap_used)]
#![allow(clippy::print_stderr)]

mod support;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem::notify::monotonic_usec;

const TUN: &str = "tnotify0";
const REMOTE_NET: &str = "10.78.0.0/24";
const TUNNEL_PORT: u16 = 14501;
/// The peer gateway's end of tunnel1 (in the same namespace, for the STATUS test).
const PEER_PORT: u16 = 14601;
/// The watchdog period handed to the daemon: pings every 150 ms.
const WATCHDOG: Duration = Duration::from_millis(300);

fn can_run() -> bool {
    support::can_run_as_root("notify end-to-end tests (network namespace, TUN)")
}

fn public_key(binary: &Path, private: &str) -> String {
    let mut child = Command::new(binary)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), private.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn uid_of(user: &str) -> u32 {
    support::stdout_of(Command::new("id").args(["-u", user]))
        .trim()
        .parse()
        .unwrap()
}

/// A scratch directory (world-traversable, so `nobody` can reach the binary and the notify
/// socket), removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tandem-notify-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The systemd side: a bound datagram socket; each datagram may hold several `KEY=VALUE` lines.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
    /// Lines received so far, with their arrival time.
    lines: Vec<(Instant, String)>,
}

impl Manager {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        // The daemon may run as nobody: it needs write permission on the socket file.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        Self {
            sock,
            path,
            lines: Vec::new(),
        }
    }

    /// Receives for at most `wait`, until a line equal to `want` arrives; returns the index of
    /// that line in `self.lines`.
    fn wait_for(&mut self, want: &str, wait: Duration) -> Option<usize> {
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.sock.set_read_timeout(Some(deadline - now)).unwrap();
            let mut buf = [0u8; 4096];
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                // Timeout (checked at the top of the loop) or a signal: keep waiting.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("notify socket recv: {e}"),
            };
            let at = Instant::now();
            let text = String::from_utf8(buf[..n].to_vec()).unwrap();
            let mut found = None;
            for line in text.lines() {
                self.lines.push((at, line.to_string()));
                if line == want && found.is_none() {
                    found = Some(self.lines.len() - 1);
                }
            }
            if found.is_some() {
                return found;
            }
        }
    }

    /// Receives everything that arrives within `wait`.
    fn drain_for(&mut self, wait: Duration) {
        let _ = self.wait_for("\u{0}never", wait);
    }

    fn count_since(&self, from: usize, line: &str) -> usize {
        self.lines[from..].iter().filter(|(_, l)| l == line).count()
    }
}

struct Gateway {
    scratch: Scratch,
    binary: PathBuf,
    config: PathBuf,
    /// A config for a peer gateway that initiates tunnel1 towards this one (same namespace).
    peer_config: PathBuf,
    /// Where the daemon's control socket is (named by the config or by `TANDEM_SOCKET`).
    socket: PathBuf,
}

impl Gateway {
    /// Keys, PSK and a one-connection, responder-only config, owned by `owner_uid`. The config
    /// names its control socket (as for tandem.service) unless `socket_from_env`, where the socket
    /// comes from `TANDEM_SOCKET` (as tandem@.service sets it).
    fn new(tag: &str, owner_uid: u32, socket_from_env: bool) -> Self {
        let scratch = Scratch::new(tag);
        let d = &scratch.dir;
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_tandem"));
        // Where `nobody` runs the binary from, even when the checkout is private: an empty file
        // that the daemon's mount namespace bind-mounts the real binary onto. (Not a copy: a copy
        // written while another test thread forks can fail to exec with ETXTBSY.)
        std::fs::write(d.join("tandem"), b"").unwrap();
        std::fs::set_permissions(d.join("tandem"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = d.join("conf");
        std::fs::create_dir(&conf).unwrap();
        let private = support::stdout_of(Command::new(&binary).arg("genkey"));
        let own_pub = public_key(&binary, &private);
        let peer = support::stdout_of(Command::new(&binary).arg("genkey"));
        let peer_pub = public_key(&binary, &peer);
        let psk = support::stdout_of(Command::new(&binary).arg("genpsk"));
        let write_secret = |name: &str, text: &str| {
            let p = conf.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&p, Some(owner_uid), None).unwrap();
            p
        };
        let c = conf.display();
        let control = if socket_from_env {
            String::new()
        } else {
            format!("[control]\nsocket = \"{c}/control.sock\"\n\n")
        };
        write_secret("private.key", &private);
        write_secret("tunnel1.psk", &psk);
        let config = write_secret(
            "gw.toml",
            &format!(
                "[gateway]\nprivate_key_file = \"{c}/private.key\"\ntun_name = \"{TUN}\"\n\
                 address = \"169.254.77.1/30\"\n\n{control}\
                 [[connection]]\nname = \"lab\"\npeer_public_key = \"{peer_pub}\"\n\
                 local_subnets = [\"10.77.0.0/24\"]\nremote_subnets = [\"{REMOTE_NET}\"]\n\n\
                 [[connection.tunnel]]\nname = \"tunnel1\"\nlocal = \"127.0.0.1:{TUNNEL_PORT}\"\n\
                 psk_file = \"{c}/tunnel1.psk\"\n"
            ),
        );
        // The peer: an initiator in the same namespace, on the other end of tunnel1 over loopback.
        write_secret("peer.key", &peer);
        let peer_config = write_secret(
            "peer.toml",
            &format!(
                "[gateway]\nprivate_key_file = \"{c}/peer.key\"\ntun_name = \"tpeer0\"\n\n\
                 [control]\nsocket = \"{c}/peer.sock\"\n\n\
                 [[connection]]\nname = \"lab\"\npeer_public_key = \"{own_pub}\"\n\
                 local_subnets = [\"{REMOTE_NET}\"]\nremote_subnets = [\"10.77.0.0/24\"]\n\
                 dpd_interval = \"100ms\"\ndpd_timeout = \"300ms\"\n\n\
                 [[connection.tunnel]]\nname = \"tunnel1\"\nlocal = \"127.0.0.1:{PEER_PORT}\"\n\
                 remote = \"127.0.0.1:{TUNNEL_PORT}\"\npsk_file = \"{c}/tunnel1.psk\"\n"
            ),
        );
        std::os::unix::fs::chown(&conf, Some(owner_uid), None).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = conf.join("control.sock");
        Self {
            scratch,
            binary,
            config,
            peer_config,
            socket,
        }
    }

    /// Starts `tandem run` in a fresh network namespace (loopback up), optionally under
    /// `setpriv` with the given arguments, with the notify environment of a `Type=notify` unit.
    fn spawn(
        &self,
        manager: &Manager,
        setpriv: Option<&[&str]>,
        extra_env: &[(&str, &str)],
    ) -> Daemon {
        let mut script = String::from("ip link set lo up && ");
        if let Some(args) = setpriv {
            // On a real host udev makes /dev/net/tun 0666 (systemd's 50-udev-default.rules) and the
            // unit's DeviceAllow= lets the service open it; containers (like CI's) often have it
            // 0600. Give the namespace a private /dev/net with a 0666 node, as udev would: the
            // host's /dev is untouched.
            script += "mount -t tmpfs -o mode=0755 tmpfs /dev/net && \
                       mknod -m 0666 /dev/net/tun c 10 200 && \
                       mount --bind \"$0\" \"$2\" && exec setpriv ";
            script += &args.join(" ");
            script += " \"$2\" run -c \"$1\"";
        } else {
            script += "exec \"$0\" run -c \"$1\"";
        }
        let log = self.scratch.dir.join("daemon.log");
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--mount", "--", "sh", "-c", &script])
            .arg(&self.binary)
            .arg(&self.config)
            .arg(self.scratch.dir.join("tandem"))
            .env("NOTIFY_SOCKET", &manager.path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("TANDEM_TEST_STALL_AFTER")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }
}

/// The daemon process (`unshare` and `sh` exec into it: same PID), killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        support::stdout_of(
            Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]),
        );
    }

    /// The daemon's log, then each thread's name, kernel wait channel and current syscall (what
    /// a stuck data plane is blocked in), for failure messages.
    fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tasks = format!("/proc/{}/task", self.pid());
        for task in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            s += &format!(
                "thread {:?} {} wchan={} syscall={}\n",
                task.file_name(),
                read("comm").trim(),
                read("wchan").trim(),
                read("syscall").trim()
            );
        }
        s
    }

    /// Runs a command inside the daemon's network namespace.
    fn in_netns(&self, args: &[&str]) -> String {
        support::stdout_of(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", self.pid()))
                .arg("--")
                .args(args),
        )
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for READY=1 and checks, from inside the namespace right then, that the TUN is up with
/// its route and the tunnel socket is bound.
fn expect_ready_with_network_in_place(manager: &mut Manager, daemon: &mut Daemon) -> usize {
    let ready = manager.wait_for("READY=1", Duration::from_secs(10));
    let Some(ready) = ready else {
        let status = daemon.wait_exit(Duration::from_millis(100));
        panic!(
            "no READY=1 (exit {status:?}); got {:?}\nlog:\n{}",
            manager.lines,
            daemon.log()
        );
    };
    let link = daemon.in_netns(&["ip", "-o", "link", "show", TUN]);
    assert!(link.contains("UP"), "TUN not up at READY: {link}");
    let route = daemon.in_netns(&["ip", "route", "show", REMOTE_NET]);
    assert!(
        route.contains(&format!("dev {TUN}")),
        "route not installed at READY: {route:?}"
    );
    let udp = daemon.in_netns(&["ss", "-Hlun"]);
    assert!(
        udp.contains(&format!("127.0.0.1:{TUNNEL_PORT}")),
        "tunnel socket not bound at READY: {udp}"
    );
    ready
}

#[test]
fn daemon_reports_ready_status_watchdog_reload_and_stopping_in_order() {
    if !can_run() {
        return;
    }
    // Instance style, as tandem@.service runs it: the socket comes from TANDEM_SOCKET.
    let gw = Gateway::new("lifecycle", 0, true);
    let mut manager = Manager::bind(&gw.scratch.dir);
    let socket = gw.socket.to_str().unwrap().to_string();
    let mut daemon = gw.spawn(&manager, None, &[("TANDEM_SOCKET", &socket)]);
    let ready = expect_ready_with_network_in_place(&mut manager, &mut daemon);

    // A one-line status naming the connection's tunnel, at READY (same datagram) or before.
    let ready_at = manager.lines[ready].0;
    let status: Vec<_> = manager
        .lines
        .iter()
        .filter(|(at, _)| *at <= ready_at)
        .filter_map(|(_, l)| l.strip_prefix("STATUS="))
        .collect();
    assert!(
        status.iter().any(|s| s.contains("tunnel1")),
        "no STATUS with the tunnel at READY: {status:?}"
    );

    // Pings every WATCHDOG/2 = 150 ms: at least 6 in 1.5 s (nominally 10).
    let from = manager.lines.len();
    manager.drain_for(Duration::from_millis(1500));
    let pings = manager.count_since(from, "WATCHDOG=1");
    assert!(
        pings >= 6,
        "only {pings} WATCHDOG=1 in 1.5 s with WatchdogSec=300ms: {:?}\n{}",
        manager.lines,
        daemon.log()
    );

    // SIGHUP: RELOADING=1 + MONOTONIC_USEC (a current reading), then READY=1.
    let before = monotonic_usec().unwrap();
    let from = manager.lines.len();
    daemon.signal("HUP");
    let reloading = manager.wait_for("RELOADING=1", Duration::from_secs(5));
    let Some(reloading) = reloading else {
        panic!(
            "no RELOADING=1 after SIGHUP: {:?}\n{}",
            &manager.lines[from..],
            daemon.log()
        )
    };
    let ready_again = manager.wait_for("READY=1", Duration::from_secs(5));
    let after = monotonic_usec().unwrap();
    let Some(ready_again) = ready_again else {
        panic!(
            "no READY=1 after reload: {:?}\n{}",
            &manager.lines[from..],
            daemon.log()
        )
    };
    assert!(ready_again > reloading);
    let usec: u64 = manager.lines[reloading..ready_again]
        .iter()
        .find_map(|(_, l)| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| {
            panic!(
                "no MONOTONIC_USEC with RELOADING=1: {:?}",
                &manager.lines[reloading..]
            )
        })
        .parse()
        .unwrap();
    assert!(
        before <= usec && usec <= after,
        "MONOTONIC_USEC {usec} not within [{before}, {after}]"
    );
    // The units' ExecReload= command, `tandem reload -c FILE` (socket from TANDEM_SOCKET, as the
    // template unit's Environment= gives it): returns 0 only after the daemon has reloaded, so
    // RELOADING=1 and READY=1 are already on the socket when it exits.
    let from = manager.lines.len();
    let out = Command::new(&gw.binary)
        .args(["reload", "-c"])
        .arg(&gw.config)
        .env("TANDEM_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tandem reload failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = manager.wait_for("RELOADING=1", Duration::from_millis(500));
    let ready_after = manager.wait_for("READY=1", Duration::from_millis(500));
    assert!(
        r.is_some() && ready_after > r,
        "tandem reload: no RELOADING=1 then READY=1: {:?}",
        &manager.lines[from..]
    );
    // An invalid new config: `systemctl reload` (this command) fails with the positioned error,
    // and the daemon, back to READY=1, keeps running on the old config.
    let good = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        format!(
            "{good}\n[[connection.tunnel]]\nname = \"tunnel2\"\nlocal = \"127.0.0.1:14502\"\n\
             psk_file = \"missing.psk\"\n"
        ),
    )
    .unwrap();
    let from = manager.lines.len();
    let out = Command::new(&gw.binary)
        .args(["reload", "-c"])
        .arg(&gw.config)
        .env("TANDEM_SOCKET", &socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "bad reload: {stderr}");
    assert!(
        stderr.contains("missing.psk"),
        "error does not name the file: {stderr}"
    );
    assert!(
        manager
            .wait_for("READY=1", Duration::from_millis(500))
            .is_some(),
        "no READY=1 after a refused reload: {:?}",
        &manager.lines[from..]
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "a bad reload stopped the daemon"
    );
    std::fs::write(&gw.config, good).unwrap();

    // Still pinging after the reloads.
    let from = manager.lines.len();
    manager.drain_for(Duration::from_millis(600));
    assert!(
        manager.count_since(from, "WATCHDOG=1") >= 2,
        "no pings after reload"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    daemon.signal("TERM");
    assert!(
        manager
            .wait_for("STOPPING=1", Duration::from_secs(5))
            .is_some(),
        "no STOPPING=1 after SIGTERM: {:?}\n{}",
        manager.lines,
        daemon.log()
    );
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("daemon did not exit after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?} after SIGTERM\n{}",
        daemon.log()
    );
}

#[test]
fn stalled_data_plane_stops_watchdog_pings_while_the_process_lives() {
    if !can_run() {
        return;
    }
    let gw = Gateway::new("stall", 0, false);
    let mut manager = Manager::bind(&gw.scratch.dir);
    let mut daemon = gw.spawn(&manager, None, &[("TANDEM_TEST_STALL_AFTER", "600")]);
    expect_ready_with_network_in_place(&mut manager, &mut daemon);
    let ready_at = Instant::now();

    // Before the stall: pinging.
    let from = manager.lines.len();
    manager.drain_for(Duration::from_millis(400));
    assert!(
        manager.count_since(from, "WATCHDOG=1") >= 1,
        "no pings before the stall: {:?}",
        manager.lines
    );

    // Well after the stall point (600 ms after READY, + one ping period of slack): silence.
    let quiet_from = ready_at + Duration::from_millis(600) + WATCHDOG;
    manager.drain_for(
        quiet_from.saturating_duration_since(Instant::now()) + Duration::from_millis(1200),
    );
    let late: Vec<_> = manager
        .lines
        .iter()
        .filter(|(at, l)| *at > quiet_from && l == "WATCHDOG=1")
        .collect();
    assert!(
        late.is_empty(),
        "{} WATCHDOG=1 after the data plane stalled",
        late.len()
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the stalled daemon exited: the hook must stall, not exit"
    );
}

#[test]
fn non_root_user_with_only_net_admin_runs_the_gateway() {
    if !can_run() {
        return;
    }
    let gw = Gateway::new("nobody", uid_of("nobody"), false);
    let mut manager = Manager::bind(&gw.scratch.dir);
    let args = [
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=+net_admin",
        "--ambient-caps=+net_admin",
    ];
    let mut daemon = gw.spawn(&manager, Some(&args), &[]);
    expect_ready_with_network_in_place(&mut manager, &mut daemon);
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(
        uid.split_whitespace().nth(1) == Some(&uid_of("nobody").to_string()),
        "not running as nobody: {uid}"
    );
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        eff, "0000000000001000",
        "effective set should be CAP_NET_ADMIN only"
    );
    daemon.signal("TERM");
    let exit = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", daemon.log());
}

#[test]
fn non_root_user_without_net_admin_is_refused_with_a_clear_message() {
    if !can_run() {
        return;
    }
    let gw = Gateway::new("nocap", uid_of("nobody"), false);
    let mut manager = Manager::bind(&gw.scratch.dir);
    let args = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];
    let mut daemon = gw.spawn(&manager, Some(&args), &[]);
    let exit = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("daemon without CAP_NET_ADMIN kept running");
    assert_eq!(exit.code(), Some(1), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("CAP_NET_ADMIN"),
        "message does not name the capability:\n{log}"
    );
    manager.drain_for(Duration::from_millis(100));
    assert!(
        manager.lines.iter().all(|(_, l)| l != "READY=1"),
        "READY=1 without the capability"
    );
}

#[test]
fn status_follows_the_tunnel_as_a_peer_comes_and_goes() {
    if !can_run() {
        return;
    }
    let gw = Gateway::new("status", 0, false);
    let mut manager = Manager::bind(&gw.scratch.dir);
    let mut daemon = gw.spawn(&manager, None, &[]);
    expect_ready_with_network_in_place(&mut manager, &mut daemon);
    let last_status = |m: &Manager| {
        m.lines
            .iter()
            .rev()
            .find_map(|(_, l)| l.strip_prefix("STATUS=").map(str::to_string))
    };
    assert_eq!(
        last_status(&manager).as_deref(),
        Some("lab: tunnel1 connecting")
    );

    // The peer comes up in the daemon's namespace and initiates: tunnel1 goes up and active.
    let peer_log = gw.scratch.dir.join("peer.log");
    let mut peer = Daemon {
        child: Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", daemon.pid()))
            .arg("--")
            .arg(&gw.binary)
            .args(["run", "-c"])
            .arg(&gw.peer_config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&peer_log).unwrap())
            .spawn()
            .unwrap(),
        log: peer_log,
    };
    let up = "STATUS=lab: tunnel1 up (active)";
    assert!(
        manager.wait_for(up, Duration::from_secs(10)).is_some(),
        "no {up:?}: {:?}\n{}\npeer:\n{}",
        manager.lines,
        daemon.log(),
        peer.log()
    );

    // The peer shuts down (closing notice): the status leaves "up" at once, well before this
    // daemon's own DPD could notice (its config keeps the default dpd_timeout, 1 s; the peer's
    // keepalives every 100 ms put the DPD deadline at least 900 ms after the TERM). On an idle
    // machine the notice moves it within a few ms; half the DPD timeout leaves room for a loaded
    // CI box and still cannot be met by DPD.
    let bound = tandem_config::DEFAULT_DPD_TIMEOUT / 2;
    let from = manager.lines.len();
    let termed = Instant::now();
    peer.signal("TERM");
    assert!(
        peer.wait_exit(Duration::from_secs(10)).is_some(),
        "peer did not stop"
    );
    manager.drain_for(Duration::from_secs(2));
    let left_up = manager.lines[from..].iter().find_map(|(at, l)| {
        let s = l.strip_prefix("STATUS=")?;
        (s.starts_with("lab: tunnel1 ") && !s.contains(" up")).then(|| (*at, s.to_string()))
    });
    let Some((at, status)) = left_up else {
        panic!(
            "status never left up after the peer left: {:?}\n{}",
            &manager.lines[from..],
            daemon.log()
        )
    };
    let took = at.saturating_duration_since(termed);
    eprintln!("status {status:?} {took:?} after the peer's SIGTERM");
    assert!(
        took < bound,
        "status left up only {took:?} after the peer's SIGTERM: DPD, not the closing notice\n{}",
        daemon.log()
    );
    let last = manager.lines[from..]
        .iter()
        .rev()
        .find_map(|(_, l)| l.strip_prefix("STATUS="));
    assert!(
        last.is_some_and(|s| !s.contains(" up")),
        "status after the peer left: {last:?}"
    );
}
