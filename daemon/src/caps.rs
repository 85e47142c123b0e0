//! Least privilege: the one capability `tandem run` needs, checked up front.
//!
//! The gateway opens `/dev/net/tun`, brings the TUN up, sets its address and MTU and installs
//! routes over netlink: all of that needs `CAP_NET_ADMIN` and nothing else (the UDP port 4500 is
//! above 1024, so no `CAP_NET_BIND_SERVICE`). The systemd unit grants exactly that capability to
//! an unprivileged user (`AmbientCapabilities=CAP_NET_ADMIN`). When it is missing, `tandem run`
//! stops at start-up with one clear line instead of failing later on an `EPERM` from deep inside
//! the TUN or netlink code.
//!
//! The check reads the effective set from `/proc/self/status` (`CapEff:`, a hex bitmask, see
//! `proc(5)`): no extra crate and no syscall wrapper.

use std::fmt;

/// `CAP_NET_ADMIN`'s bit number (`linux/capability.h`).
pub const CAP_NET_ADMIN: u32 = 12;

/// Why the capability check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapError {
    /// The effective capability set lacks `CAP_NET_ADMIN`.
    MissingNetAdmin {
        /// The effective set as read, for the message.
        effective: u64,
    },
    /// `/proc/self/status` could not be read or had no parsable `CapEff:` line.
    Unreadable(String),
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapError::MissingNetAdmin { effective } => write!(
                f,
                "tandem run needs CAP_NET_ADMIN (to create the TUN device and install routes) \
                 but this process does not have it (effective capabilities 0x{effective:016x}); \
                 run it as root, from the systemd unit (AmbientCapabilities=CAP_NET_ADMIN), or \
                 with `setpriv --inh-caps=+net_admin --ambient-caps=+net_admin`"
            ),
            CapError::Unreadable(why) => {
                write!(
                    f,
                    "cannot read this process's capabilities from /proc/self/status: {why}"
                )
            }
        }
    }
}

impl std::error::Error for CapError {}

/// `Ok(())` when this process holds `CAP_NET_ADMIN` in its effective set. `tandem run` calls it
/// before it touches the TUN, and exits 1 with the error's `Display` when it fails.
pub fn require_net_admin() -> Result<(), CapError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| CapError::Unreadable(e.to_string()))?;
    require_net_admin_in(&status)
}

/// [`require_net_admin`] over the text of a `/proc/<pid>/status` file.
pub fn require_net_admin_in(proc_status: &str) -> Result<(), CapError> {
    let effective = effective_caps(proc_status)?;
    if effective & (1 << CAP_NET_ADMIN) != 0 {
        Ok(())
    } else {
        Err(CapError::MissingNetAdmin { effective })
    }
}

/// The `CapEff:` bitmask of a `/proc/<pid>/status` text.
pub fn effective_caps(proc_status: &str) -> Result<u64, CapError> {
    let line = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| CapError::Unreadable("no CapEff line".into()))?;
    u64::from_str_radix(line.trim(), 16)
        .map_err(|e| CapError::Unreadable(format!("bad CapEff value {:?}: {e}", line.trim())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\ttandem\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                        CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
    const NET_ADMIN_ONLY: &str = "Name:\ttandem\nCapEff:\t0000000000001000\n";
    const NOBODY: &str = "Name:\ttandem\nCapEff:\t0000000000000000\n";

    #[test]
    fn root_has_net_admin() {
        assert_eq!(require_net_admin_in(ROOT), Ok(()));
    }

    #[test]
    fn net_admin_alone_is_enough() {
        assert_eq!(require_net_admin_in(NET_ADMIN_ONLY), Ok(()));
    }

    #[test]
    fn no_capabilities_is_refused_with_a_message_naming_the_capability() {
        let err = require_net_admin_in(NOBODY).unwrap_err();
        assert_eq!(err, CapError::MissingNetAdmin { effective: 0 });
        assert!(err.to_string().contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn other_capabilities_without_net_admin_are_refused() {
        // CAP_NET_RAW (13) and CAP_NET_BIND_SERVICE (10), but not 12.
        let s = "CapEff:\t0000000000002400\n";
        assert!(matches!(
            require_net_admin_in(s),
            Err(CapError::MissingNetAdmin { .. })
        ));
    }

    #[test]
    fn missing_or_garbled_capeff_is_unreadable() {
        assert!(matches!(
            require_net_admin_in("Name:\tx\n"),
            Err(CapError::Unreadable(_))
        ));
        assert!(matches!(
            require_net_admin_in("CapEff:\tzz\n"),
            Err(CapError::Unreadable(_))
        ));
    }

    #[test]
    fn this_process_capabilities_parse() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        effective_caps(&status).unwrap();
    }
}
