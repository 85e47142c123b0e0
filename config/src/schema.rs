//! The schema walk: `toml`'s spanned tree -> checked intermediate values with their spans ->
//! [`validate`](crate::validate) -> [`Config`].
//!
//! Every problem is pushed to the [`Sink`] and the walk goes on, so one run reports them all; a
//! field that failed is left out (`None`) and the checks that need it are skipped, so one mistake
//! is reported once. A [`Config`] is assembled only when the sink stayed empty.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{ConfigError, Diagnostic, Sink};
use crate::include::{IncludeFiles, IncludedFile};
use crate::keyfile::KeyFiles;
use crate::values::{
    format_duration, parse_duration, parse_interface_address, parse_key_base64, parse_socket_addr,
    parse_subnet,
};
use crate::{
    Config, Connection, Control, DEFAULT_CONTROL_SOCKET, DEFAULT_FAILBACK, DEFAULT_MTU,
    DEFAULT_REKEY_AFTER, DEFAULT_TUN_NAME, Gateway, Hooks, MAX_DPD_INTERVAL, MAX_DPD_TIMEOUT,
    MAX_FAILBACK, MAX_HOOK_TIMEOUT, MAX_MTU, MIN_DPD_INTERVAL, MIN_MTU, MIN_REKEY_AFTER, Mode,
    REJECT_AFTER, Routing, SecretKey, TimerProfile, Tunnel, TunnelInterface,
};
use tandem_engine::config::{
    DEFAULT_CHILD_LIFETIME, DEFAULT_IKE_LIFETIME, DEFAULT_REPLAY_WINDOW, IkeProbe, IkeSettings,
    IkeTunnelConfig, Protocol,
};
use tandem_ike::{EspProposal, Identity, IkeProposal};
use zeroize::Zeroizing;

/// Shortest accepted `ike_lifetime` / `child_lifetime`: AWS's lower bound, 900 s, with room for
/// tests that rekey often.
const MIN_IKE_LIFETIME: Duration = Duration::from_secs(10);
/// Longest accepted lifetime: AWS's phase-1 maximum, 8 h.
const MAX_IKE_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// IKEv2 PSK length bounds in characters (AWS: 8 to 64).
const MIN_IKE_PSK_LEN: usize = 8;
/// See [`MIN_IKE_PSK_LEN`].
const MAX_IKE_PSK_LEN: usize = 64;

/// A value with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) span: Range<usize>,
    pub(crate) path: String,
}

/// Longest connection or tunnel name: they appear in logs, metric labels and CLI arguments.
const MAX_NAME_LEN: usize = 64;
/// Linux `IFNAMSIZ` (16) minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

const ROOT_KEYS: &[&str] = &["include", "gateway", "control", "hooks", "connection"];
/// An included file holds only connections (docs/configuration.md, "Including files").
const INCLUDED_KEYS: &[&str] = &["connection"];
const GATEWAY_KEYS: &[&str] = &["private_key_file", "tun_name", "mtu", "address"];
const CONTROL_KEYS: &[&str] = &["socket", "metrics_listen"];
const HOOKS_KEYS: &[&str] = &["on_up", "on_down", "timeout"];
const CONNECTION_KEYS: &[&str] = &[
    "name",
    "protocol",
    "peer_public_key",
    "peer_public_key_file",
    "local_subnets",
    "remote_subnets",
    "mode",
    "routing",
    "failback",
    "timers",
    "dpd_interval",
    "dpd_timeout",
    "mss_clamp",
    "rekey_after",
    "ike",
    "tunnel",
];
/// `[connection.ike]` of a `protocol = "ikev2"` connection.
const IKE_KEYS: &[&str] = &[
    "proposals",
    "esp_proposals",
    "ike_lifetime",
    "child_lifetime",
    "esn",
    "replay_window",
    "encapsulation",
    "initiate",
];
const TUNNEL_KEYS: &[&str] = &[
    "name",
    "local",
    "remote",
    "peer_public_key",
    "peer_public_key_file",
    "psk_file",
    "priority",
    "ifname",
    "inside",
    "local_id",
    "remote_id",
    "probe_target",
    "probe_source",
];

/// Every key the walk accepts, by table (`""` is the top level), in the order of the reference
/// in `docs/configuration.md`. These are the very lists `Walker::check_keys` judges keys by, so a
/// test can hold the documentation to them.
pub const SCHEMA: &[(&str, &[&str])] = &[
    ("", ROOT_KEYS),
    ("gateway", GATEWAY_KEYS),
    ("control", CONTROL_KEYS),
    ("hooks", HOOKS_KEYS),
    ("connection", CONNECTION_KEYS),
    ("connection.ike", IKE_KEYS),
    ("connection.tunnel", TUNNEL_KEYS),
];

pub(crate) struct RawGateway {
    pub(crate) private_key: Option<(SecretKey, PathBuf)>,
    /// `private_key_file` was written (whether or not it could be read).
    pub(crate) private_key_given: bool,
    pub(crate) tun_name: String,
    pub(crate) mtu: u16,
    pub(crate) address: Option<IpNet>,
}

pub(crate) struct RawConnection {
    pub(crate) path: String,
    pub(crate) name: Option<At<String>>,
    pub(crate) local_subnets: Vec<At<IpNet>>,
    pub(crate) remote_subnets: Vec<At<IpNet>>,
    pub(crate) mode: Mode,
    pub(crate) routing: Routing,
    pub(crate) failback: Option<Duration>,
    pub(crate) timers: TimerProfile,
    pub(crate) dpd_interval: Option<At<Duration>>,
    pub(crate) dpd_timeout: Option<At<Duration>>,
    pub(crate) mss_clamp: bool,
    pub(crate) rekey_after: Duration,
    /// `None` when `protocol` or `[connection.ike]` had an error (already reported).
    pub(crate) protocol: Option<Protocol>,
    pub(crate) tunnels: Vec<RawTunnel>,
}

pub(crate) struct RawTunnel {
    pub(crate) span: Range<usize>,
    pub(crate) path: String,
    pub(crate) name: Option<At<String>>,
    pub(crate) local: Option<At<SocketAddr>>,
    pub(crate) remote: Option<At<SocketAddr>>,
    /// `local` and `remote` both parsed or were absent: the endpoint checks may judge them
    /// (a value that failed to parse already has its error).
    pub(crate) endpoints_ok: bool,
    pub(crate) peer_public_key: Option<[u8; 32]>,
    pub(crate) psk: Option<(SecretKey, PathBuf)>,
    /// Explicit priority with its span, or the default (1-based position) with the span of the
    /// tunnel's name; `None` if the value was invalid (already reported).
    pub(crate) priority: Option<At<u32>>,
    /// `ifname` as written (checked as an interface name), if any.
    pub(crate) ifname: Option<At<String>>,
    /// `inside` addresses that parsed (a string or an array of strings).
    pub(crate) inside: Vec<At<IpNet>>,
    /// Where `inside` was given (for the error when the connection is not in interface mode).
    pub(crate) inside_span: Option<Range<usize>>,
    /// IKEv2 tunnels: the ASCII PSK and the identities (`None` on an error, already reported).
    pub(crate) ike: Option<IkeTunnelConfig>,
    /// IKEv2 tunnels: where the PSK came from, resolved.
    pub(crate) psk_file: Option<PathBuf>,
}

