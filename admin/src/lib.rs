//! tandem's admin plane on the wire (the local control plane, as opposed to the in-tunnel
//! liveness messages): `status`, `reload`, `failover`, `drill` requests from the CLI to the
//! running daemon over its Unix socket, the CLI's client, and the renderers of what the daemon
//! answers. A crate of its own (std, serde and thiserror only) so that the fuzz target parses
//! exactly these types without building the daemon.
//!
//! Protocol (docs/CONTRACTS.md): the client connects to the Unix socket (mode 0600), writes one
//! JSON [`Request`], shuts down its write half, and reads one JSON [`Reply`]; the daemon then
//! closes. The server side is the daemon's `admin` module (it needs the data-plane channel).
//! One exception: after [`Request::Events`] the daemon keeps the connection open and writes one
//! JSON [`EventRecord`] per line until either side closes (docs/cli.md, "tandem events").

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod drill_html;
pub use drill_html::{escape_html, render_drill_html};
mod status_text;
pub use status_text::{
    Frame, View, colour_wanted, human_bytes, human_duration, human_rate, render_status,
    render_status_view, utc_clock, watch_error, watch_frame, watch_title,
};

/// Longest request or reply accepted (a status of a big hub is a few tens of KB).
pub const MAX_MESSAGE: u64 = 1 << 20;

/// How long the CLI waits for the daemon: a drill runs for its duration plus this.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request from the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The docs/cli.md status document.
    Status,
    /// Re-read the config file.
    Reload,
    /// Planned switch (docs/cli.md pinning rules).
    Failover {
        /// Connection name.
        connection: String,
        /// `Some(tunnel)` = `--to TUNNEL`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// `--auto`: unpin.
        #[serde(default)]
        auto: bool,
    },
    /// A failover drill.
    Drill {
        /// Connection name.
        connection: String,
        /// How long the active tunnel stays silent, in milliseconds.
        duration_ms: u64,
        /// Send the closing notice instead of going silent.
        #[serde(default)]
        graceful: bool,
    },
    /// Stream events ([`EventRecord`], one JSON line each) until the client closes.
    Events,
}

/// One line of `tandem events --json`: when, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Wall-clock time of the event, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What `tandem events` reports (docs/cli.md, "tandem events"). Names are the config's
/// connection and tunnel names; states, causes and reasons are the `tandem status` words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A tunnel changed state.
    State {
        /// Connection name.
        connection: String,
        /// Tunnel name.
        tunnel: String,
        /// Previous state.
        from: String,
        /// New state.
        to: String,
        /// Why (`liveness`, `dpd_timeout`, `admin`, ... as in the log).
        cause: String,
        /// The tunnel's own interface (`routing = "interfaces"` only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
    },
    /// A connection's active tunnel changed.
    Switch {
        /// Connection name.
        connection: String,
        /// Previous active tunnel (`None`: there was none).
        from: Option<String>,
        /// New active tunnel (`None`: there is none).
        to: Option<String>,
        /// Why.
        reason: String,
    },
    /// A handshake completed (a first one, or a rekey).
    Handshake {
        /// Connection name.
        connection: String,
        /// Tunnel name.
        tunnel: String,
        /// This side initiated it.
        initiator: bool,
        /// It replaced an SA (a rekey).
        rekey: bool,
    },
    /// `tandem drill` started.
    DrillStart {
        /// Connection name.
        connection: String,
        /// The tunnel silenced.
        tunnel: String,
        /// Silence duration, milliseconds.
        duration_ms: u64,
        /// Closing notice instead of silence.
        graceful: bool,
    },
    /// A drill ended.
    DrillEnd {
        /// Connection name.
        connection: String,
        /// The report (`tandem drill`'s document), absent when the drill was cut short.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report: Option<serde_json::Value>,
    },
}

