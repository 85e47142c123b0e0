//! systemd readiness, status and watchdog notifications (`sd_notify(3)`), over std's
//! `UnixDatagram`: no extra crate.
//!
//! The flow a `Type=notify` service follows (see `systemd/tandem.service`):
//!
//! ```text
//! start -> TUN up, sockets bound, routes installed -> READY=1 + STATUS=<summary>
//!       -> every watchdog_interval(): WATCHDOG=1, sent by the data-plane loop itself
//!       -> on every tunnel change: STATUS=<summary>
//!       -> SIGHUP / `tandem reload`: RELOADING=1 + MONOTONIC_USEC=<now> ... READY=1
//!       -> SIGTERM: STOPPING=1, close notices, exit
//! ```
//!
//! The invariant the watchdog relies on: the `WATCHDOG=1` ping must come from the thread that
//! moves packets, between batches, so that a data plane stuck in a syscall or a loop stops the
//! pings and systemd restarts the service (`WatchdogSec=` + `Restart=on-failure`). A ping from a
//! helper thread would hide exactly the failure the watchdog exists to catch.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) [`Notifier::from_env`] returns `None` and the daemon
//! sends nothing. Sending is best effort for the daemon: a failed send returns the error so the
//! caller can log it, but must never stop the gateway.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The environment variable systemd sets to the notification socket's address
/// (`sd_notify(3)`): a filesystem path, or an abstract name written with a leading `@`.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The watchdog period systemd expects pings within, in microseconds (`sd_watchdog_enabled(3)`).
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// When set, the watchdog applies only to the process with this PID (`sd_watchdog_enabled(3)`).
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// A connected handle to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when the variable is unset or empty (not run
    /// by systemd as `Type=notify`) or names an address that cannot be used (logged by the caller
    /// as "no notify"; sd_notify itself silently ignores such a socket too).
    pub fn from_env() -> Option<Self> {
        let value = std::env::var_os(NOTIFY_SOCKET_ENV)?;
        Self::new(&value).ok()
    }

    /// A notifier sending to `address`: a path, or `@name` for an abstract-namespace socket.
    pub fn new(address: &OsStr) -> io::Result<Self> {
        let bytes = address.as_bytes();
        let addr = match bytes {
            [] => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "empty NOTIFY_SOCKET",
                ));
            }
            [b'@', name @ ..] => SocketAddr::from_abstract_name(name)?,
            [b'/', ..] => SocketAddr::from_pathname(address)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Self { socket, addr })
    }

    /// The address this notifier sends to, spelled as in `NOTIFY_SOCKET` (for logs).
    pub fn address(&self) -> OsString {
        if let Some(name) = self.addr.as_abstract_name() {
            let mut s = OsString::from("@");
            s.push(OsStr::from_bytes(name));
            s
        } else if let Some(path) = self.addr.as_pathname() {
            path.as_os_str().to_owned()
        } else {
            OsString::new()
        }
    }

    /// Sends raw `KEY=VALUE` lines (newline-separated) as one datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short notify datagram",
            ));
        }
        Ok(())
    }

    /// `READY=1`: start-up finished (TUN up, sockets bound, routes installed), or a reload
    /// finished. Send it after [`Notifier::reloading`] to end the reload.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1")
    }

    /// `READY=1` and `STATUS=` in one datagram, so `systemctl status` never shows a ready service
    /// with a stale status line.
    pub fn ready_with_status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `STATUS=<one line>`: what `systemctl status` shows. Newlines are replaced by spaces, as
    /// a newline would end the value and start a new (bogus) assignment.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: the data plane is alive. Call it from the data-plane loop every
    /// [`watchdog_interval`].
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// `RELOADING=1` + `MONOTONIC_USEC=<CLOCK_MONOTONIC now, µs>`: a reload began (required in
    /// this form by `Type=notify-reload` and understood by `Type=notify`). End it with
    /// [`Notifier::ready`].
    pub fn reloading(&self) -> io::Result<()> {
        let usec = monotonic_usec()?;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
    }

    /// `STOPPING=1`: shutdown began (close notices are being sent).
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` (as `sd_watchdog_enabled(3)`
/// advises, so one late ping is not yet a restart), or `None` when no watchdog is set or
/// `$WATCHDOG_PID` names another process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var_os(WATCHDOG_USEC_ENV)?;
    let pid = std::env::var_os(WATCHDOG_PID_ENV);
    watchdog_interval_from(&usec, pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] over explicit values: `usec` is `$WATCHDOG_USEC`, `pid` is
/// `$WATCHDOG_PID` (if set), `own_pid` this process's id.
pub fn watchdog_interval_from(usec: &OsStr, pid: Option<&OsStr>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

/// `CLOCK_MONOTONIC` now, in microseconds: the clock systemd compares `MONOTONIC_USEC` with.
/// `std::time::Instant` reads the same clock but does not expose its absolute value.
pub fn monotonic_usec() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call, and
    // CLOCK_MONOTONIC is a clock id every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs =
        u64::try_from(ts.tv_sec).map_err(|_| io::Error::other("negative monotonic clock"))?;
    let nanos =
        u64::try_from(ts.tv_nsec).map_err(|_| io::Error::other("negative monotonic clock"))?;
    Ok(secs * 1_000_000 + nanos / 1_000)
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_the_period() {
        let d = watchdog_interval_from(OsStr::new("20000000"), None, 7);
        assert_eq!(d, Some(Duration::from_secs(10)));
    }

    #[test]
    fn watchdog_for_another_pid_is_not_ours() {
        assert_eq!(
            watchdog_interval_from(OsStr::new("2000000"), Some(OsStr::new("8")), 7),
            None
        );
        assert_eq!(
            watchdog_interval_from(OsStr::new("2000000"), Some(OsStr::new("7")), 7),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn zero_or_garbage_watchdog_means_none() {
        assert_eq!(watchdog_interval_from(OsStr::new("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(OsStr::new("soon"), None, 7), None);
    }

    #[test]
    fn relative_notify_socket_is_rejected() {
        assert!(Notifier::new(OsStr::new("relative/path")).is_err());
        assert!(Notifier::new(OsStr::new("")).is_err());
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_usec().unwrap();
        assert!(b >= a + 2_000, "{a} -> {b}");
    }
}
