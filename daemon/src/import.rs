//! `tandem import aws FILE.xml`: the `CustomerGatewayConfiguration` XML that AWS gives for a
//! Site-to-Site VPN connection -> a tandem config with one IKEv2 connection of two tunnels, one
//! 0600 PSK file per tunnel, and advice for the AWS side (docs/cli.md).
//!
//! Flow: [`parse`] reads the whole XML into an [`AwsVpn`] (every element tandem needs, checked,
//! or an [`ImportError`] naming the first missing or bad one); [`render`] turns it into the files'
//! text and the advice, with no I/O; [`write()`] creates the files, all or none: every target must
//! be absent (nothing is ever overwritten), and a file created before a later failure is removed.
//! So malformed or incomplete XML writes nothing.
//!
//! What is taken from the XML and what is not:
//! - outside addresses -> each tunnel's `local` / `remote`; inside /30 -> `inside`; the PSK ->
//!   its file (never printed); IKE and IPsec lifetimes -> `ike_lifetime` / `child_lifetime`;
//! - the algorithms are not copied: tandem offers only AES-256-GCM-16 with DH groups 19/20
//!   (docs/configuration.md); when the XML shows IKEv1, CBC, SHA-1 or a MODP group, the advice
//!   is the `aws ec2 modify-vpn-tunnel-options` command that moves that tunnel to what tandem
//!   speaks;
//! - AWS's DPD (10 s x 3) is not copied: tandem's own liveness probe runs at `dpd_interval`,
//!   and AWS answers it;
//! - the subnets are not in the XML: with static routing both lists are left as commented
//!   placeholders the operator must fill (the config is refused until then); with BGP the
//!   selectors are `0.0.0.0/0`, each tunnel is an interface, and the FRR neighbour lines are
//!   printed.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use zeroize::Zeroizing;

/// AWS gives exactly two tunnels per VPN connection, one per AWS endpoint.
pub const AWS_TUNNELS: usize = 2;
/// Longest connection name tandem accepts (the config's limit).
const MAX_NAME_LEN: usize = 64;
/// An AWS pre-shared key: 8 to 64 characters (AWS Site-to-Site VPN tunnel options).
const PSK_LEN: std::ops::RangeInclusive<usize> = 8..=64;
/// The TCP and IPv4 headers (20 + 20) between an inner MTU and the MSS clamped to it.
const TCP_IPV4_HEADERS: u32 = 40;
/// The smallest inner MTU tandem accepts (the IPv6 minimum link MTU, RFC 8200 §5).
const MIN_MTU: u32 = 1280;
/// The IKE proposals written: AES-256-GCM-16 with the two DH groups both sides have (19, 20).
const IKE_PROPOSALS: &str = r#"["aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha256-ecp256"]"#;
/// The Child SA proposals written: the same, the DH group being the PFS group.
const ESP_PROPOSALS: &str = r#"["aes256gcm16-ecp384", "aes256gcm16-ecp256"]"#;
/// The replay window written: AWS's own default (1024 packets).
const REPLAY_WINDOW: u32 = 1024;
/// What `--tunnel-options` asks of AWS: IKEv2, AES-256-GCM-16, SHA2-256/384 as PRF, groups 19/20.
const AWS_TUNNEL_OPTIONS: &str = "IKEVersions=[{Value=ikev2}],\
Phase1EncryptionAlgorithms=[{Value=AES256-GCM-16}],Phase2EncryptionAlgorithms=[{Value=AES256-GCM-16}],\
Phase1IntegrityAlgorithms=[{Value=SHA2-256},{Value=SHA2-384}],Phase2IntegrityAlgorithms=[{Value=SHA2-256},{Value=SHA2-384}],\
Phase1DHGroupNumbers=[{Value=19},{Value=20}],Phase2DHGroupNumbers=[{Value=19},{Value=20}]";

