//! End to end: the control socket and the metrics endpoint of a real `tandem run` under local
//! abuse (limits in `daemon/src/admin/listeners.rs`):
//! - far more idle connections than the cap, on both listeners at once: the daemon holds at most
//!   the cap of them open, `tandem status` and a metrics scrape still answer within a bound, and
//!   the daemon's CPU stays low;
//! - out of file descriptors (its `RLIMIT_NOFILE` lowered under it while clients queue): `accept`
//!   fails with EMFILE and the listener pauses instead of spinning a core; once descriptors are
//!   back, the queued clients are served.
//!
//! Each test runs the daemon in a network namespace of its own (`unshare --net`: it dies with the
//! process) with a responder-only tunnel on the namespace's loopback; the test reaches the
//! metrics port from a thread that joins that namespace.
//!
//! Needs root (namespaces, TUN). Skips loudly when not root and `CI` is unset.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tandem::admin::listeners::{MAX_CONNECTIONS, REQUEST_TIMEOUT};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const METRICS: &str = "127.0.0.1:9811";

fn can_run() -> bool {
    support::can_run_as_root("local listener tests (network namespace, TUN)")
}

/// The daemon in its own network namespace, killed on drop; its files in a temp dir.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(tun: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let secret = |name: &str, text: &str| support::write_secret(d, name, text);
        secret(
            "gw.key",
            &support::stdout_of(Command::new(TANDEM).arg("genkey")),
        );
        secret(
            "t1.psk",
            &support::stdout_of(Command::new(TANDEM).arg("genpsk")),
        );
        let peer_pub = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let dd = d.display();
        secret(
            "gw.toml",
            &format!(
                "[gateway]\nprivate_key_file = \"{dd}/gw.key\"\ntun_name = \"{tun}\"\n\n\
                 [control]\nsocket = \"{dd}/control.sock\"\nmetrics_listen = \"{METRICS}\"\n\n\
                 [[connection]]\nname = \"lab\"\npeer_public_key = \"{peer_pub}\"\n\
                 local_subnets = [\"10.77.0.0/24\"]\nremote_subnets = [\"10.78.0.0/24\"]\n\n\
                 [[connection.tunnel]]\nname = \"tunnel1\"\nlocal = \"127.0.0.1:14701\"\n\
                 psk_file = \"{dd}/t1.psk\"\n"
            ),
        );
        let child = support::run_in_new_netns(
            TANDEM,
            &d.join("gw.toml"),
            std::fs::File::create(d.join("daemon.log")).unwrap().into(),
        );
        let daemon = Daemon { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while daemon.status().0 != Some(0) {
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer status within 10 s; log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `tandem status`: its exit code and how long it took.
    fn status(&self) -> (Option<i32>, Duration) {
        let start = Instant::now();
        let out = Command::new(TANDEM)
            .arg("status")
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap();
        (out.status.code(), start.elapsed())
    }

    /// CPU time (user + system, all threads) used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        let hz: u64 = support::stdout_of(Command::new("getconf").arg("CLK_TCK"))
            .trim()
            .parse()
            .unwrap();
        Duration::from_millis((f[0] + f[1]) * 1000 / hz)
    }

    /// Open file descriptors of the daemon, by number.
    fn fds(&self) -> Vec<u32> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Runs `f` on a thread inside the daemon's network namespace.
    fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid())).unwrap();
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// `n` TCP connections to the metrics port that send nothing.
    fn idle_metrics_clients(&self, n: usize) -> Vec<TcpStream> {
        self.in_netns(move || {
            (0..n)
                .map(|_| TcpStream::connect(METRICS).unwrap())
                .collect()
        })
    }

    /// One scrape from inside the namespace: the status line and how long it took.
    fn scrape(&self) -> (String, Duration) {
        self.in_netns(|| {
            let start = Instant::now();
            let mut s = TcpStream::connect(METRICS).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            let line = body.lines().next().unwrap_or("").to_string();
            (line, start.elapsed())
        })
    }

    fn idle_control_clients(&self, n: usize) -> Vec<UnixStream> {
        (0..n)
            .map(|_| UnixStream::connect(self.socket()).unwrap())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The time a client queued behind `idle` idle clients may wait: each round of
/// `MAX_CONNECTIONS` of them holds the slots for `REQUEST_TIMEOUT`, plus a margin for a loaded
/// CI machine.
fn bound_behind(idle: usize) -> Duration {
    REQUEST_TIMEOUT * (idle.div_ceil(MAX_CONNECTIONS) as u32) + Duration::from_secs(2)
}

#[test]
fn idle_connections_beyond_the_cap_leave_status_and_metrics_answering() {
    if !can_run() {
        return;
    }
    let daemon = Daemon::start("tlsn1");
    let fds_before = daemon.fds().len();
    let cpu_before = daemon.cpu();
    let wall = Instant::now();

    let idle = 3 * MAX_CONNECTIONS;
    let _control = daemon.idle_control_clients(idle);
    let _metrics = daemon.idle_metrics_clients(idle);
    std::thread::sleep(Duration::from_millis(300));
    let held = daemon.fds().len() - fds_before;
    assert!(
        held <= 2 * MAX_CONNECTIONS,
        "the daemon holds {held} connections for 2 x {idle} idle clients: more than the cap of \
         {MAX_CONNECTIONS} per listener"
    );

    let (code, took) = daemon.status();
    assert_eq!(code, Some(0), "status failed; log:\n{}", daemon.log());
    assert!(
        took <= bound_behind(idle),
        "status behind {idle} idle clients took {took:?} (bound {:?})",
        bound_behind(idle)
    );
    let (line, took) = daemon.scrape();
    assert_eq!(line, "HTTP/1.1 200 OK");
    assert!(
        took <= bound_behind(idle),
        "a scrape behind {idle} idle clients took {took:?} (bound {:?})",
        bound_behind(idle)
    );

    let cpu = daemon.cpu() - cpu_before;
    let wall = wall.elapsed();
    eprintln!(
        "{idle} idle clients per listener: daemon held {held} fds, used {cpu:?} CPU in {wall:?}"
    );
    assert!(
        cpu.as_secs_f64() < 0.2 * wall.as_secs_f64(),
        "the daemon used {cpu:?} of CPU in {wall:?} with idle clients"
    );
}

#[test]
fn out_of_descriptors_the_listeners_pause_instead_of_spinning() {
    if !can_run() {
        return;
    }
    let daemon = Daemon::start("tlsn2");
    let pid = rustix::process::Pid::from_raw(daemon.pid() as i32).unwrap();
    // The soft limit becomes the lowest free descriptor number: the next accept gets EMFILE.
    let fds = daemon.fds();
    let lowest_free = (0u64..).find(|n| !fds.contains(&(*n as u32))).unwrap();
    let hard = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .unwrap();
    let hard: u64 = hard.parse().unwrap();
    let set = |soft: u64| {
        rustix::process::prlimit(
            Some(pid),
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(soft),
                maximum: Some(hard),
            },
        )
        .unwrap();
    };
    set(lowest_free);

    // Clients queue on both listeners; every accept now fails with EMFILE.
    let _control = daemon.idle_control_clients(4);
    let _metrics = daemon.idle_metrics_clients(4);
    let cpu_before = daemon.cpu();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = daemon.cpu() - cpu_before;
    let wall = wall.elapsed();
    let log = daemon.log();
    eprintln!("out of descriptors: daemon used {cpu:?} CPU in {wall:?}");
    assert!(
        cpu.as_secs_f64() < 0.1 * wall.as_secs_f64(),
        "the daemon used {cpu:?} of CPU in {wall:?} while accept failed: it spins; log:\n{log}"
    );
    let lines = log.matches("accept failed").count();
    assert!(
        (1..=2).contains(&lines),
        "expected one rate-limited 'accept failed' line per listener, got {lines}; log:\n{log}"
    );

    // Descriptors back: the queued clients and a new `tandem status` are served.
    set(hard.min(4096));
    let (code, took) = daemon.status();
    assert_eq!(code, Some(0), "status failed; log:\n{}", daemon.log());
    assert!(took <= bound_behind(8), "status took {took:?}");
}