/// The one-line human form of an event (`tandem events` without `--json`).
pub fn render_event(rec: &EventRecord) -> String {
    let secs = rec.unix_ms / 1000;
    let ms = rec.unix_ms % 1000;
    let what = match &rec.event {
        Event::State {
            connection,
            tunnel,
            from,
            to,
            cause,
            ifname,
        } => {
            let ifname = ifname
                .as_deref()
                .map(|i| format!(" ({i})"))
                .unwrap_or_default();
            format!("{connection}/{tunnel}{ifname}: {from} -> {to} ({cause})")
        }
        Event::Switch {
            connection,
            from,
            to,
            reason,
        } => format!(
            "{connection}: active {} -> {} ({reason})",
            from.as_deref().unwrap_or("none"),
            to.as_deref().unwrap_or("none")
        ),
        Event::Handshake {
            connection,
            tunnel,
            initiator,
            rekey,
        } => format!(
            "{connection}/{tunnel}: {} completed{}",
            if *rekey { "rekey" } else { "handshake" },
            if *initiator {
                " (initiator)"
            } else {
                " (responder)"
            }
        ),
        Event::DrillStart {
            connection,
            tunnel,
            duration_ms,
            graceful,
        } => format!(
            "{connection}: drill started on {tunnel} for {duration_ms} ms{}",
            if *graceful { ", graceful" } else { "" }
        ),
        Event::DrillEnd { connection, report } => match report {
            Some(r) => format!(
                "{connection}: drill ended (detection {} ms, gap {} ms, lost {} of {})",
                field(r, "detection_ms"),
                field(r, "traffic_gap_ms"),
                field(r, "probes_lost"),
                field(r, "probes_sent")
            ),
            None => format!("{connection}: drill ended"),
        },
    };
    format!("{secs}.{ms:03} {what}")
}

/// `tandem events [--json]`: print events as they come until the daemon closes (exit 0) or
/// cannot be reached (exit 2). No read timeout: a quiet gateway sends nothing for hours.
#[allow(clippy::print_stdout)] // CLI output
pub fn cmd_events(socket: &Path, json: bool) -> u8 {
    use std::io::BufRead as _;
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(source) => {
            #[allow(clippy::print_stderr)] // CLI output
            {
                eprintln!(
                    "error: {}",
                    ClientError::Unreachable {
                        path: socket.display().to_string(),
                        source
                    }
                );
            }
            return exit::UNREACHABLE;
        }
    };
    let sent = serde_json::to_vec(&Request::Events)
        .map_err(std::io::Error::other)
        .and_then(|mut body| {
            body.push(b'\n');
            stream.write_all(&body)
        });
    if let Err(e) = sent {
        #[allow(clippy::print_stderr)] // CLI output
        {
            eprintln!("error: cannot reach the daemon: {e}");
        }
        return exit::UNREACHABLE;
    }
    let stdout = std::io::stdout();
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        // A refusal is one Reply line; events are EventRecords.
        if let Ok(rec) = serde_json::from_str::<EventRecord>(&line) {
            let text = if json { line } else { render_event(&rec) };
            let mut out = stdout.lock();
            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                return exit::OK; // stdout closed (`| head`)
            }
        } else if let Ok(reply) = serde_json::from_str::<Reply>(&line) {
            #[allow(clippy::print_stderr)] // CLI output
            {
                eprintln!(
                    "error: {}",
                    reply.error.as_deref().unwrap_or("request refused")
                );
            }
            return exit::USER;
        }
    }
    exit::OK
}

/// Whether a refused request was the user's fault (exit 1) or the daemon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Unknown name, invalid config, bad arguments: exit 1.
    User,
    /// The daemon could not do it (shutting down, I/O failure): exit 1 as well, but worded so.
    Internal,
}