/// Why an import failed. Every variant names the element (as a path from the root) or the file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The XML file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file as given.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not well-formed XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The root element is not `vpn_connection`.
    #[error(
        "the root element is <{0}>, expected <vpn_connection> (AWS's customer gateway configuration)"
    )]
    WrongRoot(String),
    /// A required element (or attribute) is absent or empty.
    #[error("missing element {0}")]
    Missing(String),
    /// Neither `--name` nor an `id` attribute on `vpn_connection`.
    #[error("<vpn_connection> has no id attribute: pass --name")]
    NoId,
    /// Not exactly two `ipsec_tunnel` elements.
    #[error("expected {AWS_TUNNELS} <ipsec_tunnel> elements in <vpn_connection>, found {0}")]
    TunnelCount(usize),
    /// An element's text is not what it must be.
    #[error("{path}: {message}")]
    Invalid {
        /// The element's path.
        path: String,
        /// What is wrong, with the value (never for a PSK).
        message: String,
    },
    /// The connection name (from `--name` or the XML's id) is not a valid tandem name.
    #[error(
        "invalid connection name \"{0}\": use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.' (pass --name)"
    )]
    BadName(String),
    /// An output file exists already: nothing is overwritten.
    #[error("{0} exists: nothing written (remove it or choose another --name or --dir)")]
    Exists(PathBuf),
    /// Creating or writing an output file failed (the files created before it are removed).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ImportError {
    /// Whether the error is about the XML's content (the CLI prefixes it with the file's name).
    pub fn is_about_the_xml(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_)
                | Self::WrongRoot(_)
                | Self::Missing(_)
                | Self::NoId
                | Self::TunnelCount(_)
                | Self::Invalid { .. }
        )
    }
}

/// Routing as the XML's `vpn_connection_attributes` and `bgp` blocks say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// `NoBGPVPNConnection`: static routes on the AWS side.
    Static,
    /// eBGP over each tunnel's inside /30.
    Bgp {
        /// Our ASN (`customer_gateway/bgp/asn`).
        local_asn: u32,
        /// AWS's ASN (`vpn_gateway/bgp/asn`).
        remote_asn: u32,
        /// BGP hold time in seconds (`customer_gateway/bgp/hold_time`, AWS's default 30).
        hold_time: u32,
    },
}

/// One `ipsec_tunnel`.
#[derive(Debug, Clone)]
pub struct AwsTunnel {
    /// `customer_gateway/tunnel_outside_address/ip_address`: our public address.
    pub local: IpAddr,
    /// `vpn_gateway/tunnel_outside_address/ip_address`: AWS's endpoint.
    pub remote: IpAddr,
    /// `customer_gateway/tunnel_inside_address`: our inside address and prefix, if given.
    pub inside: Option<Ipv4Net>,
    /// `vpn_gateway/tunnel_inside_address/ip_address`: AWS's inside address (the BGP neighbour).
    pub remote_inside: Option<Ipv4Addr>,
    /// `ike/pre_shared_key`.
    pub psk: Zeroizing<String>,
    /// `ike/lifetime`, seconds.
    pub ike_lifetime: u64,
    /// `ipsec/lifetime`, seconds.
    pub child_lifetime: u64,
    /// `ipsec/tcp_mss_adjustment`, if given.
    pub tcp_mss: Option<u32>,
    /// What the XML asks for that tandem does not speak (`ike/mode main` -> "IKEv1", ...).
    pub unsupported: Vec<String>,
}

/// A parsed `vpn_connection`.
#[derive(Debug, Clone)]
pub struct AwsVpn {
    /// The `id` attribute (`vpn-...`), if present.
    pub id: Option<String>,
    /// Static or BGP.
    pub routing: Routing,
    /// The two tunnels, in XML order.
    pub tunnels: Vec<AwsTunnel>,
}

/// The XML element at `path` below `node` (one name per step), or `Missing` naming the whole path.
fn element<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    base: &str,
    path: &[&str],
) -> Result<roxmltree::Node<'a, 'i>, ImportError> {
    let mut n = node;
    let mut at = base.to_owned();
    for step in path {
        at = format!("{at}/{step}");
        n = n
            .children()
            .find(|c| c.has_tag_name(*step))
            .ok_or_else(|| ImportError::Missing(at.clone()))?;
    }
    Ok(n)
}

