//! `[hooks] on_up` / `on_down` (docs/configuration.md, "\[hooks\]"): a task on the control-plane
//! thread takes the data plane's events (the same ring `tandem events` reads, so the data plane
//! never waits) and, for each tunnel that enters or leaves Up, starts the configured program with
//! the `TANDEM_*` environment. Each hook runs in its own task with a deadline after which it is
//! killed; at most [`MAX_RUNNING`] run at once, and an event beyond that is logged, its hook not
//! run.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::admin::{Event, EventRecord};

/// Most hook processes at once. A flapping gateway can change state many times a second; eight
/// covers both tunnels of a few connections going Down together while bounding the forks.
pub const MAX_RUNNING: usize = 8;

/// Which hook an event calls for, and its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `on_up` or `on_down`.
    pub program: PathBuf,
    /// `TANDEM_*` variables.
    pub env: Vec<(&'static str, String)>,
}

/// The hook `event` calls for under `hooks`: `on_up` on entering Up, `on_down` on leaving it.
pub fn invocation(hooks: &tandem_config::Hooks, event: &Event) -> Option<Invocation> {
    let Event::State {
        connection,
        tunnel,
        from,
        to,
        cause,
        ifname,
    } = event
    else {
        return None;
    };
    let program = match (from.as_str(), to.as_str()) {
        (_, "up") => hooks.on_up.clone()?,
        ("up", _) => hooks.on_down.clone()?,
        _ => return None,
    };
    let mut env = vec![
        ("TANDEM_CONNECTION", connection.clone()),
        ("TANDEM_TUNNEL", tunnel.clone()),
        ("TANDEM_STATE", to.clone()),
        ("TANDEM_CAUSE", cause.clone()),
    ];
    if let Some(i) = ifname {
        env.push(("TANDEM_IFNAME", i.clone()));
    }
    Some(Invocation { program, env })
}

/// Run hooks for the events from `rx` until the data plane stops. `hooks` is re-read for every
/// event, so a reload applies to the next hook.
pub async fn run(
    hooks: Rc<RefCell<tandem_config::Hooks>>,
    mut rx: broadcast::Receiver<EventRecord>,
) {
    let running = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let rec = match rx.recv().await {
            Ok(rec) => rec,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "hooks: events were missed, their hooks not run");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let (inv, timeout) = {
            let h = hooks.borrow();
            (invocation(&h, &rec.event), h.timeout)
        };
        let Some(inv) = inv else { continue };
        if running.get() >= MAX_RUNNING {
            tracing::warn!(program = %inv.program.display(), env = ?inv.env, max = MAX_RUNNING, "hooks: too many running; this one is not run");
            continue;
        }
        running.set(running.get() + 1);
        let running = running.clone();
        tokio::task::spawn_local(async move {
            run_one(&inv, timeout).await;
            running.set(running.get() - 1);
        });
    }
}

/// Start one hook and wait for it, killing it at `timeout`; every failure is logged.
async fn run_one(inv: &Invocation, timeout: Duration) {
    let program = inv.program.display().to_string();
    let mut cmd = tokio::process::Command::new(&inv.program);
    cmd.envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%program, %error, "hook: cannot start");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            tracing::info!(%program, env = ?inv.env, "hook ran");
        }
        Ok(Ok(status)) => tracing::warn!(%program, %status, env = ?inv.env, "hook failed"),
        Ok(Err(error)) => tracing::warn!(%program, %error, "hook: cannot wait for it"),
        Err(_) => {
            let _ = child.kill().await;
            tracing::warn!(%program, timeout_ms = timeout.as_millis() as u64, "hook timed out; killed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(from: &str, to: &str, ifname: Option<&str>) -> Event {
        Event::State {
            connection: "prod".into(),
            tunnel: "t1".into(),
            from: from.into(),
            to: to.into(),
            cause: "liveness".into(),
            ifname: ifname.map(str::to_owned),
        }
    }

    #[test]
    fn at_most_max_running_hooks_run_at_once_and_the_rest_are_not_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch {}/ran-$$\nexec sleep 5\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hooks = Rc::new(RefCell::new(tandem_config::Hooks {
            on_up: Some(script),
            on_down: None,
            timeout: Duration::from_secs(2),
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let (tx, rx) = broadcast::channel(64);
            tokio::task::spawn_local(run(hooks, rx));
            for i in 0..MAX_RUNNING as u64 + 4 {
                tx.send(EventRecord {
                    unix_ms: i,
                    event: state("connecting", "up", None),
                })
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(800)).await;
        });
        let ran = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("ran-"))
            })
            .count();
        assert_eq!(
            ran, MAX_RUNNING,
            "hooks started while {MAX_RUNNING} were running"
        );
    }

    #[test]
    fn on_up_runs_on_entering_up_and_on_down_on_leaving_it_only() {
        let hooks = tandem_config::Hooks {
            on_up: Some("/up".into()),
            on_down: Some("/down".into()),
            ..Default::default()
        };
        let prog = |e: &Event| invocation(&hooks, e).map(|i| i.program);
        assert_eq!(prog(&state("connecting", "up", None)), Some("/up".into()));
        assert_eq!(prog(&state("up", "down", None)), Some("/down".into()));
        assert_eq!(prog(&state("up", "admin-down", None)), Some("/down".into()));
        assert_eq!(prog(&state("connecting", "down", None)), None);
        assert_eq!(prog(&state("down", "connecting", None)), None);
        let none = tandem_config::Hooks::default();
        assert_eq!(invocation(&none, &state("connecting", "up", None)), None);
    }

    #[test]
    fn the_environment_names_the_tunnel_and_its_interface_when_route_based() {
        let hooks = tandem_config::Hooks {
            on_up: Some("/up".into()),
            ..Default::default()
        };
        let inv = invocation(&hooks, &state("connecting", "up", Some("prod-t1"))).unwrap();
        assert_eq!(
            inv.env,
            vec![
                ("TANDEM_CONNECTION", "prod".to_owned()),
                ("TANDEM_TUNNEL", "t1".to_owned()),
                ("TANDEM_STATE", "up".to_owned()),
                ("TANDEM_CAUSE", "liveness".to_owned()),
                ("TANDEM_IFNAME", "prod-t1".to_owned()),
            ]
        );
        let inv = invocation(&hooks, &state("connecting", "up", None)).unwrap();
        assert!(inv.env.iter().all(|(k, _)| *k != "TANDEM_IFNAME"));
    }
}
