//! strongSwan's charon as an IKEv2 peer in a lab namespace, configured the way AWS configures its
//! Site-to-Site VPN endpoints (ike/README.md): IKEv2, a PSK per tunnel, AES-256-GCM-16, PFS, no ESN,
//! replay window 1024, UDP encapsulation forced (`encap = yes`).
//!
//! Each [`Charon`] is private to its test: its `strongswan.conf` (read through `STRONGSWAN_CONF`),
//! its vici socket and its log live in a temporary directory, and the pid file that charon
//! always writes to `/var/run/charon.pid` lands in that directory too, because charon runs with
//! the directory bind-mounted on `/run` in the mount namespace `ip netns exec` gives it. So two
//! charons (or one on the host) never meet. Charon uses kernel-libipsec: ESP in userspace through
//! a TUN device in the namespace, as this kernel's XFRM has no AES-GCM.
//!
//! `swanctl` talks to it through `--uri` and reads the connection from `--file`. The log has the
//! `ike` and `chd` groups at level 4, where charon prints the IKE and Child SA keys it derives:
//! [`Charon::child_keys`] reads them back so a test can compare them with its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::Error;
use crate::netns::{Netns, checked};
use crate::process::Bg;
use crate::tandem::{TempDir, write_private};

/// charon as Debian installs it (`strongswan-charon`).
pub const CHARON_BIN: &str = "/usr/lib/ipsec/charon";

/// The plugins charon loads: crypto (OpenSSL for ECDH and AES-GCM, curve25519 for group 31),
/// the kernel interfaces (libipsec for ESP in userspace, netlink for addresses and routes), the
/// sockets and vici. Naming them keeps charon from loading every plugin the distribution ships.
pub const PLUGINS: &str = "random nonce openssl gcm aes sha2 hmac kdf curve25519 pem pkcs1 \
                           x509 pubkey kernel-libipsec kernel-netlink socket-default vici";

/// How long charon may take to open its vici socket. Measured: about 100 ms on the lab machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection as AWS would configure it, from charon's side.
#[derive(Debug, Clone)]
pub struct AwsLikeConn {
    /// charon's own address (`local_addrs`, and its IKE identity).
    pub local: std::net::IpAddr,
    /// The peer's address (`remote_addrs`, and the identity it must prove).
    pub remote: std::net::IpAddr,
    /// The PSK (AWS gives 8..64 ASCII characters).
    pub psk: String,
    /// IKE proposal, strongSwan syntax (`aes256gcm16-prfsha256-ecp384`).
    pub ike_proposal: String,
    /// ESP proposal with the PFS group (`aes256gcm16-ecp384`); no ESN keyword means no ESN.
    pub esp_proposal: String,
    /// charon's side of the Child SA.
    pub local_ts: String,
    /// The peer's side.
    pub remote_ts: String,
}

impl AwsLikeConn {
    /// The `swanctl.conf` text: connection `aws`, child `net`, one IKE secret for the ID pair.
    pub fn swanctl_conf(&self) -> String {
        format!(
            r#"connections {{
  aws {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    proposals = {ike}
    encap = yes
    rekey_time = 8h
    dpd_delay = 10s
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = {remote}
    }}
    children {{
      net {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {esp}
        replay_window = 1024
        rekey_time = 1h
        start_action = none
        dpd_action = clear
      }}
    }}
  }}
}}
secrets {{
  ike-aws {{
    id-1 = {local}
    id-2 = {remote}
    secret = "{psk}"
  }}
}}
"#,
            local = self.local,
            remote = self.remote,
            ike = self.ike_proposal,
            esp = self.esp_proposal,
            lts = self.local_ts,
            rts = self.remote_ts,
            psk = self.psk,
        )
    }
}

/// A Child SA's keys as charon logged them: (SPI inbound to charon, SPI outbound) are not in
/// these lines, only the key material per direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedChildKeys {
    /// "encryption initiator key": key and salt, initiator to responder.
    pub i2r: Vec<u8>,
    /// "encryption responder key": responder to initiator.
    pub r2i: Vec<u8>,
}

/// A running charon in a namespace; stopped (SIGTERM, then SIGKILL) and its directory removed on
/// drop.
#[derive(Debug)]
pub struct Charon {
    proc: Bg,
    dir: TempDir,
    uri: String,
}

impl Charon {
    /// Starts charon in `ns` and waits for its vici socket.
    pub fn start(ns: &Netns) -> Result<Self, Error> {
        Self::start_with(ns, "")
    }