/// The trimmed text of the element at `path`; an absent or empty element is `Missing`.
fn text<'a>(
    node: roxmltree::Node<'a, '_>,
    base: &str,
    path: &[&str],
) -> Result<&'a str, ImportError> {
    let e = element(node, base, path)?;
    match e.text().map(str::trim) {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(ImportError::Missing(format!("{base}/{}", path.join("/")))),
    }
}

/// The text at `path` parsed by `f`; a parse failure names the element and the value.
fn value<T>(
    node: roxmltree::Node<'_, '_>,
    base: &str,
    path: &[&str],
    what: &str,
    f: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ImportError> {
    let t = text(node, base, path)?;
    f(t).ok_or_else(|| ImportError::Invalid {
        path: format!("{base}/{}", path.join("/")),
        message: format!("\"{t}\" is not {what}"),
    })
}

/// Reads and checks the AWS XML.
pub fn parse(xml: &str) -> Result<AwsVpn, ImportError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| ImportError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("vpn_connection") {
        return Err(ImportError::WrongRoot(root.tag_name().name().to_owned()));
    }
    let id = root
        .attribute("id")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let tunnels: Vec<_> = root
        .children()
        .filter(|c| c.has_tag_name("ipsec_tunnel"))
        .collect();
    if tunnels.len() != AWS_TUNNELS {
        return Err(ImportError::TunnelCount(tunnels.len()));
    }
    let parsed = tunnels
        .iter()
        .enumerate()
        .map(|(i, t)| tunnel(*t, &format!("vpn_connection/ipsec_tunnel[{}]", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let routing = routing(root, &tunnels)?;
    Ok(AwsVpn {
        id,
        routing,
        tunnels: parsed,
    })
}

/// BGP when the attributes say so (anything but `NoBGPVPNConnection`) or, without attributes,
/// when the tunnels carry BGP ASNs; AWS writes `bgp` blocks even for static connections.
fn routing(
    root: roxmltree::Node<'_, '_>,
    tunnels: &[roxmltree::Node<'_, '_>],
) -> Result<Routing, ImportError> {
    let attributes = root
        .children()
        .find(|c| c.has_tag_name("vpn_connection_attributes"))
        .and_then(|c| c.text())
        .map(str::trim);
    let has_asn = element(tunnels[0], "", &["vpn_gateway", "bgp", "asn"]).is_ok();
    let bgp = match attributes {
        Some("NoBGPVPNConnection") => false,
        Some(_) => true,
        None => has_asn,
    };
    if !bgp {
        return Ok(Routing::Static);
    }
    let base = "vpn_connection/ipsec_tunnel[1]";
    let asn = |path: &[&str]| value(tunnels[0], base, path, "an AS number", |s| s.parse().ok());
    let local_asn = asn(&["customer_gateway", "bgp", "asn"])?;
    let remote_asn = asn(&["vpn_gateway", "bgp", "asn"])?;
    let hold_time = match element(tunnels[0], base, &["customer_gateway", "bgp", "hold_time"]) {
        Ok(_) => value(
            tunnels[0],
            base,
            &["customer_gateway", "bgp", "hold_time"],
            "a hold time in seconds (0 or 3..=65535)",
            |s| {
                s.parse()
                    .ok()
                    .filter(|&h: &u32| h == 0 || (3..=65535).contains(&h))
            },
        )?,
        // AWS's hold time when the XML does not say (Site-to-Site VPN routing options).
        Err(_) => 30,
    };
    Ok(Routing::Bgp {
        local_asn,
        remote_asn,
        hold_time,
    })
}

fn tunnel(t: roxmltree::Node<'_, '_>, base: &str) -> Result<AwsTunnel, ImportError> {
    let ip = |path: &[&str]| value(t, base, path, "an IP address", |s| s.parse::<IpAddr>().ok());
    let local = ip(&["customer_gateway", "tunnel_outside_address", "ip_address"])?;
    let remote = ip(&["vpn_gateway", "tunnel_outside_address", "ip_address"])?;
    let inside = match element(t, base, &["customer_gateway", "tunnel_inside_address"]) {
        Err(_) => None,
        Ok(_) => {
            let p = ["customer_gateway", "tunnel_inside_address"];
            let addr: Ipv4Addr = value(
                t,
                base,
                &[p[0], p[1], "ip_address"],
                "an IPv4 address",
                |s| s.parse().ok(),
            )?;
            let prefix: u8 = value(
                t,
                base,
                &[p[0], p[1], "network_cidr"],
                "a prefix length (0..=32)",
                |s| s.parse().ok().filter(|&n| n <= 32),
            )?;
            Ipv4Net::new(addr, prefix).ok()
        }
    };
    let remote_inside = match element(t, base, &["vpn_gateway", "tunnel_inside_address"]) {
        Err(_) => None,
        Ok(_) => Some(value(
            t,
            base,
            &["vpn_gateway", "tunnel_inside_address", "ip_address"],
            "an IPv4 address",
            |s| s.parse().ok(),
        )?),
    };
    let psk_text = text(t, base, &["ike", "pre_shared_key"])?;
    if !PSK_LEN.contains(&psk_text.len()) || !psk_text.bytes().all(|b| b.is_ascii_graphic()) {
        // Never echo the key, even a bad one.
        return Err(ImportError::Invalid {
            path: format!("{base}/ike/pre_shared_key"),
            message: format!(
                "not an AWS pre-shared key ({}..={} printable ASCII characters, found {})",
                PSK_LEN.start(),
                PSK_LEN.end(),
                psk_text.len()
            ),
        });
    }
    let seconds = |path: &[&str]| {
        value(t, base, path, "a lifetime in seconds", |s| {
            s.parse::<u64>().ok().filter(|&n| n > 0)
        })
    };
    let ike_lifetime = seconds(&["ike", "lifetime"])?;
    let child_lifetime = seconds(&["ipsec", "lifetime"])?;
    let tcp_mss = match element(t, base, &["ipsec", "tcp_mss_adjustment"]) {
        Err(_) => None,
        Ok(_) => Some(value(
            t,
            base,
            &["ipsec", "tcp_mss_adjustment"],
            "a TCP MSS",
            |s| s.parse().ok().filter(|&m: &u32| m >= 536),
        )?),
    };
    Ok(AwsTunnel {
        local,
        remote,
        inside,
        remote_inside,
        psk: Zeroizing::new(psk_text.to_owned()),
        ike_lifetime,
        child_lifetime,
        tcp_mss,
        unsupported: unsupported(t),
    })
}

/// What the tunnel's `ike` and `ipsec` blocks ask for that tandem will not do, in words.
fn unsupported(t: roxmltree::Node<'_, '_>) -> Vec<String> {
    let get = |path: &[&str]| {
        element(t, "", path)
            .ok()
            .and_then(|e| e.text())
            .map(|s| s.trim().to_ascii_lowercase())
    };
    let mut out = Vec::new();
    if let Some(mode) = get(&["ike", "mode"]) {
        if mode == "main" || mode == "aggressive" {
            out.push(format!("IKEv1 ({mode} mode)"));
        }
    }
    for block in ["ike", "ipsec"] {
        if let Some(enc) = get(&[block, "encryption_protocol"]) {
            if !enc.contains("gcm") {
                out.push(format!("{block} encryption {enc}"));
            }
        }
        if let Some(auth) = get(&[block, "authentication_protocol"]) {
            if auth.contains("sha1") || auth.contains("md5") {
                out.push(format!("{block} integrity {auth}"));
            }
        }
        if let Some(group) = get(&[block, "perfect_forward_secrecy"]) {
            if group != "group19" && group != "group20" {
                out.push(format!("{block} DH {group}"));
            }
        }
    }
    out
}

/// The text of everything an import produces.
#[derive(Debug)]
pub struct Rendered {
    /// The connection name (file names derive from it).
    pub name: String,
    /// `NAME.toml`.
    pub config: String,
    /// `NAME-tunnel1.psk`, `NAME-tunnel2.psk`: (file name, contents).
    pub psks: Vec<(String, Zeroizing<String>)>,
    /// What to print after the files are written: next steps, AWS commands, FRR lines.
    pub advice: String,
}

/// A valid tandem connection name (the config's rule).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

/// A duration in the config's syntax: whole hours, minutes or seconds.
fn duration(secs: u64) -> String {
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The files' text and the advice for `vpn`, named `name` (or the XML's id); `source` is the XML
/// file as given, for the header comment.
pub fn render(vpn: &AwsVpn, name: Option<&str>, source: &str) -> Result<Rendered, ImportError> {
    let id = vpn.id.as_deref().unwrap_or("(no id)");
    let name = name
        .or(vpn.id.as_deref())
        .ok_or(ImportError::NoId)?
        .to_owned();
    if !valid_name(&name) {
        return Err(ImportError::BadName(name));
    }
    let bgp = matches!(vpn.routing, Routing::Bgp { .. });
    let mut c = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(
        c,
        "# tandem config for the AWS Site-to-Site VPN connection {id}, written by\n\
         # `tandem import aws {source}` (docs/cli.md, docs/configuration.md).",
    );
    let mss = vpn.tunnels.iter().filter_map(|t| t.tcp_mss).min();
    if let Some(mss) = mss {
        let mtu = mss + TCP_IPV4_HEADERS;
        if mtu < u32::from(tandem_config::DEFAULT_MTU) {
            let _ = writeln!(
                c,
                "\n[gateway]\nmtu = {}                                    # AWS's tcp_mss_adjustment {mss} + 40: TCP MSS is clamped to fit",
                mtu.max(MIN_MTU)
            );
        }
    }
    let _ = writeln!(
        c,
        "\n[[connection]]\nname = \"{name}\"\nprotocol = \"ikev2\""
    );
    if bgp {
        let _ = writeln!(
            c,
            "routing = \"interfaces\"                       # BGP: each tunnel is its own interface, FRR picks the path\n\
             local_subnets = [\"0.0.0.0/0\"]                 # route-based: what crosses is decided by BGP\n\
             remote_subnets = [\"0.0.0.0/0\"]"
        );
    } else {
        let _ = writeln!(
            c,
            "# Fill in both lists before use (the config is refused without them):\n\
             # local_subnets: the on-premises prefixes that use this connection;\n\
             # remote_subnets: the VPC's CIDR, which AWS's XML does not carry.\n\
             # local_subnets = [\"10.10.0.0/16\"]\n\
             # remote_subnets = [\"10.20.0.0/16\"]"
        );
    }
    let (ike_lifetime, ike_note) = lifetime(vpn, |t| t.ike_lifetime);
    let (child_lifetime, child_note) = lifetime(vpn, |t| t.child_lifetime);
    let _ = writeln!(
        c,
        "dpd_interval = \"250ms\"                        # tandem's liveness probe, answered by AWS (AWS's own DPD: 10 s x 3)\n\
         dpd_timeout = \"1s\"\n\
         \n\
         [connection.ike]\n\
         proposals = {IKE_PROPOSALS}\n\
         esp_proposals = {ESP_PROPOSALS}\n\
         ike_lifetime = \"{}\"                           # AWS phase 1 lifetime: {ike_note}\n\
         child_lifetime = \"{}\"                         # AWS phase 2 lifetime: {child_note}\n\
         esn = false                                   # AWS does not negotiate ESN\n\
         replay_window = {REPLAY_WINDOW}\n\
         encapsulation = \"force\"\n\
         initiate = true",
        duration(ike_lifetime),
        duration(child_lifetime),
    );
    let mut psks = Vec::new();
    for (i, t) in vpn.tunnels.iter().enumerate() {
        let tunnel = format!("tunnel{}", i + 1);
        let psk_file = format!("{name}-{tunnel}.psk");
        let _ = writeln!(
            c,
            "\n[[connection.tunnel]]\nname = \"{tunnel}\"\nlocal = \"{}\"\nremote = \"{}\"\npsk_file = \"{psk_file}\"",
            t.local, t.remote
        );
        match t.inside {
            // The inside /30 is an interface address: with static routing there is none.
            Some(inside) if bgp => {
                let _ = writeln!(c, "inside = \"{inside}\"");
            }
            Some(inside) => {
                let _ = writeln!(
                    c,
                    "# inside = \"{inside}\"                  # AWS's inside /30: for routing = \"interfaces\""
                );
            }
            None => {}
        }
        let _ = writeln!(c, "priority = {}", i + 1);
        psks.push((psk_file, Zeroizing::new(format!("{}\n", t.psk.as_str()))));
    }
    Ok(Rendered {
        advice: advice(vpn, &name, bgp),
        name,
        config: c,
        psks,
    })
}

/// The connection's lifetime: the shortest of its tunnels' (tandem sets lifetimes per connection),
/// and the comment that says where it came from.
fn lifetime(vpn: &AwsVpn, f: impl Fn(&AwsTunnel) -> u64) -> (u64, String) {
    let all: Vec<u64> = vpn.tunnels.iter().map(&f).collect();
    let min = all.iter().copied().min().unwrap_or_default();
    if all.iter().all(|&s| s == min) {
        return (min, format!("{min} s"));
    }
    let each: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, s)| format!("tunnel{} {s} s", i + 1))
        .collect();
    (min, format!("{}; the shorter", each.join(", ")))
}

fn advice(vpn: &AwsVpn, name: &str, bgp: bool) -> String {
    let mut a = String::new();
    if !bgp {
        let _ = writeln!(
            a,
            "\nBefore use: fill in local_subnets and remote_subnets in {name}.toml."
        );
    }
    let weak: Vec<(usize, &AwsTunnel)> = vpn
        .tunnels
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.unsupported.is_empty())
        .collect();
    if !weak.is_empty() {
        let _ = writeln!(
            a,
            "\nOn the AWS side: tandem speaks IKEv2 with AES-256-GCM-16 and DH groups 19/20 only.\n\
             Move each tunnel there, one at a time (AWS restarts a tunnel it modifies):"
        );
        for (i, t) in weak {
            let _ = writeln!(
                a,
                "\n# tunnel{} ({}): the XML asks for {}\n\
                 aws ec2 modify-vpn-tunnel-options --vpn-connection-id {} \\\n  \
                 --vpn-tunnel-outside-ip-address {} \\\n  \
                 --tunnel-options '{AWS_TUNNEL_OPTIONS}'",
                i + 1,
                t.remote,
                t.unsupported.join(", "),
                vpn.id.as_deref().unwrap_or("VPN_CONNECTION_ID"),
                t.remote,
            );
        }
    }
    if let Routing::Bgp {
        local_asn,
        remote_asn,
        hold_time,
    } = vpn.routing
    {
        a.push_str(&frr_snippet(vpn, local_asn, remote_asn, hold_time));
    }
    a
}

