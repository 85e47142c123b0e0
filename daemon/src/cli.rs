//! The command line (docs/cli.md): clap definitions, exit codes and control-socket discovery.
//!
//! `main.rs` parses with [`Cli`] and dispatches; the control commands find the daemon's socket
//! with [`control_socket`], in this order (docs/cli.md): `--socket PATH`; the `[control] socket` of `-c FILE`;
//! `$TANDEM_SOCKET`; `/run/tandem/control.sock`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tandem_config::ConfigError;

/// Exit statuses (defined once, in the admin crate: docs/cli.md, "Exit status").
pub use tandem_admin::exit::{
    OK as EXIT_OK, UNREACHABLE as EXIT_UNREACHABLE, USER as EXIT_USER_ERROR,
};

/// Environment variable naming the control socket (third in the discovery order).
pub const SOCKET_ENV: &str = "TANDEM_SOCKET";

const MAIN_EXAMPLES: &str = "\
Examples:
  umask 077; tandem genkey > /etc/tandem/private.key
  tandem pubkey < /etc/tandem/private.key        # give this to the peer
  umask 077; tandem genpsk > /etc/tandem/tunnel1.psk
  tandem check -c /etc/tandem/tandem.toml
  tandem run -c /etc/tandem/tandem.toml
  tandem status --json
  tandem failover prod-vpc --to tunnel2
  tandem drill prod-vpc --duration 10s
  tandem import aws vpn-0a1b2c3d4e5f60718.xml --dir /etc/tandem

Exit status: 0 success, 1 user error (bad config, unknown name), 2 daemon unreachable.";

/// tandem: a userspace IPsec-style VPN gateway with two redundant tunnels per connection and
/// sub-second failover.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, after_help = MAIN_EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands (docs/cli.md).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new base64 X25519 private key (from the OS CSPRNG).
    #[command(after_help = "\
Examples:
  umask 077; tandem genkey > /etc/tandem/private.key
  tandem genkey | tee /etc/tandem/private.key | tandem pubkey")]
    Genkey,
    /// Read a base64 private key on stdin, print its public key.
    #[command(after_help = "\
Examples:
  tandem pubkey < /etc/tandem/private.key
  tandem genkey | tandem pubkey

Exit status 1 if stdin does not hold a base64 32-byte key.")]
    Pubkey,
    /// Print a new base64 32-byte pre-shared key (from the OS CSPRNG).
    #[command(after_help = "\
Examples:
  umask 077; tandem genpsk > /etc/tandem/tunnel1.psk

Both ends of a tunnel need the same PSK file (mode 0600).")]
    Genpsk,
    /// Validate a config and the key files it names.
    #[command(after_help = "\
Examples:
  tandem check -c /etc/tandem/tandem.toml
  tandem check -c cgw.toml && systemctl reload tandem

Prints one `FILE:LINE:COL: field: message` line per problem on stderr and exits 1;
exits 0 with a summary on stdout when the config is valid.")]
    Check(ConfigArgs),
    /// Run the gateway in the foreground (logs to stderr; systemd Type=notify aware).
    #[command(after_help = "\
Examples:
  tandem run -c /etc/tandem/tandem.toml
  RUST_LOG=debug tandem run -c cgw.toml
  systemctl start tandem@cgw          # runs /etc/tandem/cgw.toml")]
    Run(ConfigArgs),
    /// Show connections, tunnels, states, active tunnel, handshakes, traffic, RTT, failovers.
    #[command(after_help = "\
Examples:
  tandem status
  tandem status --watch                     # redraw every second until Ctrl-C
  tandem status --watch --interval 5s
  tandem status --json | jq '.connections[].active_tunnel'
  tandem status --socket /run/tandem/cgw.sock

Colours when stdout is a terminal, unless NO_COLOR is set (https://no-color.org) or TERM=dumb.
The table shows human units (KiB/MiB/GiB, bit/s, 3m12s); --json keeps the exact numbers.")]
    Status(StatusArgs),
    /// Re-read the config, keeping tunnels whose settings did not change (also SIGHUP).
    #[command(after_help = "\
Examples:
  tandem check -c /etc/tandem/tandem.toml && tandem reload
  tandem reload -c /etc/tandem/cgw.toml     # finds the socket from that config")]
    Reload(ControlArgs),
    /// Planned, make-before-break switch of a connection's active tunnel.
    #[command(after_help = "\
Examples:
  tandem failover prod-vpc                  # move to the best other Up tunnel and pin it
  tandem failover prod-vpc --to tunnel2     # pin tunnel2 (maintenance on tunnel1)
  tandem failover prod-vpc --auto           # unpin: normal priority rules again")]
    Failover(FailoverArgs),
    /// Failover drill on a live gateway: silence the active tunnel and report the gap.
    #[command(after_help = "\
Examples:
  tandem drill prod-vpc
  tandem drill prod-vpc --duration 30s
  tandem drill prod-vpc --graceful          # send the closing notice instead of going silent
  tandem drill prod-vpc --report drill.html # and write the report as a page with its timeline

Reports detection time, traffic gap, probes lost and failback time.")]
    Drill(DrillArgs),
    /// Stream tunnel state changes, switches, handshakes and drills as they happen.
    #[command(after_help = "\
Examples:
  tandem events
  tandem events --json | jq -c 'select(.event == \"state\")'
  tandem events --socket /run/tandem/cgw.sock")]
    Events(EventsArgs),
    /// Turn a cloud provider's VPN connection description into a tandem config and PSK files.
    #[command(subcommand)]
    Import(ImportSource),
    /// Print the shell completion script for bash, zsh or fish (the package installs them).
    #[command(
        hide = true,
        after_help = "\
Examples:
  tandem completions bash > /usr/share/bash-completion/completions/tandem
  tandem completions zsh > /usr/share/zsh/vendor-completions/_tandem
  tandem completions fish > /usr/share/fish/vendor_completions.d/tandem.fish"
    )]
    Completions(CompletionsArgs),
}