    /// [`Charon::start`] with more `strongswan.conf` settings inside the `charon { }` section
    /// (one `key = value` per line, e.g. `fragment_size = 576` or `cookie_threshold = 1`).
    pub fn start_with(ns: &Netns, settings: &str) -> Result<Self, Error> {
        if !Path::new(CHARON_BIN).exists() {
            return Err(Error::Tandem(format!(
                "{CHARON_BIN} is missing: apt-get install strongswan-charon strongswan-swanctl \
                 libcharon-extra-plugins libstrongswan-standard-plugins \
                 libstrongswan-extra-plugins"
            )));
        }
        let dir = TempDir::new("charon")?;
        let run = dir.path().join("run");
        std::fs::create_dir(&run).map_err(|e| Error::Io(run.display().to_string(), e))?;
        let socket = dir.path().join("charon.vici");
        let log = dir.path().join("charon.log");
        let conf = dir.path().join("strongswan.conf");
        write_private(
            &conf,
            &format!(
                r#"charon {{
  load = {PLUGINS}
  install_routes = no
  install_virtual_ip = no
  retransmit_tries = 2
{settings}
  plugins {{
    vici {{
      socket = unix://{socket}
    }}
  }}
  filelog {{
    main {{
      path = {log}
      default = 1
      ike = 4
      chd = 4
      cfg = 2
      net = 1
      flush_line = yes
    }}
  }}
}}
"#,
                socket = socket.display(),
                log = log.display(),
            ),
        )?;
        let mut cmd = ns.command("sh");
        cmd.arg("-c")
            .arg(format!(
                "mount --bind '{}' /run && exec {CHARON_BIN}",
                run.display()
            ))
            .env("STRONGSWAN_CONF", &conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Bg::spawn(cmd)?;
        let mut charon = Charon {
            proc,
            uri: format!("unix://{}", socket.display()),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while charon.swanctl(["--stats"]).is_err() {
            if Instant::now() >= deadline || !charon.proc.is_running() {
                return Err(Error::Timeout(format!(
                    "charon's vici socket: {}",
                    charon.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(charon)
    }

    /// The temporary directory (config, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `swanctl COMMAND --uri … ARGS…` (the command must come first).
    pub fn swanctl<I, S>(&self, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let tail = args.split_off(1.min(args.len()));
        let mut cmd = std::process::Command::new("swanctl");
        cmd.args(args).arg("--uri").arg(&self.uri).args(tail);
        checked(cmd)
    }

    /// Loads the connection and its secret.
    pub fn load(&self, conn: &AwsLikeConn) -> Result<(), Error> {
        self.load_conf(&conn.swanctl_conf())
    }

    /// Loads a `swanctl.conf` text (connections and secrets), e.g. an [`AwsLikeConn`]'s with a
    /// test's changes.
    pub fn load_conf(&self, text: &str) -> Result<(), Error> {
        let file: PathBuf = self.dir().join("swanctl.conf");
        write_private(&file, text)?;
        self.swanctl(["--load-conns".as_ref(), "--file".as_ref(), file.as_os_str()])?;
        self.swanctl(["--load-creds".as_ref(), "--file".as_ref(), file.as_os_str()])?;
        Ok(())
    }

    /// `swanctl --list-sas --raw`: one line per IKE SA, `key=value` and `name {…}` blocks.
    pub fn list_sas(&self) -> Result<String, Error> {
        self.swanctl(["--list-sas", "--raw"])
    }

    /// Everything charon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("charon.log")).unwrap_or_default()
    }

    /// The Child SA keys charon logged (level 4 of `chd`), oldest first.
    pub fn child_keys(&self) -> Vec<LoggedChildKeys> {
        let log = self.log();
        let i2r = hex_dumps(&log, "encryption initiator key");
        let r2i = hex_dumps(&log, "encryption responder key");
        i2r.into_iter()
            .zip(r2i)
            .map(|(i2r, r2i)| LoggedChildKeys { i2r, r2i })
            .collect()
    }

    /// The IKE SA keys (SK_ei, SK_er with their salts) charon logged, oldest first.
    pub fn ike_keys(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let log = self.log();
        hex_dumps(&log, "Sk_ei secret")
            .into_iter()
            .zip(hex_dumps(&log, "Sk_er secret"))
            .collect()
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        // SIGTERM lets charon delete its SAs and its TUN device; SIGKILL if it hangs.
        self.proc.stop(Duration::from_secs(2));
    }
}

/// The byte dumps charon prints after lines containing `label` (`label => 36 bytes @ 0x…`
/// followed by lines `   0: 01 02 …  ascii`), in order.
pub fn hex_dumps(log: &str, label: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut lines = log.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.split_once(label).map(|(_, r)| r) else {
            continue;
        };
        let Some(len) = rest
            .split_whitespace()
            .skip_while(|w| *w != "=>")
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let Some(dump) = lines.next() else { break };
            // After the timestamp/thread prefix: "  16: 0A 0B ... ASCII".
            let Some((_, hex)) = dump.split_once(": ") else {
                break;
            };
            for w in hex.split_whitespace().take(16) {
                match u8::from_str_radix(w, 16) {
                    Ok(b) if w.len() == 2 && bytes.len() < len => bytes.push(b),
                    _ => break,
                }
            }
        }
        if bytes.len() == len {
            out.push(bytes);
        }
    }
    out
}

/// charon's kernel-libipsec carries ESP through a TUN device (`ipsec0`) whose routes it would
/// install in a table of its own; the lab routes `prefix` (the far site) into it directly, once
/// charon has created the device.
pub fn route_into_libipsec(ns: &Netns, prefix: &str) -> Result<(), Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    while ns.ip(["link", "show", "ipsec0"]).is_err() {
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!("no ipsec0 in {}", ns.name())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ns.ip(["link", "set", "ipsec0", "up"])?;
    ns.ip(["route", "replace", prefix, "dev", "ipsec0"])?;
    Ok(())
}