/// One reply from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The error, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's kind, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    /// The payload: the status document, a reload summary, a drill report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    /// A success with a payload.
    pub fn ok(data: Option<serde_json::Value>) -> Self {
        Self {
            ok: true,
            error: None,
            kind: None,
            data,
        }
    }

    /// A refusal.
    pub fn error(kind: ErrorKind, error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            kind: Some(kind),
            data: None,
        }
    }
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there (exit 2).
    #[error("cannot reach the daemon at {path}: {source}")]
    Unreachable {
        /// The socket path tried.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The daemon took the request but sent no reply in time: it is stalled or starved
    /// (exit 2).
    #[error("the daemon at {path} did not answer within {} s (stalled or starved of CPU)", .after.as_secs_f64())]
    NoReply {
        /// The socket path.
        path: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The daemon answered something unreadable, or hung up (exit 2).
    #[error("bad reply from the daemon: {0}")]
    BadReply(String),
}

/// Send one request and wait for the reply (blocking; the CLI has nothing else to do).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: socket.display().to_string(),
        source,
    })?;
    exchange(stream, socket, req, timeout)
}

/// One request and its reply on a connected stream. Once connected, the daemon has been
/// reached: whatever goes wrong after is a missing or bad reply, whichever side of the write
/// the daemon hung up on (EPIPE on the write, or end of file on the read).
fn exchange(
    mut stream: UnixStream,
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let after_connect = |e: std::io::Error| match e.kind() {
        // A timeout surfaces as EAGAIN on a blocking socket.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::NoReply {
            path: socket.display().to_string(),
            after: timeout,
        },
        std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::NotConnected => {
            ClientError::BadReply(format!("the daemon hung up without a reply ({e})"))
        }
        _ => ClientError::BadReply(e.to_string()),
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(after_connect)?;
    let body = serde_json::to_vec(req).map_err(|e| ClientError::BadReply(e.to_string()))?;
    stream.write_all(&body).map_err(after_connect)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(after_connect)?;
    let mut buf = Vec::new();
    (&mut stream)
        .take(MAX_MESSAGE)
        .read_to_end(&mut buf)
        .map_err(after_connect)?;
    if buf.is_empty() {
        return Err(ClientError::BadReply(
            "the daemon hung up without a reply".into(),
        ));
    }
    serde_json::from_slice(&buf).map_err(|e| ClientError::BadReply(e.to_string()))
}

#[cfg(test)]
mod client_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The client's status request on `client`, which must fail.
    fn ask(client: UnixStream) -> ClientError {
        let path = Path::new("/run/tandem/ctl.sock");
        exchange(client, path, &Request::Status, Duration::from_secs(1)).unwrap_err()
    }

    #[test]
    fn a_daemon_gone_before_the_request_is_written_is_a_bad_reply_not_unreachable() {
        // The daemon's end is closed before the client writes: the write fails with EPIPE.
        let (client, daemon) = UnixStream::pair().unwrap();
        drop(daemon);
        let err = ask(client);
        assert!(matches!(err, ClientError::BadReply(_)), "{err:?}");
        assert!(err.to_string().contains("hung up without a reply"), "{err}");
    }

    #[test]
    fn a_daemon_that_reads_the_request_and_closes_is_a_bad_reply() {
        let (client, mut daemon) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut req = Vec::new();
            daemon.read_to_end(&mut req).unwrap();
            req
        });
        let err = ask(client);
        assert!(!t.join().unwrap().is_empty());
        assert!(matches!(err, ClientError::BadReply(_)), "{err:?}");
        assert!(err.to_string().contains("hung up without a reply"), "{err}");
    }
}

/// Exit status of every `tandem` command (docs/cli.md, "Exit status"): the one definition.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// User error: bad config, bad input, unknown name, bad usage; or the daemon could not start.
    pub const USER: u8 = 1;
    /// The daemon could not be reached on its control socket.
    pub const UNREACHABLE: u8 = 2;
}

/// Run one request and turn the outcome into an exit status, printing errors to stderr.
/// On success the reply's payload is returned for the caller to print.
fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Option<serde_json::Value>, u8> {
    match request(socket, req, timeout) {
        Ok(reply) if reply.ok => Ok(reply.data),
        Ok(reply) => {
            #[allow(clippy::print_stderr)] // CLI output
            {
                eprintln!(
                    "error: {}",
                    reply.error.as_deref().unwrap_or("request refused")
                );
            }
            Err(exit::USER)
        }
        Err(e) => {
            #[allow(clippy::print_stderr)] // CLI output
            {
                eprintln!("error: {e}");
            }
            Err(exit::UNREACHABLE)
        }
    }
}