/// The office prefix the printed FRR config announces until the user puts theirs in its place.
const OFFICE_PREFIX_PLACEHOLDER: &str = "10.10.0.0/16";

/// A complete FRR `bgpd` config for the connection (docs/routing.md explains each line): one eBGP
/// neighbour per tunnel over its inside /30 with the XML's hold time (keepalive a third of it,
/// RFC 4271 §10) and a one-second connect retry (FRR's default, 120 s, would leave a healed
/// tunnel unused for minutes); route maps in and out, without which FRR 8 exchanges no routes
/// on an eBGP session (`bgp ebgp-requires-policy`); the office prefix as a `network` line to
/// replace; and tunnel2 as the standby, its announcements prepended twice so that AWS sends
/// over tunnel1, as the config's priorities do.
fn frr_snippet(vpn: &AwsVpn, local_asn: u32, remote_asn: u32, hold_time: u32) -> String {
    let mut a = String::new();
    let _ = writeln!(
        a,
        "\nFRR (bgpd.conf), one eBGP neighbour per tunnel over its inside /30, tunnel2 the standby\n\
         (docs/routing.md); put your office prefixes in place of {OFFICE_PREFIX_PLACEHOLDER}:\n\n\
         router bgp {local_asn}"
    );
    let keepalive = hold_time / 3;
    let neighbours: Vec<(usize, Ipv4Addr)> = vpn
        .tunnels
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.remote_inside.map(|n| (i, n)))
        .collect();
    for (_, n) in &neighbours {
        let _ = writeln!(a, " neighbor {n} remote-as {remote_asn}");
        let _ = writeln!(a, " neighbor {n} timers {keepalive} {hold_time}");
        let _ = writeln!(a, " neighbor {n} timers connect 1");
    }
    let _ = writeln!(
        a,
        " address-family ipv4 unicast\n  network {OFFICE_PREFIX_PLACEHOLDER}"
    );
    for (i, n) in &neighbours {
        let out = if *i == 0 { "ALL" } else { "STANDBY" };
        let _ = writeln!(a, "  neighbor {n} route-map ALL in");
        let _ = writeln!(a, "  neighbor {n} route-map {out} out");
    }
    let _ = writeln!(
        a,
        " exit-address-family\n!\nroute-map ALL permit 10\n!\n\
         route-map STANDBY permit 10\n set as-path prepend {local_asn} {local_asn}\n!"
    );
    a
}

