//! `tandem run -c FILE`: the gateway in the foreground.
//!
//! Start-up: capability check -> config -> engine -> TUN (MTU, address) -> one UDP socket per
//! tunnel -> routes over netlink -> data-plane thread (sends READY=1) -> control plane.
//!
//! Threads: the data-plane thread ([`crate::dataplane::worker::DataPlane`]) owns the engine and
//! every packet fd; this (main) thread runs a current-thread tokio runtime for the control
//! socket, the metrics endpoint and signals, and talks to the data plane only through
//! [`Command`]s (an mpsc channel + eventfd doorbell) answered on oneshot channels.
//!
//! The control socket and the metrics endpoint each serve a bounded number of connections with
//! short deadlines, and pause after a failed `accept` ([`crate::admin::listeners`]).
//!
//! Events: the data plane publishes tunnel changes, switches, handshakes and drills into a ring
//! it never waits on ([`Handle::subscribe`]); `tandem events` listeners
//! ([`crate::admin::events`]) and the `[hooks]` runner ([`crate::hooks`]) read it here.
//!
//! Signals: SIGHUP = reload (as `tandem reload`); SIGTERM / SIGINT = STOPPING=1, closing notices
//! on every tunnel, exit 0.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tandem_engine::{ConnectionConfig, Engine, EngineConfig, FailoverTarget, TunnelConfig};

use crate::admin::server::{serve_control_socket, serve_metrics};
use crate::admin::{ErrorKind, Reply, Request};
use crate::cli::{EXIT_OK, EXIT_USER_ERROR};
use crate::dataplane::ifaces::IfaceSpec;
use crate::dataplane::worker::{Command, DataPlane, Handle, TunSettings};
use crate::notify::Notifier;