/// Parse, walk, validate, assemble.
pub(crate) fn parse(
    name: &str,
    text: &str,
    keys: &dyn KeyFiles,
    includes: &dyn IncludeFiles,
) -> Result<Config, ConfigError> {
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let mut sink = Sink::new(name, text);
            syntax_error(&mut sink, 0, &e);
            return Err(sink.into_error());
        }
    };
    // The included files are read before the walk: the sink borrows their text.
    let (included, include_errors) = read_includes(root.get_ref(), includes);
    let mut sink = Sink::new(name, text);
    for (span, path, message) in include_errors {
        sink.error(&span, &path, message);
    }
    let mut included_roots = Vec::with_capacity(included.len());
    for f in &included {
        let base = sink.add_file(&f.name, &f.text);
        match DeTable::parse(&f.text) {
            Ok(t) => included_roots.push((base, t)),
            Err(e) => syntax_error(&mut sink, base, &e),
        }
    }
    let mut w = Walker {
        sink: &mut sink,
        keys,
        base: 0,
    };
    let root = Tab {
        table: root.get_ref(),
        span: 0..0,
        path: String::new(),
    };
    w.check_keys(&root, ROOT_KEYS);
    let gateway_span = root.table.get("gateway").map(|g| g.span());
    let gateway = match w.table(&root, "gateway") {
        Some(t) => w.gateway(&t),
        // Only tandem-protocol connections need the key: checked once they are known.
        None if root.table.get("gateway").is_none() => Some(RawGateway {
            private_key: None,
            private_key_given: false,
            tun_name: DEFAULT_TUN_NAME.to_owned(),
            mtu: DEFAULT_MTU,
            address: None,
        }),
        None => None,
    };
    let control = match w.table(&root, "control") {
        Some(t) => w.control(&t),
        None => Some(Control {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics_listen: None,
        }),
    };
    let hooks = match w.table(&root, "hooks") {
        Some(t) => w.hooks(&t),
        None => Some(Hooks::default()),
    };
    let mut connections: Vec<RawConnection> = match w.table_array(&root, "connection") {
        Some(list) => list.iter().map(|t| w.connection(t)).collect(),
        None => Vec::new(),
    };
    // Main file first, then each included file in the order read: that is the connections'
    // order, and the order in which a duplicate's "first" occurrence is judged.
    for (base, table) in &included_roots {
        w.base = *base;
        let file_root = Tab {
            table: table.get_ref(),
            span: *base..*base,
            path: String::new(),
        };
        w.included_keys(&file_root);
        if let Some(list) = w.table_array(&file_root, "connection") {
            connections.extend(list.iter().map(|t| w.connection(t)));
        }
    }
    w.base = 0;
    let connection_value = root.table.get("connection");
    // "At least one connection" counts the included files' connections too; a file that failed
    // to parse has its own error, and a missing connection is not worth a second one then.
    if connections.is_empty() && included_roots.len() == included.len() {
        let why = "no [[connection]]: a gateway needs at least one connection";
        match (connection_value, root.table.get("include")) {
            (Some(v), _) if v.get_ref().as_array().is_some_and(|a| a.is_empty()) => {
                w.sink.error(&v.span(), "connection", why)
            }
            (Some(_), _) => {}
            (None, Some(inc)) => w.sink.error(
                &inc.span(),
                "connection",
                format!("{why} (none in this file, and none in the included files)"),
            ),
            (None, None) => w.sink.error(&(0..0), "connection", why),
        }
    }
    // The X25519 key is the tandem protocol's; an IKEv2-only gateway needs none.
    if let Some(g) = &gateway
        && !g.private_key_given
        && connections
            .iter()
            .any(|c| matches!(c.protocol, Some(Protocol::Tandem)))
    {
        match gateway_span {
            Some(span) => sink.error(
                &span,
                "gateway.private_key_file",
                "missing required key `private_key_file` (this gateway's X25519 private key, needed by its protocol \"tandem\" connections)",
            ),
            None => sink.error(
                &(0..0),
                "gateway",
                "missing table [gateway]: it names the private key that protocol \"tandem\" connections need",
            ),
        }
    }
    let tun_name = gateway.as_ref().map(|g| g.tun_name.as_str());
    crate::validate::check(&mut sink, &connections, tun_name);
    if !sink.is_empty() {
        return Err(sink.into_error());
    }
    assemble(gateway, control, hooks, connections).ok_or_else(|| {
        // Every None above came with a diagnostic; reaching this is a bug, reported not hidden.
        ConfigError::Invalid(vec![Diagnostic {
            file: name.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: "internal error: invalid config without a diagnostic".into(),
        }])
    })
}

/// A problem found before the walk, in the main file: (span, field path, message).
type Pending = (Range<usize>, String, String);

/// The files named by the main file's `include` (each read once, in order), and the problems
/// with the patterns. The value's type is checked here rather than by the walker because the
/// files must be read before the sink that borrows them exists.
fn read_includes(
    root: &DeTable<'_>,
    source: &dyn IncludeFiles,
) -> (Vec<IncludedFile>, Vec<Pending>) {
    let mut files: Vec<IncludedFile> = Vec::new();
    let mut errors = Vec::new();
    let Some(v) = root.get("include") else {
        return (files, errors);
    };
    let Some(items) = v.get_ref().as_array() else {
        let found = article(v.get_ref());
        errors.push((
            v.span(),
            "include".to_owned(),
            format!("expected an array of file names or patterns, found {found}"),
        ));
        return (files, errors);
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("include[{i}]");
        let Some(pattern) = item.get_ref().as_str() else {
            let found = article(item.get_ref());
            errors.push((
                item.span(),
                path,
                format!("expected a string, found {found}"),
            ));
            continue;
        };
        match source.expand(pattern) {
            Ok(found) => {
                for f in found {
                    if !files.iter().any(|g| g.name == f.name) {
                        files.push(f);
                    }
                }
            }
            Err(m) => errors.push((item.span(), path, m)),
        }
    }
    (files, errors)
}

/// Only `[control] socket`, for control commands that need to find the daemon.
pub(crate) fn control_socket(name: &str, text: &str) -> Result<Option<PathBuf>, ConfigError> {
    let mut sink = Sink::new(name, text);
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            syntax_error(&mut sink, 0, &e);
            return Err(sink.into_error());
        }
    };
    let socket = root
        .get_ref()
        .get("control")
        .and_then(|c| c.get_ref().as_table())
        .and_then(|c| c.get("socket"));
    match socket {
        None => Ok(None),
        Some(v) => match v.get_ref().as_str() {
            Some(s) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
            _ => {
                let mut sink = sink;
                sink.error(
                    &v.span(),
                    "control.socket",
                    "expected a non-empty string (a path)",
                );
                Err(sink.into_error())
            }
        },
    }
}