/// Creates `dir/NAME.toml` and the PSK files (0600), all or none; returns the paths written.
pub fn write(dir: &Path, r: &Rendered) -> Result<Vec<PathBuf>, ImportError> {
    let mut files: Vec<(PathBuf, &str, u32)> = vec![(
        dir.join(format!("{}.toml", r.name)),
        r.config.as_str(),
        0o644,
    )];
    for (file, psk) in &r.psks {
        files.push((dir.join(file), psk.as_str(), 0o600));
    }
    // Refuse before creating anything, so an existing file leaves the directory as it was.
    for (path, _, _) in &files {
        if path.symlink_metadata().is_ok() {
            return Err(ImportError::Exists(path.clone()));
        }
    }
    let mut written: Vec<PathBuf> = Vec::new();
    for (path, contents, mode) in &files {
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(path)
            .and_then(|mut f| {
                f.write_all(contents.as_bytes())?;
                f.sync_all()
            });
        if let Err(source) = result {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            return Err(match source.kind() {
                std::io::ErrorKind::AlreadyExists => ImportError::Exists(path.clone()),
                _ => ImportError::Write {
                    path: path.clone(),
                    source,
                },
            });
        }
        written.push(path.clone());
    }
    Ok(written)
}

/// The whole command: read, parse, render, write. Returns what to print on stdout.
pub fn import_aws(file: &Path, name: Option<&str>, dir: &Path) -> Result<String, ImportError> {
    let xml = std::fs::read_to_string(file).map_err(|source| ImportError::Read {
        file: file.display().to_string(),
        source,
    })?;
    let vpn = parse(&xml)?;
    let source = file.file_name().map_or_else(
        || file.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let rendered = render(&vpn, name, &source)?;
    let written = write(dir, &rendered)?;
    let mut out = String::new();
    for p in &written {
        let _ = writeln!(out, "wrote {}", p.display());
    }
    out.push_str(&rendered.advice);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_use_the_largest_whole_unit() {
        assert_eq!(duration(28800), "8h");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(900), "15m");
        assert_eq!(duration(901), "901s");
    }

    #[test]
    fn names_follow_the_config_rule() {
        assert!(valid_name("vpn-0a1b2c3d4e5f60718"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".."));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