/// The engine's half of a config (the daemon owns this conversion, docs/CONTRACTS.md).
pub fn engine_config(cfg: &tandem_config::Config) -> EngineConfig {
    EngineConfig {
        // An IKEv2-only gateway has no X25519 key; the engine's Noise side is then unused.
        private_key: cfg
            .gateway
            .private_key
            .clone()
            .unwrap_or_else(|| zeroize::Zeroizing::new([0; 32])),
        mtu: cfg.gateway.mtu,
        connections: cfg
            .connections
            .iter()
            .map(|c| ConnectionConfig {
                name: c.name.clone(),
                local_subnets: c.local_subnets.clone(),
                remote_subnets: c.remote_subnets.clone(),
                mode: c.mode,
                routing: c.routing,
                failback: c.failback,
                dpd_interval: c.dpd_interval,
                dpd_timeout: c.dpd_timeout,
                mss_clamp: c.mss_clamp,
                rekey_after: c.rekey_after,
                protocol: c.protocol.clone(),
                tunnels: c
                    .tunnels
                    .iter()
                    .map(|t| TunnelConfig {
                        name: t.name.clone(),
                        local: t.local,
                        remote: t.remote,
                        peer_public_key: t.peer_public_key,
                        psk: t.psk.clone(),
                        priority: t.priority,
                        ike: t.ike.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Every `routing = "static"` connection's `remote_subnets`: the routes the TUN carries.
pub fn routes_of(cfg: &tandem_config::Config) -> Vec<IpNet> {
    let mut routes: Vec<IpNet> = cfg
        .connections
        .iter()
        .filter(|c| c.routing == tandem_engine::Routing::Static)
        .flat_map(|c| c.remote_subnets.iter().map(IpNet::trunc))
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

/// Each tunnel's own interface, in tunnel-id order (the engine numbers tunnels in config order).
pub fn ifaces_of(cfg: &tandem_config::Config) -> Vec<Option<IfaceSpec>> {
    cfg.connections
        .iter()
        .flat_map(|c| c.tunnels.iter())
        .map(|t| {
            t.interface.as_ref().map(|i| IfaceSpec {
                ifname: i.ifname.clone(),
                inside: i.inside.clone(),
            })
        })
        .collect()
}

fn failbacks_of(cfg: &EngineConfig) -> Vec<Option<Duration>> {
    cfg.connections.iter().map(|c| c.failback).collect()
}

/// The control socket `tandem run` binds: the config's `[control] socket` when the file names
/// one; else `$TANDEM_SOCKET`; else the default (mirrors the clients' lookup order).
fn control_socket_path(config_path: &Path, cfg: &tandem_config::Config) -> PathBuf {
    if let Ok(Some(p)) = tandem_config::control_socket_of(config_path) {
        return p;
    }
    match std::env::var_os("TANDEM_SOCKET") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => cfg.control.socket.clone(),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the gateway until SIGTERM/SIGINT. Returns the process exit status (0 clean stop,
/// 1 bad config / missing capability / start-up failure).
pub fn run(config_path: &Path) -> u8 {
    init_logging();
    if let Err(e) = crate::caps::require_net_admin() {
        tracing::error!("{e}");
        return EXIT_USER_ERROR;
    }
    let cfg = match tandem_config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            #[allow(clippy::print_stderr)] // the operator's error, FILE:LINE:COL lines
            {
                eprintln!("{e}");
            }
            return EXIT_USER_ERROR;
        }
    };
    let ecfg = engine_config(&cfg);
    let failback = failbacks_of(&ecfg);
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut seed) {
        tracing::error!(error = %e, "no OS randomness");
        return EXIT_USER_ERROR;
    }
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let engine = Engine::new(ecfg, seed, Instant::now(), unix_now);
    let tun = TunSettings {
        name: cfg.gateway.tun_name.clone(),
        mtu: cfg.gateway.mtu,
        address: cfg.gateway.address,
        // `TANDEM_TUN_OFFLOAD=0` turns the TUN offloads off (for measurements and as an escape
        // hatch on kernels whose offloads misbehave).
        offload: std::env::var_os("TANDEM_TUN_OFFLOAD").is_none_or(|v| v != "0"),
    };
    let (dp, handle) =
        match DataPlane::start(engine, &tun, routes_of(&cfg), ifaces_of(&cfg), failback) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("{e}");
                return EXIT_USER_ERROR;
            }
        };
    tracing::info!(tun = %dp.tun_name(), mtu = tun.mtu, connections = cfg.connections.len(), "tandem started");
    let socket_path = control_socket_path(config_path, &cfg);
    let listener = match bind_control_socket(&socket_path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %socket_path.display(), error = %e, "cannot bind the control socket");
            return EXIT_USER_ERROR;
        }
    };
    let metrics = match cfg.control.metrics_listen {
        Some(addr) => match std::net::TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "cannot bind the metrics endpoint");
                let _ = std::fs::remove_file(&socket_path);
                return EXIT_USER_ERROR;
            }
        },
        None => None,
    };

    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel::<()>();
    let dp_thread = std::thread::Builder::new()
        .name("tandem-dataplane".into())
        .spawn(move || {
            dp.run();
            let _ = exited_tx.send(());
        });
    let dp_thread = match dp_thread {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the data-plane thread");
            return EXIT_USER_ERROR;
        }
    };

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the control-plane runtime");
            return EXIT_USER_ERROR;
        }
    };
    let hooks = std::rc::Rc::new(std::cell::RefCell::new(cfg.hooks.clone()));
    let hook_events = handle.subscribe();
    let ctx = std::rc::Rc::new(Ctx {
        hooks: hooks.clone(),
        handle,
        started: StartedWith {
            gateway: GatewayView::of(&cfg),
            control: cfg.control.clone(),
        },
        config_path: config_path.to_owned(),
        notifier: Notifier::from_env(),
    });
    let code = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local.spawn_local(crate::hooks::run(hooks, hook_events));
        local
            .run_until(control_plane(ctx.clone(), listener, metrics, exited_rx))
            .await
    });
    let _ = std::fs::remove_file(&socket_path);
    let _ = dp_thread.join();
    tracing::info!("tandem stopped");
    code
}

pub(crate) struct Ctx {
    handle: Handle,
    /// `[hooks]`, replaced by a reload.
    hooks: std::rc::Rc<std::cell::RefCell<tandem_config::Hooks>>,
    /// The config the daemon started with (for settings a reload cannot change).
    started: StartedWith,
    config_path: PathBuf,
    notifier: Option<Notifier>,
}

impl Ctx {
    /// A new `tandem events` listener ([`Handle::subscribe`]).
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::admin::EventRecord> {
        self.handle.subscribe()
    }
}

/// Settings fixed at start-up.
struct StartedWith {
    gateway: GatewayView,
    control: tandem_config::Control,
}

/// The `[gateway]` settings a reload cannot change (no key material kept here).
struct GatewayView {
    tun_name: String,
    address: Option<IpNet>,
}

impl GatewayView {
    fn of(cfg: &tandem_config::Config) -> Self {
        GatewayView {
            tun_name: cfg.gateway.tun_name.clone(),
            address: cfg.gateway.address,
        }
    }
}