/// A TOML syntax error in the file starting at `base`: the parser's message at its position.
fn syntax_error(sink: &mut Sink<'_>, base: usize, e: &toml::de::Error) {
    let span = e.span().unwrap_or(0..0);
    let message = crate::diag::one_line(&e.message().trim_end().replace('\n', "; "));
    sink.error(
        &(base + span.start..base + span.end),
        "",
        format!("TOML syntax error: {message}"),
    );
}

fn assemble(
    gateway: Option<RawGateway>,
    control: Option<Control>,
    hooks: Option<Hooks>,
    connections: Vec<RawConnection>,
) -> Option<Config> {
    let g = gateway?;
    if g.private_key_given && g.private_key.is_none() {
        return None;
    }
    let (private_key, private_key_file) = g.private_key.unzip();
    let mut out = Vec::with_capacity(connections.len());
    for c in connections {
        let mut tunnels = Vec::with_capacity(c.tunnels.len());
        let conn_name = c.name.as_ref()?.value.clone();
        for t in c.tunnels {
            let interface = match c.routing {
                Routing::Static => None,
                Routing::Interfaces => Some(TunnelInterface {
                    ifname: match &t.ifname {
                        Some(n) => n.value.clone(),
                        None => default_ifname(&conn_name, &t.name.as_ref()?.value),
                    },
                    inside: t.inside.iter().map(|a| a.value).collect(),
                }),
            };
            let (psk, psk_file) = match (&c.protocol, t.psk) {
                (Some(Protocol::Ikev2(_)), _) => (SecretKey::new([0; 32]), t.psk_file?),
                (_, psk) => psk?,
            };
            tunnels.push(Tunnel {
                name: t.name?.value,
                local: t.local.map(|a| a.value),
                remote: t.remote.map(|a| a.value),
                peer_public_key: t.peer_public_key?,
                psk,
                psk_file,
                priority: t.priority?.value,
                interface,
                ike: match &c.protocol {
                    Some(Protocol::Ikev2(_)) => Some(t.ike?),
                    _ => None,
                },
            });
        }
        out.push(Connection {
            name: c.name?.value,
            local_subnets: c.local_subnets.into_iter().map(|a| a.value).collect(),
            remote_subnets: c.remote_subnets.into_iter().map(|a| a.value).collect(),
            mode: c.mode,
            routing: c.routing,
            failback: c.failback,
            timers: c.timers,
            dpd_interval: c.dpd_interval.map_or(c.timers.dpd_interval(), |a| a.value),
            dpd_timeout: c.dpd_timeout.map_or(c.timers.dpd_timeout(), |a| a.value),
            mss_clamp: c.mss_clamp,
            rekey_after: c.rekey_after,
            protocol: c.protocol?,
            tunnels,
        });
    }
    if out.is_empty() {
        return None;
    }
    Some(Config {
        gateway: Gateway {
            private_key,
            private_key_file,
            tun_name: g.tun_name,
            mtu: g.mtu,
            address: g.address,
        },
        control: control?,
        hooks: hooks?,
        connections: out,
    })
}

/// A table being walked, with its span (the header) and path.
struct Tab<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    path: String,
}

/// A duration with an upper bound: the error names the key, the value, the bound and why.
fn at_most(
    key: &str,
    text: &str,
    d: Duration,
    max: Duration,
    why: &str,
) -> Result<Duration, String> {
    if d > max {
        return Err(format!(
            "{key} \"{text}\" is too long: at most {} ({why})",
            format_duration(max)
        ));
    }
    Ok(d)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// "a string", "an integer"...
fn article(v: &DeValue<'_>) -> String {
    let t = v.type_str();
    let an = matches!(t.as_bytes().first(), Some(b'a' | b'e' | b'i' | b'o' | b'u'));
    format!("{} {t}", if an { "an" } else { "a" })
}

struct Walker<'s, 'a, 'k> {
    sink: &'s mut Sink<'a>,
    keys: &'k dyn KeyFiles,
    /// Where the file being walked starts in the sink's offset space (0: the main file).
    base: usize,
}