/// `tandem completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `tandem import SOURCE`: where the description comes from.
#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// AWS Site-to-Site VPN: the customer gateway configuration XML (`aws ec2
    /// describe-vpn-connections --query 'VpnConnections[0].CustomerGatewayConfiguration'`).
    #[command(after_help = "\
Examples:
  tandem import aws vpn-0a1b2c3d4e5f60718.xml --dir /etc/tandem
  tandem import aws office.xml --name office --dir /etc/tandem

Writes DIR/NAME.toml (an IKEv2 connection with two tunnels) and DIR/NAME-tunnel1.psk,
DIR/NAME-tunnel2.psk (mode 0600); never overwrites a file. With static routing, fill in
local_subnets and remote_subnets before use. Prints the `aws ec2 modify-vpn-tunnel-options`
command for each tunnel that AWS set up with IKEv1, CBC, SHA-1 or a MODP group, and an FRR
bgpd config (neighbours, timers, route maps) when the connection uses BGP; never prints a PSK.
Exit status 1, with nothing written, if the XML is malformed or lacks an element.")]
    Aws(ImportAwsArgs),
}

/// `tandem import aws FILE.xml [--name NAME] [--dir DIR]`.
#[derive(Debug, Args)]
pub struct ImportAwsArgs {
    /// The XML file (AWS's `CustomerGatewayConfiguration`).
    #[arg(value_name = "FILE.xml")]
    pub file: PathBuf,
    /// The connection name and file stem (default: the XML's `vpn_connection id`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where to write the files (created fresh; an existing one is an error).
    #[arg(long, value_name = "DIR", default_value = ".", visible_alias = "out")]
    pub dir: PathBuf,
}

/// `-c FILE`, required.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The config file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,
}

/// How a control command finds the daemon.
#[derive(Debug, Args, Default)]
pub struct ControlArgs {
    /// The daemon's control socket (overrides everything else).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Take the socket from this config's `[control] socket`.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `tandem status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Finding the daemon.
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print the status as one JSON document (fields in docs/cli.md) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw the status every second (like `watch`) until Ctrl-C; adds the RX/s and TX/s rates.
    /// With --json: one compact document per line.
    #[arg(long)]
    pub watch: bool,
    /// Time between two redraws with --watch (`500ms`, `2s`; from 100ms to 1h).
    #[arg(long, value_name = "DURATION", default_value = "1s", requires = "watch",
          value_parser = parse_interval_arg)]
    pub interval: Duration,
}

/// `tandem events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Finding the daemon.
    #[command(flatten)]
    pub control: ControlArgs,
    /// One JSON object per line (fields in docs/cli.md) instead of one readable line per event.
    #[arg(long)]
    pub json: bool,
}

/// `tandem failover CONNECTION [--to TUNNEL | --auto]`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Finding the daemon.
    #[command(flatten)]
    pub control: ControlArgs,
    /// The connection to switch.
    pub connection: String,
    /// Pin this tunnel as active until `--auto`.
    #[arg(long, value_name = "TUNNEL", conflicts_with = "auto")]
    pub to: Option<String>,
    /// Remove the pin: the normal priority rules apply again.
    #[arg(long)]
    pub auto: bool,
}

/// What `tandem failover` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverTarget {
    /// No `--to` / `--auto`: the best other Up tunnel, pinned.
    Best,
    /// `--to TUNNEL`: pin that tunnel.
    To(String),
    /// `--auto`: unpin.
    Auto,
}

impl FailoverArgs {
    /// The requested target.
    pub fn target(&self) -> FailoverTarget {
        match (&self.to, self.auto) {
            (Some(t), _) => FailoverTarget::To(t.clone()),
            (None, true) => FailoverTarget::Auto,
            (None, false) => FailoverTarget::Best,
        }
    }
}