fn bind_control_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another daemon answers on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn control_plane(
    ctx: std::rc::Rc<Ctx>,
    listener: std::os::unix::net::UnixListener,
    metrics: Option<std::net::TcpListener>,
    mut exited: tokio::sync::oneshot::Receiver<()>,
) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control socket");
            return EXIT_USER_ERROR;
        }
    };
    tokio::task::spawn_local(serve_control_socket(ctx.clone(), listener));
    if let Some(m) = metrics {
        let _ = m.set_nonblocking(true);
        match tokio::net::TcpListener::from_std(m) {
            Ok(m) => {
                tokio::task::spawn_local(serve_metrics(ctx.clone(), m));
            }
            Err(e) => tracing::error!(error = %e, "metrics endpoint"),
        }
    }
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return EXIT_USER_ERROR;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let reply = reload(&ctx).await;
                if !reply.ok {
                    tracing::error!(error = reply.error.as_deref().unwrap_or(""), "reload refused; the old configuration keeps running");
                }
            }
            _ = term.recv() => return shutdown(&ctx, &mut exited).await,
            _ = int.recv() => return shutdown(&ctx, &mut exited).await,
            _ = &mut exited => {
                tracing::error!("the data plane stopped unexpectedly");
                return EXIT_USER_ERROR;
            }
        }
    }
}

async fn shutdown(ctx: &Ctx, exited: &mut tokio::sync::oneshot::Receiver<()>) -> u8 {
    // ---- systemd notify hook: STOPPING=1 before the closing notices. ----
    if let Some(n) = &ctx.notifier {
        let _ = n.stopping();
    }
    if ctx.handle.send(Command::Shutdown).is_err() {
        return EXIT_OK;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), exited).await;
    EXIT_OK
}

pub(crate) async fn ask<T>(
    ctx: &Ctx,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    ctx.handle.send(make(tx)).ok()?;
    rx.await.ok()
}

async fn reload(ctx: &Ctx) -> Reply {
    // ---- systemd notify hook: RELOADING=1 ... READY=1 around the reload (even a refused one). ----
    if let Some(n) = &ctx.notifier {
        let _ = n.reloading();
    }
    let reply = match tandem_config::load(&ctx.config_path) {
        Err(e) => Reply::error(ErrorKind::User, e.to_string()),
        Ok(cfg) => {
            if cfg.gateway.tun_name != ctx.started.gateway.tun_name
                || cfg.gateway.address != ctx.started.gateway.address
                || cfg.control != ctx.started.control
            {
                tracing::warn!(
                    "reload: tun_name, address and [control] changes take effect only after a restart"
                );
            }
            let routes = routes_of(&cfg);
            let ifaces = ifaces_of(&cfg);
            let hooks = cfg.hooks.clone();
            let ecfg = Box::new(engine_config(&cfg));
            let reply = ask(ctx, |reply| Command::Reload {
                cfg: ecfg,
                routes,
                ifaces,
                reply,
            })
            .await
            .unwrap_or_else(|| Reply::error(ErrorKind::Internal, "the data plane is not running"));
            if reply.ok {
                *ctx.hooks.borrow_mut() = hooks;
            }
            reply
        }
    };
    if let Some(n) = &ctx.notifier {
        let _ = n.ready();
    }
    reply
}

pub(crate) async fn handle_request(ctx: &Ctx, req: Request) -> Reply {
    let gone = || Reply::error(ErrorKind::Internal, "the data plane is not running");
    match req {
        Request::Status => match ask(ctx, Command::Status).await {
            Some(report) => Reply::ok(Some(report.to_json())),
            None => gone(),
        },
        Request::Reload => reload(ctx).await,
        // The accept loop streams these itself (`crate::admin::server`).
        Request::Events => Reply::error(ErrorKind::Internal, "events are a stream"),
        Request::Failover {
            connection,
            to,
            auto,
        } => {
            let target = match (to, auto) {
                (Some(_), true) => {
                    return Reply::error(ErrorKind::User, "--to and --auto exclude each other");
                }
                (Some(t), false) => FailoverTarget::To(t),
                (None, true) => FailoverTarget::Auto,
                (None, false) => FailoverTarget::Best,
            };
            ask(ctx, |reply| Command::Failover {
                connection,
                target,
                reply,
            })
            .await
            .unwrap_or_else(gone)
        }
        Request::Drill {
            connection,
            duration_ms,
            graceful,
        } => {
            if duration_ms == 0 {
                return Reply::error(ErrorKind::User, "the drill duration must be greater than 0");
            }
            let duration = Duration::from_millis(duration_ms);
            ask(ctx, |reply| Command::Drill {
                connection,
                duration,
                graceful,
                reply,
            })
            .await
            .unwrap_or_else(gone)
        }
    }
}