/// `tandem status [--json]`: one status, as the JSON document or as the human table (coloured
/// when stdout is a terminal, [`colour_wanted`]).
#[allow(clippy::print_stdout)] // CLI output
pub fn cmd_status(socket: &Path, json: bool) -> u8 {
    match call(socket, &Request::Status, CLIENT_TIMEOUT) {
        Ok(data) => {
            let data = data.unwrap_or(serde_json::Value::Null);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
            } else {
                let view = View {
                    colour: stdout_colour(),
                    now_unix: Some(unix_now()),
                    ..View::default()
                };
                print!("{}", render_status_view(&data, &view));
            }
            exit::OK
        }
        Err(code) => code,
    }
}

/// `tandem status --watch [--interval D] [--json]`: a new status every `interval` until
/// interrupted (Ctrl-C) or stdout closes. On a terminal each frame redraws the screen, like
/// `watch`; piped, frames follow each other with no escape codes; with `--json`, one compact
/// document per line. The first request failing is an error (exit 2, as `tandem status`); later
/// failures (the daemon restarting) are shown in the frame and the watch keeps asking.
pub fn cmd_status_watch(socket: &Path, json: bool, interval: Duration) -> u8 {
    use std::io::IsTerminal as _;
    let terminal = std::io::stdout().is_terminal();
    let colour = stdout_colour();
    let shown = socket.display().to_string();
    let mut next = std::time::Instant::now();
    let mut previous: Option<(serde_json::Value, std::time::Instant)> = None;
    let mut first = true;
    loop {
        let reply = request(socket, &Request::Status, CLIENT_TIMEOUT);
        let at = std::time::Instant::now();
        let text = match reply {
            Ok(reply) if reply.ok => {
                let data = reply.data.unwrap_or(serde_json::Value::Null);
                let text = if json {
                    format!("{}\n", serde_json::to_string(&data).unwrap_or_default())
                } else {
                    let view = View {
                        colour,
                        now_unix: Some(unix_now()),
                        rates: true,
                        previous: previous.as_ref().map(|(p, t)| (p, at - *t)),
                    };
                    frame(
                        &shown,
                        interval,
                        &render_status_view(&data, &view),
                        terminal,
                        colour,
                        first,
                    )
                };
                previous = Some((data, at));
                text
            }
            failed if first => {
                // Nothing drawn yet: fail as `tandem status` would.
                return match failed {
                    Ok(reply) => {
                        #[allow(clippy::print_stderr)] // CLI output
                        {
                            eprintln!(
                                "error: {}",
                                reply.error.as_deref().unwrap_or("request refused")
                            );
                        }
                        exit::USER
                    }
                    Err(e) => {
                        #[allow(clippy::print_stderr)] // CLI output
                        {
                            eprintln!("error: {e}");
                        }
                        exit::UNREACHABLE
                    }
                };
            }
            failed => {
                let message = match failed {
                    Ok(reply) => reply.error.unwrap_or_else(|| "request refused".into()),
                    Err(e) => e.to_string(),
                };
                previous = None;
                if json {
                    // JSON lines stay JSON: the gap shows as a missing sample, the error on stderr.
                    #[allow(clippy::print_stderr)] // CLI output
                    {
                        eprintln!("error: {message}");
                    }
                    String::new()
                } else {
                    let body = watch_error(&format!("error: {message}"), colour);
                    frame(&shown, interval, &body, terminal, colour, first)
                }
            }
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return exit::OK; // stdout closed (`| head`)
        }
        drop(out);
        first = false;
        // The next tick on the interval's grid, so a slow answer does not make the watch drift.
        next = (next + interval).max(std::time::Instant::now());
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
}

fn frame(
    socket: &str,
    interval: Duration,
    body: &str,
    terminal: bool,
    colour: bool,
    first: bool,
) -> String {
    let title = watch_title(interval, socket, unix_now(), colour);
    let how = if terminal {
        Frame::Redraw { first }
    } else {
        Frame::Append
    };
    watch_frame(&title, body, how)
}

/// Whether this process's stdout gets colours ([`colour_wanted`] with the real environment).
fn stdout_colour() -> bool {
    use std::io::IsTerminal as _;
    colour_wanted(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `tandem reload`.
#[allow(clippy::print_stdout)] // CLI output
pub fn cmd_reload(socket: &Path) -> u8 {
    match call(socket, &Request::Reload, CLIENT_TIMEOUT) {
        Ok(data) => {
            match data {
                Some(d) => println!("reloaded: {d}"),
                None => println!("reloaded"),
            }
            exit::OK
        }
        Err(code) => code,
    }
}

/// `tandem failover CONNECTION [--to TUNNEL | --auto]`.
#[allow(clippy::print_stdout)] // CLI output
pub fn cmd_failover(socket: &Path, connection: &str, to: Option<&str>, auto: bool) -> u8 {
    let req = Request::Failover {
        connection: connection.to_owned(),
        to: to.map(str::to_owned),
        auto,
    };
    match call(socket, &req, CLIENT_TIMEOUT) {
        Ok(data) => {
            if let Some(active) = data
                .as_ref()
                .and_then(|d| d.get("active_tunnel"))
                .and_then(|v| v.as_str())
            {
                println!("{connection}: active tunnel {active}");
            } else {
                println!("{connection}: ok");
            }
            exit::OK
        }
        Err(code) => code,
    }
}

/// `tandem drill CONNECTION [--duration D] [--graceful] [--report FILE.html]`.
#[allow(clippy::print_stdout)] // CLI output
pub fn cmd_drill(
    socket: &Path,
    connection: &str,
    duration: Duration,
    graceful: bool,
    report: Option<&Path>,
) -> u8 {
    let req = Request::Drill {
        connection: connection.to_owned(),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        graceful,
    };
    // The drill runs for `duration`, then waits for failback.
    let timeout = duration * 3 + CLIENT_TIMEOUT * 3;
    match call(socket, &req, timeout) {
        Ok(data) => {
            let data = data.unwrap_or(serde_json::Value::Null);
            print!("{}", render_drill(&data));
            let Some(path) = report else {
                return exit::OK;
            };
            match std::fs::write(path, render_drill_html(&data)) {
                Ok(()) => {
                    println!("  report           {}", path.display());
                    exit::OK
                }
                Err(e) => {
                    #[allow(clippy::print_stderr)] // CLI output
                    {
                        eprintln!("error: cannot write the report {}: {e}", path.display());
                    }
                    exit::USER
                }
            }
        }
        Err(code) => code,
    }
}

fn field(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => "-".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The drill report for a terminal.
pub fn render_drill(report: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "drill on {} (tunnel {} silenced{})",
        field(report, "connection"),
        field(report, "silenced_tunnel"),
        if report.get("graceful").and_then(|g| g.as_bool()) == Some(true) {
            ", graceful"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  detection time   {} ms (switched to {})",
        field(report, "detection_ms"),
        field(report, "failover_to")
    );
    let _ = writeln!(
        out,
        "  traffic gap      {} ms",
        field(report, "traffic_gap_ms")
    );
    let _ = writeln!(
        out,
        "  probes lost      {} of {}",
        field(report, "probes_lost"),
        field(report, "probes_sent")
    );
    let _ = writeln!(
        out,
        "  failback time    {} ms",
        field(report, "failback_ms")
    );
    // Route-based tunnels: the interface's carrier and this host's routing daemon.
    if report.get("carrier_off_ms").is_some_and(|v| !v.is_null()) {
        let _ = writeln!(
            out,
            "  carrier off      {} ms after the silence",
            field(report, "carrier_off_ms")
        );
        let _ = writeln!(
            out,
            "  routing          {} ms from carrier off to the first route change by a routing daemon here",
            field(report, "routing_convergence_ms")
        );
    }
    out
}
