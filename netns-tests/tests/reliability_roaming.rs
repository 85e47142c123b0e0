//! A responder-only tunnel learns its peer's endpoint from authenticated packets (SPEC §3), so a
//! peer that comes back from another source port (a restart behind a new NAT mapping looks the
//! same) must get back in — even while strangers flood the head-end with valid-mac1 initiations
//! (the head-end is then "under load" and answers with cookie replies).
//!
//! This found two bugs, both fixed: the engine sent a cookie reply only when the initiation came
//! from the known endpoint (so a roamed peer could never earn one), and a cookie reply could
//! overwrite a pending handshake response; and the data plane sent control datagrams with a
//! blocking `send_to`, so cookie replies to unresolvable spoofed sources filled the socket's send
//! buffer and stalled the whole data plane.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod reliability_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reliability_common::*;
use tandem_netns_tests::tandem::{Daemon, Side, TandemOpts};
use tandem_netns_tests::topo::{Family, Isp, Lab, vpcgw_wan};

#[test]
fn a_responder_only_tunnel_lets_its_peer_back_in_from_a_new_port_even_under_an_initiation_flood() {
    if !tandem_netns_tests::can_run_as_root("cookie to a new address") {
        return;
    }
    let lab = Lab::new().unwrap();
    let mut pair = start_pair(&lab, TandemOpts::default(), "");
    // vpcgw's tunnel1 becomes responder-only: its endpoint is learned from authenticated packets.
    pair.vpcgw.stop();
    pair.setup
        .edit_config(Side::Vpcgw, |t| {
            t.replacen("remote = \"192.0.2.1:4500\"\n", "", 1)
        })
        .unwrap();
    pair.vpcgw = Daemon::start(&pair.setup, Side::Vpcgw, &lab.vpcgw).unwrap();
    pair.wait_both_up(Duration::from_secs(10)).unwrap();

    let sources = many_sources(&lab.isp1, "203.0.113.0/24", 200);
    let inits = stranger_initiations(public_key(&pair.setup, Side::Vpcgw), 200);
    let dst = SocketAddr::new(vpcgw_wan(Isp::One, Family::V4), 4500);
    let f = flood(
        &lab.isp1,
        sources,
        dst,
        vec![Junk::Messages(inits)],
        2000,
        30_000,
        1,
    );
    std::thread::sleep(Duration::from_secs(1));
    // cgw comes back from another port (a NAT rebinding looks the same to the head-end).
    pair.cgw.kill();
    pair.setup
        .edit_config(Side::Cgw, |t| {
            t.replacen(
                "local = \"192.0.2.1:4500\"",
                "local = \"192.0.2.1:4501\"",
                1,
            )
        })
        .unwrap();
    pair.cgw = Daemon::start(&pair.setup, Side::Cgw, &lab.cgw).unwrap();
    let t = Instant::now();
    let up = pair.wait_until(Duration::from_secs(8), "tunnel1 up again", |a, b| {
        a.state("tunnel1").as_deref() == Some("up") && b.state("tunnel1").as_deref() == Some("up")
    });
    eprintln!(
        "tunnel1 after the peer moved to :4501 under the flood: {:?} after {:?}; cgw drops {:?}",
        up.as_ref().map(|_| "up").map_err(|e| e.to_string()),
        t.elapsed(),
        drops(&metrics(&lab.cgw))
    );
    eprintln!("vpcgw drops {:?}", drops(&metrics(&lab.vpcgw)));
    let _ = f.join();
    if up.is_err() {
        eprintln!(
            "cgw log:\n{}\nvpcgw log:\n{}",
            pair.cgw.log_tail(30),
            pair.vpcgw.log_tail(30)
        );
    }
    up.unwrap();
}
