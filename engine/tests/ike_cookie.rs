//! The engine's IKEv2 responder behind its COOKIE gate (RFC 7296 §2.6), sans-IO: a tunnel whose
//! `local` is a bare address answers IKE_SA_INIT on port 500 (no marker) and moves to 4500
//! (RFC 7296 §2.23); a flood of IKE_SA_INITs in the peer's name gets COOKIEs, not a DH each; the
//! real peer, retrying with its cookie, gets in during the flood; the cookie secret rotates on
//! the engine's timers, so an old cookie no longer opens the gate.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stderr)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_engine::{DropReason, Engine, NetAction, Transmit, TunnelState};
use tandem_ike::nat::{IKE_PORT, NAT_T_PORT, NON_ESP_MARKER};
use tandem_ike::ts::ipv4_prefix;
use tandem_ike::wire::{NotifyType, Payload};
use tandem_ike::{Config, Identity, IkeSa, Message, NatT, Psk};

const LONG: (Duration, Duration) = (Duration::from_secs(8 * 3600), Duration::from_secs(3600));

fn ip(side: Side) -> IpAddr {
    addr(side, 0).ip()
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => unreachable!(),
    }
}

/// B, waiting, with tunnel1 on a bare local address: IKE_SA_INIT on 500 as well.
fn responder(now: Instant) -> Engine {
    let mut cfg = ike_config(&Setup::default(), Side::B, LONG);
    let t = &mut cfg.connections[0].tunnels[0];
    let ike = t.ike.as_mut().unwrap();
    ike.local_ike = Some(SocketAddr::new(ip(Side::B), IKE_PORT));
    Engine::new(cfg, [9; 32], now, Duration::from_secs(1_700_000_000))
}

/// A's tunnel1 as a bare tandem-ike initiator (the peer B expects).
fn peer_config() -> Config {
    Config {
        psk: Psk::new(b"aws-like-psk-for-tunnel-0".as_slice()),
        local_id: Identity::Ipv4(v4(ip(Side::A))),
        remote_id: Identity::Ipv4(v4(ip(Side::B))),
        ike_proposals: tandem_ike::DEFAULT_IKE_PROPOSALS.to_vec(),
        esp_proposals: tandem_ike::DEFAULT_ESP_PROPOSALS.to_vec(),
        local_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 10, 0, 0), 24)],
        remote_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 20, 0, 0), 24)],
        nat_t: Some(NatT {
            local: SocketAddr::new(ip(Side::A), IKE_PORT),
            remote: SocketAddr::new(ip(Side::B), IKE_PORT),
            force: true,
        }),
    }
}

fn deliver(e: &mut Engine, local_port: u16, from: SocketAddr, d: &[u8], now: Instant) -> NetAction {
    let mut buf = d.to_vec();
    let len = buf.len();
    e.handle_datagram_at(
        SocketAddr::new(ip(Side::B), local_port),
        from,
        &mut buf,
        0..len,
        now,
    )
}

/// Everything B sends: (transmit, bytes).
fn sent(e: &mut Engine) -> Vec<(Transmit, Vec<u8>)> {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while let Some(t) = e.poll_transmit(&mut buf) {
        out.push((t, buf[..t.len].to_vec()));
    }
    out
}

fn is_cookie(ike: &[u8]) -> bool {
    Message::parse(ike).is_ok_and(|m| {
        m.payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(n) if n.ty == NotifyType::COOKIE))
    })
}

fn has_ke(ike: &[u8]) -> bool {
    Message::parse(ike).is_ok_and(|m| m.payloads.iter().any(|p| matches!(p, Payload::Ke { .. })))
}

/// Runs the peer `sa` against B until B's tunnel1 is Up: the peer's datagrams go to B's 500
/// (IKE_SA_INIT) or 4500 (later, behind the marker), B's answers back to the peer. Returns the
/// (port, marker) of each of B's answers.
fn handshake(
    e: &mut Engine,
    sa: &mut IkeSa,
    now: Instant,
    rng: &mut ChaCha20Rng,
) -> Vec<(u16, bool)> {
    let peer500 = SocketAddr::new(ip(Side::A), IKE_PORT);
    let peer4500 = SocketAddr::new(ip(Side::A), NAT_T_PORT);
    let mut answers = Vec::new();
    for _ in 0..10 {
        while let Some(d) = sa.poll_transmit() {
            let t = sa.transport_for(&d, tandem_ike::nat::Transport::Ike);
            match t {
                tandem_ike::nat::Transport::Ike => deliver(e, IKE_PORT, peer500, &d, now),
                tandem_ike::nat::Transport::NatT => {
                    deliver(e, NAT_T_PORT, peer4500, &t.frame(&d), now)
                }
            };
        }
        for (t, bytes) in sent(e) {
            let (port, msg) = match t.via {
                Some(v) => {
                    assert_eq!(v.port(), IKE_PORT);
                    assert_eq!(t.dst, peer500, "IKE_SA_INIT is answered where it came from");
                    (IKE_PORT, &bytes[..])
                }
                None => (NAT_T_PORT, bytes.strip_prefix(&NON_ESP_MARKER[..]).unwrap()),
            };
            answers.push((port, t.via.is_none()));
            let _ = sa.handle_datagram(now, msg, rng);
        }
        if e.status(now).connections[0].tunnels[0].state == TunnelState::Up {
            return answers;
        }
    }
    panic!("B's tunnel1 not Up; B answered {answers:?}");
}

