//! `tandem events` and `[hooks]` end to end (root): two daemons in two namespaces with two
//! tunnels. Side a has `on_up`/`on_down` hooks (a script that writes its environment to a file,
//! and hangs when the tunnel goes down) and three event listeners: two `tandem events --json`
//! and one raw connection that never reads. The tunnels coming Up, a drill and a flood of planned
//! switches must reach both reading listeners; the one that never reads must be disconnected
//! while the others keep receiving; the hooks must see the docs/configuration.md environment, and
//! the hanging one must be killed at its `timeout`; a listener beyond the cap is refused.
//!
//! Namespaces get unique names and are deleted in `Drop`, even when an assertion fails.
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::print_stdout)]

mod support;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::lab::{Lab, TANDEM};
use support::sh;

/// Namespaces a and b joined by veth `u1` (172.30.7.1 and .2), and a `hooks` directory.
fn new_lab() -> Lab {
    let lab = Lab::new("evt", &["a", "b"]);
    std::fs::create_dir_all(lab.path("hooks")).unwrap();
    lab.veth("u1", ["a", "b"], ["172.30.7.1/24", "172.30.7.2/24"]);
    lab
}

fn config(lab: &Lab, side: &str, peer: &str, hooks: &str) -> String {
    let (me, them, local, remote) = if side == "a" {
        ("172.30.7.1", "172.30.7.2", "10.207.1.0/24", "10.207.2.0/24")
    } else {
        ("172.30.7.2", "172.30.7.1", "10.207.2.0/24", "10.207.1.0/24")
    };
    format!(
        r#"[gateway]
private_key_file = "{dir}/{side}.key"
tun_name = "tdv{side}"

[control]
socket = "{dir}/{side}.sock"
{hooks}
[[connection]]
name = "conn"
peer_public_key_file = "{dir}/{peer}.pub"
local_subnets = ["{local}"]
remote_subnets = ["{remote}"]
failback = "1s"
dpd_interval = "100ms"
dpd_timeout = "300ms"

[[connection.tunnel]]
name = "t1"
local = "{me}:4500"
remote = "{them}:4500"
psk_file = "{dir}/t1.psk"
priority = 1

[[connection.tunnel]]
name = "t2"
local = "{me}:4501"
remote = "{them}:4501"
psk_file = "{dir}/t2.psk"
priority = 2
"#,
        dir = lab.dir.display(),
    )
}

