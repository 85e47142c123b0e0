//! The scale bench's machinery at CI size, so it does not rot: one real `tandem run` hub with 20
//! branches (40 responder-only tunnels on one port, one `conf.d/` file per branch through
//! `include`) played by the branch emulator (real engines in one process). Asserts what the
//! bench measures, with bounds loose enough for a loaded 2-core CI machine: every tunnel Up on
//! both ends, the hub's RSS within its budget, status answered, a silenced branch tunnel seen
//! down on the hub within `dpd_timeout + dpd_interval` (plus polling slack), and a reload that
//! removes 10 branches and adds 10 brings the new ones Up without losing a probe of the others.
//!
//! Needs root (namespaces, TUN devices); skips loudly when not root and `CI` is unset.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::Duration;

use tandem_netns_tests::scale::{ScaleOpts, run};

#[test]
fn twenty_emulated_branches_come_up_on_one_hub_port_are_watched_and_survive_a_reload() {
    if !tandem_netns_tests::can_run_as_root("hub scale") {
        return;
    }
    let _serial = tandem_netns_tests::serial();
    let opts = ScaleOpts {
        idle: Duration::from_secs(2),
        up_timeout: Duration::from_secs(20),
        status_samples: 3,
        ..ScaleOpts::bench(20)
    };
    let r = run(&opts, &mut |line| eprintln!("  {line}")).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r.tunnels, 40);
    assert!(
        r.rss_kib > 0 && r.rss_kib <= r.rss_budget_kib,
        "hub RSS {} KiB over the budget {} KiB",
        r.rss_kib,
        r.rss_budget_kib
    );
    assert!(r.status_bytes > 0);
    // Polling resolution: one status call plus the 20 ms poll interval, and slack for CI.
    let detect = r
        .detect_ms
        .expect("the silenced tunnel was never seen down");
    assert!(
        detect <= r.detect_bound_ms + r.status_ms_max + 250.0,
        "detected after {detect:.0} ms, bound {:.0} ms",
        r.detect_bound_ms
    );
    assert_eq!(r.reload_changed, 10);
    assert!(
        r.reload_new_up_ms.is_some(),
        "the branches added by the reload never came Up"
    );
    assert!(r.reload_probes_sent > 0, "no probe was sent");
    assert_eq!(
        r.reload_probes_lost, 0,
        "probes lost on branches the reload left alone"
    );
}