#[test]
fn ike_sa_init_on_500_is_answered_there_and_ike_auth_moves_to_4500() {
    let now = Instant::now();
    let mut e = responder(now);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut sa = IkeSa::initiate(peer_config(), now, &mut rng);
    let answers = handshake(&mut e, &mut sa, now, &mut rng);
    // The IKE_SA_INIT response on 500 without a marker, the IKE_AUTH response on 4500 with it.
    assert_eq!(answers, vec![(IKE_PORT, false), (NAT_T_PORT, true)]);
    assert!(sa.is_established());
}

#[test]
fn a_flood_of_ike_sa_inits_in_the_peers_name_gets_cookies_and_the_peer_still_gets_in() {
    let now = Instant::now();
    let mut e = responder(now);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let template = IkeSa::initiate(peer_config(), now, &mut rng)
        .poll_transmit()
        .unwrap();
    // 1000 spoofed requests from the peer's address, each with its own SPIi, in one second.
    let spoofed = SocketAddr::new(ip(Side::A), IKE_PORT);
    let (mut cookies, mut dh) = (0, 0);
    for i in 0..1000u64 {
        let mut d = template.clone();
        d[..8].copy_from_slice(&(0x5500_0000_0000_0000 + i).to_be_bytes());
        let at = now + Duration::from_micros(500 * i);
        let _ = deliver(&mut e, IKE_PORT, spoofed, &d, at);
        for (_, b) in sent(&mut e) {
            cookies += usize::from(is_cookie(&b));
            dh += usize::from(has_ke(&b));
        }
    }
    let drops = e.drop_counters().get(DropReason::IkeCookie);
    eprintln!(
        "1000 spoofed IKE_SA_INITs: {dh} answered with a DH, {cookies} COOKIEs ({drops} counted)"
    );
    assert!(dh <= 4, "a DH per spoofed request: {dh}");
    assert!(cookies >= 996, "{cookies}");
    assert_eq!(drops as usize, cookies);
    // The real peer during the flood: a COOKIE first, then in with it.
    let at = now + Duration::from_millis(600);
    let mut sa = IkeSa::initiate(peer_config(), at, &mut rng);
    let answers = handshake(&mut e, &mut sa, at, &mut rng);
    assert_eq!(
        answers,
        vec![(IKE_PORT, false), (IKE_PORT, false), (NAT_T_PORT, true)],
        "COOKIE, IKE_SA_INIT response, IKE_AUTH response"
    );
}

#[test]
fn the_cookie_secret_rotates_on_the_engines_timers_and_an_old_cookie_no_longer_opens_the_gate() {
    let now = Instant::now();
    let mut e = responder(now);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let peer = SocketAddr::new(ip(Side::A), IKE_PORT);
    // Close the gate: more than the threshold of new SAs in a second.
    let template = IkeSa::initiate(peer_config(), now, &mut rng)
        .poll_transmit()
        .unwrap();
    for i in 0..10u64 {
        let mut d = template.clone();
        d[..8].copy_from_slice(&(0x6600_0000_0000_0000 + i).to_be_bytes());
        let _ = deliver(&mut e, IKE_PORT, peer, &d, now);
        let _ = sent(&mut e);
    }
    // The peer gets a cookie now ...
    let mut sa = IkeSa::initiate(peer_config(), now, &mut rng);
    let init = sa.poll_transmit().unwrap();
    let _ = deliver(&mut e, IKE_PORT, peer, &init, now);
    let answer = sent(&mut e);
    assert!(answer.len() == 1 && is_cookie(&answer[0].1), "{answer:?}");
    sa.handle_datagram(now, &answer[0].1, &mut rng).unwrap();
    let retry = sa.poll_transmit().unwrap();
    // ... and comes back with it after two rotations (the engine's own timers; cookies are
    // demanded again by then because the flood goes on).
    let later = now + Duration::from_secs(125);
    let mut t = now;
    while let Some(due) = e.poll_timeout().filter(|d| *d <= later) {
        t = due.max(t);
        e.handle_timeout(t);
        let _ = sent(&mut e);
    }
    for i in 0..10u64 {
        let mut d = template.clone();
        d[..8].copy_from_slice(&(0x6700_0000_0000_0000 + i).to_be_bytes());
        let _ = deliver(&mut e, IKE_PORT, peer, &d, later);
        let _ = sent(&mut e);
    }
    let before = e.drop_counters().get(DropReason::IkeCookie);
    let _ = deliver(&mut e, IKE_PORT, peer, &retry, later);
    let answer = sent(&mut e);
    assert!(
        answer.len() == 1 && is_cookie(&answer[0].1) && !has_ke(&answer[0].1),
        "the old cookie was taken: {answer:?}"
    );
    assert_eq!(e.drop_counters().get(DropReason::IkeCookie), before + 1);
}

#[test]
fn a_nat_keepalive_on_4500_is_taken_without_a_drop_and_another_single_byte_is_still_one() {
    let now = Instant::now();
    let mut e = responder(now);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut sa = IkeSa::initiate(peer_config(), now, &mut rng);
    handshake(&mut e, &mut sa, now, &mut rng);
    let before = e.drop_counters().total();
    let peer4500 = SocketAddr::new(ip(Side::A), NAT_T_PORT);
    let r = deliver(
        &mut e,
        NAT_T_PORT,
        peer4500,
        &tandem_ike::nat::NAT_KEEPALIVE,
        now,
    );
    assert_eq!(r, NetAction::Consumed);
    assert_eq!(e.drop_counters().total(), before, "a keepalive is no drop");
    assert!(sent(&mut e).is_empty(), "and gets no answer");
    // Another single byte is junk, counted.
    let r = deliver(&mut e, NAT_T_PORT, peer4500, &[0xfe], now);
    assert!(matches!(r, NetAction::Drop(_)), "{r:?}");
    assert_eq!(e.drop_counters().total(), before + 1);
}