/// `tandem drill CONNECTION [--duration 10s] [--graceful]`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Finding the daemon.
    #[command(flatten)]
    pub control: ControlArgs,
    /// The connection to drill.
    pub connection: String,
    /// How long the active tunnel stays silent (`250ms`, `10s`, `1m`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_arg)]
    pub duration: Duration,
    /// Send the "closing" notice instead of going silent.
    #[arg(long)]
    pub graceful: bool,
    /// Also write the report as one self-contained HTML page (timeline picture, figures, settings).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<std::path::PathBuf>,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    let d = tandem_config::parse_duration(s)?;
    if d.is_zero() {
        return Err("the duration must be greater than 0".into());
    }
    Ok(d)
}

/// Shortest and longest `status --watch --interval`: faster than 10 redraws a second is more
/// than anyone reads and loads a big hub's daemon (a status of 1000 tunnels takes ~10 ms);
/// slower than an hour is not watching.
pub const WATCH_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

fn parse_interval_arg(s: &str) -> Result<Duration, String> {
    let d = tandem_config::parse_duration(s)?;
    if !WATCH_INTERVAL_RANGE.contains(&d) {
        return Err("the interval must be from 100ms to 1h".into());
    }
    Ok(d)
}

/// The control socket for a control command, in the order docs/cli.md gives, reading `$TANDEM_SOCKET`.
pub fn control_socket(args: &ControlArgs) -> Result<PathBuf, ConfigError> {
    discover_socket(
        args.socket.as_deref(),
        args.config.as_deref(),
        std::env::var_os(SOCKET_ENV),
    )
}

/// The discovery rule with the environment passed in: `flag`; else the `[control] socket` of
/// `config` (an unreadable or unparsable config is an error, not a silent fallback); else `env`
/// when non-empty; else [`tandem_config::DEFAULT_CONTROL_SOCKET`].
pub fn discover_socket(
    flag: Option<&Path>,
    config: Option<&Path>,
    env: Option<OsString>,
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(c) = config {
        if let Some(p) = tandem_config::control_socket_of(c)? {
            return Ok(p);
        }
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return Ok(PathBuf::from(e));
    }
    Ok(PathBuf::from(tandem_config::DEFAULT_CONTROL_SOCKET))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_discovery_follows_the_spec_order() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("with.toml");
        let without = dir.path().join("without.toml");
        std::fs::write(&with, "[control]\nsocket = \"/tmp/from-config.sock\"\n").unwrap();
        std::fs::write(&without, "[gateway]\n").unwrap();
        let env = || Some(OsString::from("/tmp/from-env.sock"));
        let flag = Path::new("/tmp/flag.sock");

        let got = discover_socket(Some(flag), Some(&with), env()).unwrap();
        assert_eq!(got, flag);
        let got = discover_socket(None, Some(&with), env()).unwrap();
        assert_eq!(got, Path::new("/tmp/from-config.sock"));
        let got = discover_socket(None, Some(&without), env()).unwrap();
        assert_eq!(got, Path::new("/tmp/from-env.sock"));
        let got = discover_socket(None, None, Some(OsString::new())).unwrap();
        assert_eq!(got, Path::new("/run/tandem/control.sock"));
        assert!(discover_socket(None, Some(&dir.path().join("missing.toml")), env()).is_err());
    }

    #[test]
    fn failover_and_drill_arguments_parse() {
        let cli = Cli::try_parse_from(["tandem", "failover", "prod", "--to", "t2"]).unwrap();
        let Command::Failover(f) = cli.command else {
            panic!("not failover")
        };
        assert_eq!(f.target(), FailoverTarget::To("t2".into()));
        assert!(
            Cli::try_parse_from(["tandem", "failover", "prod", "--to", "t2", "--auto"]).is_err()
        );
        let cli = Cli::try_parse_from(["tandem", "drill", "prod", "--duration", "250ms"]).unwrap();
        let Command::Drill(d) = cli.command else {
            panic!("not drill")
        };
        assert_eq!(d.duration, Duration::from_millis(250));
        assert!(!d.graceful);
        assert!(Cli::try_parse_from(["tandem", "drill", "prod", "--duration", "0s"]).is_err());
    }

    #[test]
    fn import_aws_arguments_parse() {
        let cli = Cli::try_parse_from(["tandem", "import", "aws", "a.xml", "--out", "/x"]).unwrap();
        let Command::Import(ImportSource::Aws(a)) = cli.command else {
            panic!("not import aws")
        };
        assert_eq!(a.file, Path::new("a.xml"));
        assert_eq!(a.dir, Path::new("/x"));
        assert_eq!(a.name, None);
        let cli = Cli::try_parse_from(["tandem", "import", "aws", "a.xml", "--name", "n"]).unwrap();
        let Command::Import(ImportSource::Aws(a)) = cli.command else {
            panic!("not import aws")
        };
        assert_eq!(a.dir, Path::new("."));
        assert_eq!(a.name.as_deref(), Some("n"));
        assert!(Cli::try_parse_from(["tandem", "import", "aws"]).is_err());
        assert!(Cli::try_parse_from(["tandem", "import", "gcp", "a.xml"]).is_err());
    }
}