impl Walker<'_, '_, '_> {
    /// A span of the file being walked, in the sink's offset space.
    fn sp(&self, span: Range<usize>) -> Range<usize> {
        span.start + self.base..span.end + self.base
    }

    fn check_keys(&mut self, tab: &Tab<'_, '_>, allowed: &[&str]) {
        for (k, _) in tab.table.iter() {
            let key: &str = k.get_ref();
            if allowed.contains(&key) {
                continue;
            }
            let hint = match closest(key, allowed) {
                Some(s) => format!("unknown key (did you mean \"{s}\"?)"),
                None => format!("unknown key (expected one of: {})", allowed.join(", ")),
            };
            self.sink
                .error(&self.sp(k.span()), &join(&tab.path, key), hint);
        }
    }

    /// The top level of an included file: `[[connection]]` blocks only.
    fn included_keys(&mut self, tab: &Tab<'_, '_>) {
        for (k, _) in tab.table.iter() {
            let key: &str = k.get_ref();
            if INCLUDED_KEYS.contains(&key) {
                continue;
            }
            let message = match key {
                "include" => {
                    "includes do not nest: list every pattern in the main config's include"
                        .to_owned()
                }
                "gateway" | "control" | "hooks" => format!(
                    "an included file holds only [[connection]] blocks: [{key}] belongs in the main config"
                ),
                _ => "unknown key: an included file holds only [[connection]] blocks".to_owned(),
            };
            let span = self.sp(k.span());
            self.sink.error(&span, key, message);
        }
    }

    fn value<'t, 'i>(&self, tab: &Tab<'t, 'i>, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        tab.table.get(key)
    }

    fn wrong_type(&mut self, v: &Spanned<DeValue<'_>>, path: &str, expected: &str) {
        let found = article(v.get_ref());
        self.sink.error(
            &self.sp(v.span()),
            path,
            format!("expected {expected}, found {found}"),
        );
    }

    fn missing(&mut self, tab: &Tab<'_, '_>, key: &str, what: &str) {
        self.sink.error(
            &tab.span,
            &join(&tab.path, key),
            format!("missing required key `{key}` ({what})"),
        );
    }

    fn string<'t>(&mut self, tab: &Tab<'t, '_>, key: &str) -> Option<At<&'t str>> {
        let v = self.value(tab, key)?;
        let path = join(&tab.path, key);
        match v.get_ref().as_str() {
            Some(s) => Some(At {
                value: s,
                span: self.sp(v.span()),
                path,
            }),
            None => {
                self.wrong_type(v, &path, "a string");
                None
            }
        }
    }

    /// A string field parsed by `parse`; errors point at the value.
    fn parsed<T>(
        &mut self,
        tab: &Tab<'_, '_>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<At<T>> {
        let s = self.string(tab, key)?;
        match parse(s.value) {
            Ok(value) => Some(At {
                value,
                span: s.span,
                path: s.path,
            }),
            Err(m) => {
                self.sink.error(&s.span, &s.path, m);
                None
            }
        }
    }

    fn integer(&mut self, tab: &Tab<'_, '_>, key: &str) -> Option<At<i128>> {
        let v = self.value(tab, key)?;
        let path = join(&tab.path, key);
        match v.get_ref().as_integer() {
            Some(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(value) => Some(At {
                    value,
                    span: self.sp(v.span()),
                    path,
                }),
                Err(_) => {
                    self.sink
                        .error(&self.sp(v.span()), &path, "integer out of range");
                    None
                }
            },
            None => {
                self.wrong_type(v, &path, "an integer");
                None
            }
        }
    }

    fn boolean(&mut self, tab: &Tab<'_, '_>, key: &str) -> Option<bool> {
        let v = self.value(tab, key)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong_type(v, &join(&tab.path, key), "a boolean (true or false)");
                None
            }
        }
    }

    /// An array of strings, each parsed; errors point at the element (`key[i]`).
    fn parsed_list<T>(
        &mut self,
        tab: &Tab<'_, '_>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<At<T>>> {
        let v = self.value(tab, key)?;
        let path = join(&tab.path, key);
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, &path, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let Some(s) = item.get_ref().as_str() else {
                self.wrong_type(item, &ipath, "a string");
                continue;
            };
            match parse(s) {
                Ok(value) => out.push(At {
                    value,
                    span: self.sp(item.span()),
                    path: ipath,
                }),
                Err(m) => {
                    let span = self.sp(item.span());
                    self.sink.error(&span, &ipath, m);
                }
            }
        }
        if items.is_empty() {
            self.sink
                .error(&self.sp(v.span()), &path, "must list at least one prefix");
        }
        Some(out)
    }

    fn table<'t, 'i>(&mut self, tab: &Tab<'t, 'i>, key: &str) -> Option<Tab<'t, 'i>> {
        let v = self.value(tab, key)?;
        let path = join(&tab.path, key);
        match v.get_ref().as_table() {
            Some(t) => Some(Tab {
                table: t,
                span: self.sp(v.span()),
                path,
            }),
            None => {
                self.wrong_type(v, &path, &format!("a table ([{path}])"));
                None
            }
        }
    }

    fn table_array<'t, 'i>(&mut self, tab: &Tab<'t, 'i>, key: &str) -> Option<Vec<Tab<'t, 'i>>> {
        let v = self.value(tab, key)?;
        let path = join(&tab.path, key);
        let header = format!("[[{}]]", join(&strip_indices(&tab.path), key));
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, &path, &format!("an array of tables ({header})"));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            match item.get_ref().as_table() {
                Some(t) => out.push(Tab {
                    table: t,
                    span: self.sp(item.span()),
                    path: ipath,
                }),
                None => self.wrong_type(item, &ipath, &format!("a table ({header})")),
            }
        }
        Some(out)
    }

    fn name(&mut self, tab: &Tab<'_, '_>, what: &str) -> Option<At<String>> {
        let Some(s) = self.string(tab, "name") else {
            if self.value(tab, "name").is_none() {
                self.missing(tab, "name", &format!("each {what} needs a unique name"));
            }
            return None;
        };
        if !valid_name(s.value, MAX_NAME_LEN) {
            self.sink.error(
                &s.span,
                &s.path,
                format!(
                    "invalid name \"{}\": use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'",
                    s.value
                ),
            );
            return None;
        }
        Some(At {
            value: s.value.to_owned(),
            span: s.span,
            path: s.path,
        })
    }

    /// Reads a secret key file named by `key`; errors point at the line naming the file.
    fn key_file(&mut self, tab: &Tab<'_, '_>, key: &str) -> Option<(SecretKey, PathBuf)> {
        let s = self.string(tab, key)?;
        if s.value.is_empty() {
            self.sink
                .error(&s.span, &s.path, "expected a file path, found \"\"");
            return None;
        }
        match self.keys.read_key(s.value) {
            Ok(k) => Some((k, self.keys.resolve(s.value))),
            Err(e) => {
                self.sink.error(&s.span, &s.path, e.to_string());
                None
            }
        }
    }

    /// `peer_public_key` (inline base64) or `peer_public_key_file`, at most one of them.
    /// Outer `None`: neither given (or an error was reported); inner: the key.
    fn peer_public_key(&mut self, tab: &Tab<'_, '_>) -> (bool, Option<[u8; 32]>) {
        let inline = self.value(tab, "peer_public_key");
        let file = self.value(tab, "peer_public_key_file");
        if let (Some(a), Some(b)) = (inline, file) {
            let second = if a.span().start > b.span().start {
                ("peer_public_key", a)
            } else {
                ("peer_public_key_file", b)
            };
            self.sink.error(
                &self.sp(second.1.span()),
                &join(&tab.path, second.0),
                "set either peer_public_key or peer_public_key_file, not both",
            );
            return (true, None);
        }
        if inline.is_some() {
            let k = self.parsed(tab, "peer_public_key", |s| parse_key_base64(s).map(|k| *k));
            return (true, k.map(|a| a.value));
        }
        if file.is_some() {
            let s = self.string(tab, "peer_public_key_file");
            let Some(s) = s else { return (true, None) };
            return match self.keys.read_public_key(s.value) {
                Ok(k) => (true, Some(k)),
                Err(e) => {
                    self.sink.error(&s.span, &s.path, e.to_string());
                    (true, None)
                }
            };
        }
        (false, None)
    }

    fn gateway(&mut self, tab: &Tab<'_, '_>) -> Option<RawGateway> {
        self.check_keys(tab, GATEWAY_KEYS);
        let private_key = self.key_file(tab, "private_key_file");
        let private_key_given = self.value(tab, "private_key_file").is_some();
        let tun_name = self
            .string(tab, "tun_name")
            .and_then(|s| {
                if valid_name(s.value, MAX_IFNAME_LEN) {
                    Some(s.value.to_owned())
                } else {
                    self.sink.error(
                        &s.span,
                        &s.path,
                        format!(
                            "invalid interface name \"{}\": use 1 to {MAX_IFNAME_LEN} letters, digits, '-', '_' or '.'",
                            s.value
                        ),
                    );
                    None
                }
            })
            .unwrap_or_else(|| DEFAULT_TUN_NAME.to_owned());
        let mtu = match self.integer(tab, "mtu") {
            None => DEFAULT_MTU,
            Some(m) => match u16::try_from(m.value) {
                Ok(v) if (MIN_MTU..=MAX_MTU).contains(&v) => v,
                _ => {
                    self.sink.error(
                        &m.span,
                        &m.path,
                        format!(
                            "MTU {} is out of range {MIN_MTU}..={MAX_MTU} (the default, {DEFAULT_MTU}, fits a 1500-byte underlay)",
                            m.value
                        ),
                    );
                    DEFAULT_MTU
                }
            },
        };
        let address = self
            .parsed(tab, "address", parse_interface_address)
            .map(|a| a.value);
        Some(RawGateway {
            private_key,
            private_key_given,
            tun_name,
            mtu,
            address,
        })
    }

    fn control(&mut self, tab: &Tab<'_, '_>) -> Option<Control> {
        self.check_keys(tab, CONTROL_KEYS);
        let socket = match self.string(tab, "socket") {
            Some(s) if s.value.is_empty() => {
                self.sink
                    .error(&s.span, &s.path, "expected a path, found \"\"");
                None
            }
            Some(s) => Some(PathBuf::from(s.value)),
            None => Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        };
        let metrics_listen = self
            .parsed(tab, "metrics_listen", parse_socket_addr)
            .map(|a| a.value);
        Some(Control {
            socket: socket?,
            metrics_listen,
        })
    }

    fn hooks(&mut self, tab: &Tab<'_, '_>) -> Option<Hooks> {
        self.check_keys(tab, HOOKS_KEYS);
        let mut ok = true;
        let mut command = |w: &mut Self, key: &str| match w.string(tab, key) {
            Some(s) if !s.value.starts_with('/') => {
                w.sink.error(
                    &s.span,
                    &s.path,
                    format!("expected an absolute path, found \"{}\"", s.value),
                );
                ok = false;
                None
            }
            Some(s) => Some(PathBuf::from(s.value)),
            None => None,
        };
        let on_up = command(self, "on_up");
        let on_down = command(self, "on_down");
        let timeout = self
            .parsed(tab, "timeout", |s| {
                let d = parse_duration(s)?;
                if d.is_zero() {
                    return Err("expected a duration greater than 0".to_owned());
                }
                at_most(
                    "timeout",
                    s,
                    d,
                    MAX_HOOK_TIMEOUT,
                    "a hook is a notification",
                )
            })
            .map_or(Some(crate::DEFAULT_HOOK_TIMEOUT), |a| Some(a.value));
        ok.then_some(Hooks {
            on_up,
            on_down,
            timeout: timeout?,
        })
    }

    fn connection(&mut self, tab: &Tab<'_, '_>) -> RawConnection {
        self.check_keys(tab, CONNECTION_KEYS);
        let name = self.name(tab, "connection");
        let ikev2 = match self.parsed(tab, "protocol", |s| match s {
            "tandem" => Ok(false),
            "ikev2" => Ok(true),
            _ => Err(format!(
                "unknown protocol \"{s}\": expected \"tandem\" or \"ikev2\""
            )),
        }) {
            Some(p) => Some(p.value),
            None if self.value(tab, "protocol").is_some() => None,
            None => Some(false),
        };
        let protocol = match ikev2 {
            Some(true) => self.ike_settings(tab).map(|s| Protocol::Ikev2(Box::new(s))),
            Some(false) => {
                if let Some(v) = self.value(tab, "ike") {
                    let span = self.sp(v.span());
                    self.sink.error(
                        &span,
                        &join(&tab.path, "ike"),
                        "[connection.ike] is for protocol = \"ikev2\" connections",
                    );
                }
                Some(Protocol::Tandem)
            }
            None => None,
        };
        let ikev2 = ikev2 == Some(true);
        if ikev2
            && let Some(v) = self
                .value(tab, "peer_public_key")
                .or(self.value(tab, "peer_public_key_file"))
        {
            let span = self.sp(v.span());
            self.sink.error(
                &span,
                &tab.path,
                "a peer public key is for protocol \"tandem\": an IKEv2 peer proves its PSK and identity",
            );
        }
        let (has_peer_key, peer_key) = if ikev2 {
            (true, Some([0; 32]))
        } else {
            self.peer_public_key(tab)
        };
        let subnets = |w: &mut Self, key: &str| {
            let list = w.parsed_list(tab, key, parse_subnet);
            if list.is_none() && w.value(tab, key).is_none() {
                w.missing(tab, key, "a list of CIDR prefixes");
            }
            list.unwrap_or_default()
        };
        let local_subnets = subnets(self, "local_subnets");
        let remote_subnets = subnets(self, "remote_subnets");
        let mode = self
            .parsed(tab, "mode", |s| match s {
                "active-standby" => Ok(Mode::ActiveStandby),
                "active-active" => Ok(Mode::ActiveActive),
                _ => Err(format!(
                    "unknown mode \"{s}\": expected \"active-standby\" or \"active-active\""
                )),
            })
            .map_or(Mode::ActiveStandby, |a| a.value);
        let routing = self
            .parsed(tab, "routing", |s| match s {
                "static" => Ok(Routing::Static),
                "interfaces" => Ok(Routing::Interfaces),
                _ => Err(format!(
                    "unknown routing \"{s}\": expected \"static\" or \"interfaces\""
                )),
            })
            .map_or(Routing::Static, |a| a.value);
        let failback = match self.parsed(tab, "failback", |s| match s {
            "never" => Ok(None),
            _ => parse_duration(s)
                .map_err(|m| format!("{m}, or \"never\""))
                .and_then(|d| {
                    at_most(
                        "failback",
                        s,
                        d,
                        MAX_FAILBACK,
                        "use \"never\" to stay on the standby",
                    )
                })
                .map(Some),
        }) {
            Some(a) => a.value,
            None => Some(DEFAULT_FAILBACK),
        };
        let timers = self
            .parsed(tab, "timers", |s| match s {
                "default" => Ok(TimerProfile::Default),
                "fast" => Ok(TimerProfile::Fast),
                _ => Err(format!(
                    "unknown timers profile \"{s}\": expected \"default\" or \"fast\""
                )),
            })
            .map_or(TimerProfile::Default, |a| a.value);
        let dpd_interval = self.parsed(tab, "dpd_interval", |s| {
            let d = parse_duration(s)?;
            if d < MIN_DPD_INTERVAL {
                return Err(format!(
                    "dpd_interval \"{s}\" is too short: at least {} (keepalives go out twice per interval; faster ones would be due sooner than a busy gateway can reliably send them, and a late one looks like a dead path)",
                    format_duration(MIN_DPD_INTERVAL)
                ));
            }
            at_most(
                "dpd_interval",
                s,
                d,
                MAX_DPD_INTERVAL,
                "keepalives are sent twice per interval",
            )
        });
        let dpd_timeout = self.parsed(tab, "dpd_timeout", |s| {
            at_most(
                "dpd_timeout",
                s,
                parse_duration(s)?,
                MAX_DPD_TIMEOUT,
                "a dead path keeps its traffic this long",
            )
        });
        let mss_clamp = self.boolean(tab, "mss_clamp").unwrap_or(true);
        let rekey_after = self
            .parsed(tab, "rekey_after", |s| {
                let d = parse_duration(s)?;
                if d < MIN_REKEY_AFTER || d >= REJECT_AFTER {
                    return Err(format!(
                        "rekey_after \"{s}\" is out of range: at least {} and below {} (an SA that old may no longer send)",
                        format_duration(MIN_REKEY_AFTER),
                        format_duration(REJECT_AFTER)
                    ));
                }
                Ok(d)
            })
            .map_or(DEFAULT_REKEY_AFTER, |a| a.value);
        let mut tunnels = Vec::new();
        match self.table_array(tab, "tunnel") {
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    let subnets = (&local_subnets[..], &remote_subnets[..]);
                    tunnels.push(self.tunnel(t, i, has_peer_key, peer_key, ikev2, subnets));
                }
                if list.is_empty() {
                    self.sink.error(
                        &tab.span,
                        &join(&tab.path, "tunnel"),
                        "connection has no tunnel: add a [[connection.tunnel]]",
                    );
                }
            }
            None => {
                if self.value(tab, "tunnel").is_none() {
                    self.sink.error(
                        &tab.span,
                        &join(&tab.path, "tunnel"),
                        "connection has no tunnel: add a [[connection.tunnel]]",
                    );
                }
            }
        }
        RawConnection {
            path: tab.path.clone(),
            name,
            local_subnets,
            remote_subnets,
            mode,
            routing,
            failback,
            timers,
            dpd_interval,
            dpd_timeout,
            mss_clamp,
            rekey_after,
            protocol,
            tunnels,
        }
    }

    /// `[connection.ike]` of an IKEv2 connection, with the defaults of docs/configuration.md.
    fn ike_settings(&mut self, conn: &Tab<'_, '_>) -> Option<IkeSettings> {
        let tab = match self.value(conn, "ike") {
            None => None,
            Some(_) => Some(self.table(conn, "ike")?),
        };
        let mut ok = true;
        let mut settings = IkeSettings {
            proposals: tandem_ike::DEFAULT_IKE_PROPOSALS.to_vec(),
            esp_proposals: tandem_ike::DEFAULT_ESP_PROPOSALS.to_vec(),
            ike_lifetime: DEFAULT_IKE_LIFETIME,
            child_lifetime: DEFAULT_CHILD_LIFETIME,
            replay_window: DEFAULT_REPLAY_WINDOW,
            initiate: true,
        };
        let Some(tab) = tab else {
            return Some(settings);
        };
        self.check_keys(&tab, IKE_KEYS);
        const WEAK: &str = "tandem offers nothing weaker than AES-256-GCM-16 with a SHA-2 PRF and an elliptic-curve group (docs/configuration.md); ask the peer for one of these";
        let list = |w: &mut Self, key: &str, out: &mut dyn FnMut(&str) -> Result<(), String>| {
            let Some(v) = w.value(&tab, key) else {
                return true;
            };
            let path = join(&tab.path, key);
            let Some(items) = v.get_ref().as_array() else {
                w.wrong_type(v, &path, "an array of strings");
                return false;
            };
            if items.is_empty() {
                let span = w.sp(v.span());
                w.sink
                    .error(&span, &path, "must list at least one proposal");
                return false;
            }
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let ipath = format!("{path}[{i}]");
                let Some(s) = item.get_ref().as_str() else {
                    w.wrong_type(item, &ipath, "a string");
                    ok = false;
                    continue;
                };
                if let Err(m) = out(s) {
                    let span = w.sp(item.span());
                    w.sink.error(&span, &ipath, format!("{m}: {WEAK}"));
                    ok = false;
                }
            }
            ok
        };
        if self.value(&tab, "proposals").is_some() {
            let mut got = Vec::new();
            ok &= list(self, "proposals", &mut |s| {
                got.push(s.parse::<IkeProposal>().map_err(|e| e.to_string())?);
                Ok(())
            });
            settings.proposals = got;
        }
        if self.value(&tab, "esp_proposals").is_some() {
            let mut got = Vec::new();
            ok &= list(self, "esp_proposals", &mut |s| {
                got.push(s.parse::<EspProposal>().map_err(|e| e.to_string())?);
                Ok(())
            });
            settings.esp_proposals = got;
        }
        let lifetime = |w: &mut Self, key: &str, min: Duration, max: Duration| {
            w.parsed(&tab, key, |s| {
                let d = parse_duration(s)?;
                if d < min || d > max {
                    return Err(format!(
                        "{key} \"{s}\" is out of range {}..={} (AWS accepts 900 s up to 8 h for the IKE SA and 1 h for a Child SA)",
                        format_duration(min),
                        format_duration(max)
                    ));
                }
                Ok(d)
            })
        };
        match lifetime(self, "ike_lifetime", MIN_IKE_LIFETIME, MAX_IKE_LIFETIME) {
            Some(a) => settings.ike_lifetime = a.value,
            None => ok &= self.value(&tab, "ike_lifetime").is_none(),
        }
        match lifetime(self, "child_lifetime", MIN_IKE_LIFETIME, MAX_IKE_LIFETIME) {
            Some(a) => settings.child_lifetime = a.value,
            None => ok &= self.value(&tab, "child_lifetime").is_none(),
        }
        if self.boolean(&tab, "esn") == Some(true)
            && let Some(v) = self.value(&tab, "esn")
        {
            let span = self.sp(v.span());
            self.sink.error(
                &span,
                &join(&tab.path, "esn"),
                "esn = true is not supported: tandem's IKEv2 Child SAs use 32-bit sequence numbers and are rekeyed in time (AWS does not negotiate ESN either)",
            );
            ok = false;
        }
        if let Some(w) = self.integer(&tab, "replay_window") {
            let min = tandem_crypto::replay::MIN_WINDOW;
            let max = tandem_crypto::replay::WINDOW;
            match u64::try_from(w.value) {
                Ok(v) if (min..=max).contains(&v) => settings.replay_window = v,
                _ => {
                    self.sink.error(
                        &w.span,
                        &w.path,
                        format!(
                            "replay_window {} is out of range {min}..={max} packets (AWS: 64 .. 2048)",
                            w.value
                        ),
                    );
                    ok = false;
                }
            }
        }
        if let Some(e) = self.string(&tab, "encapsulation")
            && e.value != "force"
        {
            let m = if e.value == "auto" {
                "encapsulation \"auto\" is not supported: tandem carries ESP in UDP on port 4500 only (plain ESP needs a raw IP socket); use \"force\", which every NAT-T peer (AWS, strongSwan) accepts".to_owned()
            } else {
                format!("unknown encapsulation \"{}\": expected \"force\"", e.value)
            };
            self.sink.error(&e.span, &e.path, m);
            ok = false;
        }
        if let Some(b) = self.boolean(&tab, "initiate") {
            settings.initiate = b;
        }
        ok.then_some(settings)
    }

    /// An IKEv2 tunnel's `psk_file`: printable ASCII, 8 to 64 characters, as AWS gives it; one
    /// trailing newline is allowed. The error never shows the file's contents.
    fn ascii_psk_file(&mut self, tab: &Tab<'_, '_>) -> Option<(Zeroizing<Vec<u8>>, PathBuf)> {
        let s = self.string(tab, "psk_file")?;
        if s.value.is_empty() {
            self.sink
                .error(&s.span, &s.path, "expected a file path, found \"\"");
            return None;
        }
        match self.keys.read_secret_text(s.value) {
            Ok(text) => {
                let t = text.strip_suffix('\n').unwrap_or(&text);
                let t = t.strip_suffix('\r').unwrap_or(t);
                let n = t.chars().count();
                if !(MIN_IKE_PSK_LEN..=MAX_IKE_PSK_LEN).contains(&n)
                    || !t.bytes().all(|b| b.is_ascii_graphic())
                {
                    self.sink.error(
                        &s.span,
                        &s.path,
                        format!(
                            "\"{}\": an IKEv2 PSK is {MIN_IKE_PSK_LEN} to {MAX_IKE_PSK_LEN} printable ASCII characters without spaces (as AWS gives it); this file holds {n} characters{}",
                            s.value,
                            if t.bytes().all(|b| b.is_ascii_graphic()) { "" } else { ", not all printable" }
                        ),
                    );
                    return None;
                }
                Some((
                    Zeroizing::new(t.as_bytes().to_vec()),
                    self.keys.resolve(s.value),
                ))
            }
            Err(e) => {
                self.sink.error(&s.span, &s.path, e.to_string());
                None
            }
        }
    }

    /// `local_id` / `remote_id` (an IP address, or else an FQDN), defaulting to the tunnel's
    /// addresses; with the PSK, the tunnel's IKE settings.
    fn ike_identities(
        &mut self,
        tab: &Tab<'_, '_>,
        local: Option<&At<SocketAddr>>,
        remote: Option<&At<SocketAddr>>,
        psk: Option<Zeroizing<Vec<u8>>>,
    ) -> Option<IkeTunnelConfig> {
        let id = |s: &str| -> Result<Identity, String> {
            match s.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => Ok(Identity::Ipv4(a)),
                Ok(std::net::IpAddr::V6(a)) => Ok(Identity::Ipv6(a)),
                Err(_)
                    if !s.is_empty()
                        && s.len() <= 253
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    Ok(Identity::Fqdn(s.to_owned()))
                }
                Err(_) => Err(format!(
                    "invalid identity \"{s}\": expected an IP address or a domain name"
                )),
            }
        };
        let of_addr = |a: &SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v) => Identity::Ipv4(v),
            std::net::IpAddr::V6(v) => Identity::Ipv6(v),
        };
        let local_id = match self.parsed(tab, "local_id", id) {
            Some(a) => Some(a.value),
            None if self.value(tab, "local_id").is_some() => None,
            None => match local {
                Some(l) if !l.value.ip().is_unspecified() => Some(of_addr(&l.value)),
                _ => {
                    self.sink.error(
                        &tab.span,
                        &join(&tab.path, "local_id"),
                        "an IKEv2 tunnel needs local (its address is the default local_id) or local_id",
                    );
                    None
                }
            },
        };
        let remote_id = match self.parsed(tab, "remote_id", id) {
            Some(a) => Some(a.value),
            None if self.value(tab, "remote_id").is_some() => None,
            None => remote.map(|r| of_addr(&r.value)),
        };
        if remote.is_none() && self.value(tab, "remote").is_none() {
            self.sink.error(
                &tab.span,
                &join(&tab.path, "remote"),
                "an IKEv2 tunnel needs remote: the peer's address (IKE is spoken only with it)",
            );
        }
        Some(IkeTunnelConfig {
            psk: psk?,
            local_id: local_id?,
            remote_id: remote_id?,
            probe: None,
            local_ike: None,
            remote_ike: None,
        })
    }

    /// `probe_target` / `probe_source`: where an IKEv2 tunnel's drill probes go
    /// (docs/configuration.md). The target defaults to the other host of the tunnel's `inside`
    /// network, the source to the tunnel's inside address of the target's family, else to the
    /// first host of the first local subnet of that family. An explicit address outside the
    /// selectors is an error: the peer would drop the probe or route the reply elsewhere.
    fn ike_probe(
        &mut self,
        tab: &Tab<'_, '_>,
        inside: &[At<IpNet>],
        (local, remote): (&[At<IpNet>], &[At<IpNet>]),
    ) -> Option<IkeProbe> {
        let ip = |s: &str| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("invalid address \"{s}\": expected an IP address"))
        };
        let target = self.parsed(tab, "probe_target", ip);
        let source = self.parsed(tab, "probe_source", ip);
        if (target.is_none() && self.value(tab, "probe_target").is_some())
            || (source.is_none() && self.value(tab, "probe_source").is_some())
        {
            return None;
        }
        let within = |nets: &[At<IpNet>], a: IpAddr| nets.iter().any(|n| n.value.contains(&a));
        let same_family = |a: IpAddr, b: IpAddr| a.is_ipv4() == b.is_ipv4();
        let target_value = match &target {
            Some(t) => {
                if !within(remote, t.value) {
                    self.sink.error(
                        &t.span,
                        &t.path,
                        format!(
                            "probe_target {} is not in remote_subnets: the peer sends only its subnets' traffic through the tunnel",
                            t.value
                        ),
                    );
                    return None;
                }
                t.value
            }
            None => {
                if let Some(s) = &source {
                    self.sink.error(
                        &s.span,
                        &s.path,
                        "probe_source needs probe_target (or an inside address): the address the probes go to",
                    );
                    return None;
                }
                // The other host of the inside network (two hosts: network + 1 and + 2).
                let peer = inside.iter().find_map(|n| inside_peer(n.value))?;
                if !within(remote, peer) {
                    return None;
                }
                peer
            }
        };
        let source_value = match &source {
            Some(s) => {
                if !same_family(s.value, target_value) {
                    self.sink.error(
                        &s.span,
                        &s.path,
                        format!(
                            "probe_source {} and probe_target {target_value} are of different address families",
                            s.value
                        ),
                    );
                    return None;
                }
                if !within(local, s.value) {
                    self.sink.error(
                        &s.span,
                        &s.path,
                        format!(
                            "probe_source {} is not in local_subnets: the peer sends replies only to our subnets through the tunnel",
                            s.value
                        ),
                    );
                    return None;
                }
                s.value
            }
            None => {
                let from_inside = inside
                    .iter()
                    .map(|n| n.value.addr())
                    .find(|a| same_family(*a, target_value) && within(local, *a));
                let first_host = || {
                    local
                        .iter()
                        .map(|n| n.value)
                        .find(|n| same_family(n.addr(), target_value))
                        .map(first_host)
                };
                match from_inside.or_else(first_host) {
                    Some(a) => a,
                    None => {
                        let (span, path) = match &target {
                            Some(t) => (t.span.clone(), t.path.clone()),
                            None => (tab.span.clone(), join(&tab.path, "probe_source")),
                        };
                        self.sink.error(
                            &span,
                            &path,
                            format!(
                                "no local subnet of the family of probe_target {target_value}: set probe_source"
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        Some(IkeProbe {
            source: source_value,
            target: target_value,
        })
    }

    fn tunnel(
        &mut self,
        tab: &Tab<'_, '_>,
        index: usize,
        conn_has_key: bool,
        conn_key: Option<[u8; 32]>,
        ikev2: bool,
        subnets: (&[At<IpNet>], &[At<IpNet>]),
    ) -> RawTunnel {
        self.check_keys(tab, TUNNEL_KEYS);
        let name = self.name(tab, "tunnel");
        // IKEv2 endpoints may be bare addresses: the NAT-T port 4500 (RFC 3948) is implied,
        // and IKE starts on port 500 of that address (RFC 7296 §2.23).
        let bare = |key: &str| -> Option<std::net::IpAddr> {
            let s = self.value(tab, key)?.get_ref().as_str()?;
            s.parse::<std::net::IpAddr>().ok()
        };
        let bare_local = bare("local").filter(|_| ikev2);
        let bare_remote = bare("remote").filter(|_| ikev2);
        let addr = |s: &str| {
            if ikev2 && let Ok(ip) = s.parse::<std::net::IpAddr>() {
                return Ok(SocketAddr::new(ip, tandem_ike::nat::NAT_T_PORT));
            }
            parse_socket_addr(s)
        };
        let local = self.parsed(tab, "local", addr);
        let remote = self.parsed(tab, "remote", |s| {
            let a = addr(s)?;
            if a.port() == 0 {
                return Err(format!(
                    "remote \"{s}\" has port 0: give the peer's port, usually 4500"
                ));
            }
            Ok(a)
        });
        let endpoints_ok = (local.is_some() || self.value(tab, "local").is_none())
            && (remote.is_some() || self.value(tab, "remote").is_none());
        let (has_key, key) = if ikev2 {
            if let Some(v) = self
                .value(tab, "peer_public_key")
                .or(self.value(tab, "peer_public_key_file"))
            {
                let span = self.sp(v.span());
                self.sink.error(
                    &span,
                    &tab.path,
                    "a peer public key is for protocol \"tandem\": an IKEv2 peer proves its PSK and identity",
                );
            }
            (false, None)
        } else {
            self.peer_public_key(tab)
        };
        let peer_public_key = if has_key {
            key
        } else if conn_has_key {
            conn_key
        } else {
            self.sink.error(
                &tab.span,
                &join(&tab.path, "peer_public_key"),
                "no peer public key: set peer_public_key on the tunnel or on its connection",
            );
            None
        };
        let mut ike_psk = None;
        let mut psk_file = None;
        let psk = if ikev2 {
            if let Some((p, f)) = self.ascii_psk_file(tab) {
                ike_psk = Some(p);
                psk_file = Some(f);
            }
            None
        } else {
            self.key_file(tab, "psk_file")
        };
        if self.value(tab, "psk_file").is_none() {
            self.missing(tab, "psk_file", "the tunnel's pre-shared key file");
        }
        let position = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let priority = match self.integer(tab, "priority") {
            Some(p) => match u32::try_from(p.value) {
                Ok(value) => Some(At {
                    value,
                    span: p.span,
                    path: p.path,
                }),
                Err(_) => {
                    self.sink.error(
                        &p.span,
                        &p.path,
                        format!("priority {} is out of range 0..={}", p.value, u32::MAX),
                    );
                    None
                }
            },
            None if self.value(tab, "priority").is_some() => None,
            None => Some(At {
                value: position,
                span: name.as_ref().map_or(tab.span.clone(), |n| n.span.clone()),
                path: join(&tab.path, "priority"),
            }),
        };
        let ifname = self.string(tab, "ifname").and_then(|s| {
            if valid_name(s.value, MAX_IFNAME_LEN) {
                Some(At {
                    value: s.value.to_owned(),
                    span: s.span,
                    path: s.path,
                })
            } else {
                self.sink.error(
                    &s.span,
                    &s.path,
                    format!(
                        "invalid interface name \"{}\": use 1 to {MAX_IFNAME_LEN} letters, digits, '-', '_' or '.'",
                        s.value
                    ),
                );
                None
            }
        });
        let inside_span = self.value(tab, "inside").map(|v| self.sp(v.span()));
        let inside = match self
            .value(tab, "inside")
            .map(|v| v.get_ref().as_str().is_some())
        {
            Some(true) => self
                .parsed(tab, "inside", parse_interface_address)
                .into_iter()
                .collect(),
            Some(false) => self
                .parsed_list(tab, "inside", parse_interface_address)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let ike = if ikev2 {
            let probe = self.ike_probe(tab, &inside, subnets);
            self.ike_identities(tab, local.as_ref(), remote.as_ref(), ike_psk)
                .map(|mut ike| {
                    ike.probe = probe;
                    // Port 500 only where the address is bare, and never on the unspecified
                    // address (it would take port 500 of every address of the host).
                    ike.local_ike = bare_local
                        .filter(|ip| !ip.is_unspecified())
                        .map(|ip| SocketAddr::new(ip, tandem_ike::nat::IKE_PORT));
                    ike.remote_ike = bare_remote
                        .filter(|_| ike.local_ike.is_some())
                        .map(|ip| SocketAddr::new(ip, tandem_ike::nat::IKE_PORT));
                    ike
                })
        } else {
            for key in ["local_id", "remote_id", "probe_target", "probe_source"] {
                if let Some(v) = self.value(tab, key) {
                    let span = self.sp(v.span());
                    self.sink.error(
                        &span,
                        &join(&tab.path, key),
                        format!("{key} is for protocol = \"ikev2\" connections"),
                    );
                }
            }
            None
        };
        RawTunnel {
            ike,
            psk_file,
            span: tab.span.clone(),
            path: tab.path.clone(),
            name,
            local,
            remote,
            endpoints_ok,
            peer_public_key,
            psk,
            priority,
            ifname,
            inside,
            inside_span,
        }
    }
}

/// The other host of an inside network (`inside`: a /30 or /126 whose hosts are network + 1
/// and network + 2, the tunnel's two ends); `None` for any other address of it.
fn inside_peer(n: IpNet) -> Option<IpAddr> {
    let offset = |a: IpAddr, net: IpAddr| -> u128 {
        match (a, net) {
            (IpAddr::V4(a), IpAddr::V4(n)) => u128::from(u32::from(a).wrapping_sub(u32::from(n))),
            (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(a).wrapping_sub(u128::from(n)),
            _ => 0,
        }
    };
    let other = match offset(n.addr(), n.network()) {
        1 => 2u32,
        2 => 1,
        _ => return None,
    };
    Some(match n {
        IpNet::V4(v) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v.network()).wrapping_add(other),
        )),
        IpNet::V6(v) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v.network()).wrapping_add(u128::from(other)),
        )),
    })
}