/// `tandem events --json` on side a, its output in `file`.
fn listen(lab: &mut Lab, file: &str) {
    let out = std::fs::File::create(lab.path(file)).unwrap();
    let child = Command::new(TANDEM)
        .args(["events", "--json", "--socket"])
        .arg(lab.path("a.sock"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.children.push(child);
}

/// One control request on side a, answered.
fn request(lab: &Lab, body: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(lab.path("a.sock")).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// The events of one listener's output, parsed.
fn events(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has(evs: &[serde_json::Value], pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    evs.iter().any(pred)
}

fn env_of(file: &str) -> std::collections::BTreeMap<String, String> {
    file.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("TANDEM_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn events_reach_every_reading_listener_a_stalled_one_is_dropped_and_hooks_run_with_their_environment()
 {
    if !support::can_run_as_root("the events and hooks test (namespaces, TUN)") {
        return;
    }
    let mut lab = new_lab();
    lab.keys();
    // The hook writes its environment to hooks/<state>-<tunnel> (and its pid next to it); going
    // down it then hangs, to be killed at the 1 s timeout.
    let hook = lab.path("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nf={dir}/hooks/$TANDEM_STATE-$TANDEM_TUNNEL\nenv > $f.tmp && mv $f.tmp $f\necho $$ > $f.pid\n[ \"$TANDEM_STATE\" = up ] || exec sleep 60\n",
            dir = lab.dir.display()
        ),
    )
    .unwrap();
    sh(&["chmod", "0755", hook.to_str().unwrap()]);
    let hooks = format!(
        "\n[hooks]\non_up = \"{h}\"\non_down = \"{h}\"\ntimeout = \"1s\"\n",
        h = hook.display()
    );
    let a_cfg = lab.path("a.toml");
    std::fs::write(&a_cfg, config(&lab, "a", "b", &hooks)).unwrap();
    let b_cfg = lab.path("b.toml");
    std::fs::write(&b_cfg, config(&lab, "b", "a", "")).unwrap();
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    lab.start(&a, &a_cfg, "a.log");
    lab.wait_for("a's control socket", Duration::from_secs(10), || {
        UnixStream::connect(lab.path("a.sock")).is_ok()
    });
    listen(&mut lab, "l1.jsonl");
    listen(&mut lab, "l2.jsonl");
    let mut stalled = UnixStream::connect(lab.path("a.sock")).unwrap();
    stalled.write_all(b"{\"command\":\"events\"}\n").unwrap();
    std::thread::sleep(Duration::from_millis(300)); // the listeners subscribe
    lab.start(&b, &b_cfg, "b.log");

    // 1. Both tunnels come Up: every reading listener sees it, and on_up runs with its environment.
    let up = |evs: &[serde_json::Value], t: &str| {
        has(evs, |e| {
            e["event"] == "state"
                && e["tunnel"] == t
                && e["to"] == "up"
                && e["connection"] == "conn"
        })
    };
    for l in ["l1.jsonl", "l2.jsonl"] {
        lab.wait_for(
            &format!("{l}: t1 and t2 up"),
            Duration::from_secs(20),
            || {
                let evs = events(&lab.read(l));
                up(&evs, "t1") && up(&evs, "t2")
            },
        );
        let evs = events(&lab.read(l));
        assert!(
            has(&evs, |e| e["event"] == "switch" && e["to"] == "t1"),
            "{l}: no switch to t1: {evs:?}"
        );
        assert!(
            has(&evs, |e| e["event"] == "handshake" && e["tunnel"] == "t1"),
            "{l}: no handshake: {evs:?}"
        );
        assert!(evs.iter().all(|e| e["unix_ms"].as_u64().is_some()));
    }
    lab.wait_for("on_up for t1", Duration::from_secs(5), || {
        lab.path("hooks/up-t1").exists()
    });
    let env = env_of(&lab.read("hooks/up-t1"));
    assert_eq!(
        env.get("TANDEM_CONNECTION").map(String::as_str),
        Some("conn")
    );
    assert_eq!(env.get("TANDEM_TUNNEL").map(String::as_str), Some("t1"));
    assert_eq!(env.get("TANDEM_STATE").map(String::as_str), Some("up"));
    assert_eq!(
        env.get("TANDEM_CAUSE").map(String::as_str),
        Some("liveness")
    );
    assert_eq!(
        env.get("TANDEM_IFNAME"),
        None,
        "a static-routing tunnel has no ifname"
    );

    // 2. A drill: start and end reach the listeners; t1 leaving Up runs on_down, which hangs
    //    and is killed at the 1 s timeout.
    lab.wait_for("t1 active again", Duration::from_secs(10), || {
        request(&lab, r#"{"command":"status"}"#)["data"]["connections"][0]["active_tunnel"] == "t1"
    });
    let drill = lab.tandem(
        &[
            "drill",
            "conn",
            "--duration",
            "1s",
            "--socket",
            lab.path("a.sock").to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        drill.status.success(),
        "drill: {}\n{}",
        String::from_utf8_lossy(&drill.stderr),
        lab.logs()
    );
    for l in ["l1.jsonl", "l2.jsonl"] {
        lab.wait_for(
            &format!("{l}: drill start and end"),
            Duration::from_secs(5),
            || {
                let evs = events(&lab.read(l));
                has(&evs, |e| e["event"] == "drill-start" && e["tunnel"] == "t1")
                    && has(&evs, |e| {
                        e["event"] == "drill-end" && e["report"]["failover_to"] == "t2"
                    })
            },
        );
    }
    let down = std::fs::read_dir(lab.dir.join("hooks"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with("-t1") && !n.starts_with("up-"))
        .unwrap_or_else(|| panic!("on_down did not run for t1\n{}", lab.logs()));
    let env = env_of(&lab.read(&format!("hooks/{down}")));
    assert_eq!(env.get("TANDEM_TUNNEL").map(String::as_str), Some("t1"));
    assert_ne!(env.get("TANDEM_STATE").map(String::as_str), Some("up"));
    assert!(env.contains_key("TANDEM_CAUSE"), "{env:?}");
    let pid = lab.read(&format!("hooks/{down}.pid")).trim().to_owned();
    lab.wait_for("the hanging hook killed", Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(
        lab.read("a.log").contains("hook timed out; killed"),
        "{}",
        lab.logs()
    );

    // 3. A flood of planned switches: the listener that never reads fills its socket and is
    //    dropped; the reading ones get every switch.
    lab.wait_for("t1 active again", Duration::from_secs(10), || {
        request(&lab, r#"{"command":"status"}"#)["data"]["connections"][0]["active_tunnel"] == "t1"
    });
    let before = events(&lab.read("l1.jsonl")).len();
    let mut switches = 0;
    let start = Instant::now();
    while !lab.read("a.log").contains("dropping a listener") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stalled listener was never dropped after {switches} switches\n{}",
            lab.logs()
        );
        for to in ["t2", "t1"] {
            let r = request(
                &lab,
                &format!(r#"{{"command":"failover","connection":"conn","to":"{to}"}}"#),
            );
            assert_eq!(r["ok"], true, "{r}");
            switches += 1;
        }
    }
    // The stalled connection was closed: reading it now ends (after what the socket held).
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let eof = stalled.read_to_end(&mut rest);
    assert!(
        eof.is_ok(),
        "the stalled listener is still connected: {eof:?}"
    );
    for l in ["l1.jsonl", "l2.jsonl"] {
        lab.wait_for(
            &format!("{l}: all {switches} switches"),
            Duration::from_secs(10),
            || {
                events(&lab.read(l))
                    .iter()
                    .filter(|e| e["event"] == "switch" && e["reason"] == "planned")
                    .count()
                    >= switches
            },
        );
    }
    assert!(events(&lab.read("l1.jsonl")).len() >= before + switches);
    eprintln!("stalled listener dropped after {switches} switches");

    // 4. At most 16 listeners (half the control socket's slots): with l1, l2 and 14 more, a 17th
    //    is refused in one reply line, and the other commands still get in.
    let subscribe = || {
        let mut s = UnixStream::connect(lab.path("a.sock")).unwrap();
        s.write_all(b"{\"command\":\"events\"}\n").unwrap();
        s
    };
    let _more: Vec<UnixStream> = (0..14).map(|_| subscribe()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = subscribe();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut refusal = String::new();
    let _ = over.read_to_string(&mut refusal);
    assert!(
        refusal.contains("too many event listeners"),
        "a 17th listener was not refused: {refusal:?}"
    );
    assert_eq!(request(&lab, r#"{"command":"status"}"#)["ok"], true);
}
