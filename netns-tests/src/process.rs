//! Background processes started inside namespaces: killed and reaped on drop, and measurable
//! (CPU time and RSS from `/proc/<pid>`) for the bench.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::netns::describe;

/// A child process that is SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Bg {
    child: Child,
    desc: String,
}

impl Bg {
    /// Spawns `cmd` with stdin piped (some tools stop on EOF), stdout/stderr to the given files or
    /// pipes as already configured on `cmd`, or to null when not configured.
    pub fn spawn(mut cmd: Command) -> Result<Self, Error> {
        let desc = describe(&cmd);
        let child = cmd
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Spawn(desc.clone(), e))?;
        Ok(Bg { child, desc })
    }

    /// The process id (the program's own: `ip netns exec` execs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn desc(&self) -> &str {
        &self.desc
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`, …) with `kill(1)`.
    pub fn signal(&self, sig: &str) -> Result<(), Error> {
        crate::netns::run_host("kill", [format!("-{sig}"), self.pid().to_string()]).map(|_| ())
    }

    /// Closes the child's stdin (the probe sender stops on EOF).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits up to `timeout` for the process to exit and collects its piped stdout. The pipe is
    /// drained while waiting: a child that writes more than a pipe holds (iperf3's JSON after a
    /// long run) would otherwise block on the write and never exit.
    pub fn wait_output(mut self, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        let reader = self.child.stdout.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut out = String::new();
                s.read_to_string(&mut out).map(|_| out)
            })
        });
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => return Err(Error::Timeout(format!("{} did not exit", self.desc))),
                Err(e) => return Err(Error::Spawn(self.desc.clone(), e)),
            }
        }
        match reader.map(std::thread::JoinHandle::join) {
            None => Ok(String::new()),
            Some(Ok(Ok(out))) => Ok(out),
            Some(Ok(Err(e))) => Err(Error::Spawn(self.desc.clone(), e)),
            Some(Err(_)) => Err(Error::Spawn(
                self.desc.clone(),
                std::io::Error::other("stdout reader panicked"),
            )),
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`) and reaps it.
    pub fn stop(&mut self, grace: Duration) {
        if self.is_running() {
            let _ = self.signal("TERM");
            let deadline = Instant::now() + grace;
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILLs and reaps the process at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// CPU time (user + system) used so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    /// Resident set size in KiB (`VmRSS`); `VmHWM` (the peak) with `peak`.
    pub fn rss_kib(&self, peak: bool) -> Option<u64> {
        rss_kib(self.pid(), peak)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU seconds (utime + stime over all threads) of process `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI that matters here.
    Some((utime + stime) as f64 / 100.0)
}

/// Resident set size (or its peak) of process `pid`, in KiB.
pub fn rss_kib(pid: u32, peak: bool) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let key = if peak { "VmHWM:" } else { "VmRSS:" };
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