/// The first host of a subnet: network + 1, or the address itself for a /32 or /128 (or /31,
/// /127, where both addresses are hosts).
fn first_host(n: IpNet) -> IpAddr {
    match n {
        IpNet::V4(v) if v.prefix_len() >= 31 => IpAddr::V4(v.network()),
        IpNet::V6(v) if v.prefix_len() >= 127 => IpAddr::V6(v.network()),
        IpNet::V4(v) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v.network()) + 1)),
        IpNet::V6(v) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v.network()) + 1)),
    }
}

/// The interface name of a tunnel without `ifname`: `<connection>-<tunnel>`, cut to
/// `IFNAMSIZ` - 1 bytes (names are ASCII, so any cut is a valid name).
pub(crate) fn default_ifname(connection: &str, tunnel: &str) -> String {
    let mut n = format!("{connection}-{tunnel}");
    n.truncate(MAX_IFNAME_LEN);
    n
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

/// `connection[0].tunnel` -> `connection.tunnel`, for naming TOML headers.
fn strip_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The allowed key closest to `key` by edit distance, if it is close enough to be a typo.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_suggest_the_nearest_key_and_nonsense_lists_them_all() {
        assert_eq!(closest("psk_fle", TUNNEL_KEYS), Some("psk_file"));
        assert_eq!(
            closest("remote_subnet", CONNECTION_KEYS),
            Some("remote_subnets")
        );
        assert_eq!(closest("zzzzzz", TUNNEL_KEYS), None);
        assert_eq!(strip_indices("connection[3].tunnel"), "connection.tunnel");
    }
}
