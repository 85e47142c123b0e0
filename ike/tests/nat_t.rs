//! The move to the NAT-T port (RFC 7296 §2.23) as the driver sees it: for every datagram an IKE
//! SA hands out, which transport it takes, with a NAT on the path, on a clean path, with
//! encapsulation forced by either end, and when the exchange started on 4500; and the non-ESP
//! marker framing and sorting of what arrives on 4500 (RFC 3948 §2.2, §2.3).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Instant;

use tandem_ike::nat::{
    NAT_KEEPALIVE, NON_ESP_MARKER, NatTDatagram, Transport, classify_nat_t, transport_for,
};
use tandem_ike::wire::{ExchangeType, Message};
use tandem_ike::{IkeSa, NatT};

mod common;
use common::*;

fn nat(local: &str, remote: &str, force: bool) -> Option<NatT> {
    Some(NatT {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        force,
    })
}

fn exchange_of(d: &[u8]) -> ExchangeType {
    Message::parse(d).unwrap().header.exchange
}

/// Runs IKE_SA_INIT, IKE_AUTH and one liveness request from the responder, the initiator
/// starting on `start`; returns (exchange, sender is A, transport) for every datagram, in order.
fn transports(
    a_nat: Option<NatT>,
    b_nat: Option<NatT>,
    start: Transport,
) -> Vec<(ExchangeType, bool, Transport)> {
    let t0 = Instant::now();
    let mut rng = rng(9);
    let mut ca = a_towards_b("correct horse");
    ca.nat_t = a_nat;
    let mut cb = config_b("correct horse");
    cb.nat_t = b_nat;
    let mut a = IkeSa::initiate(ca, t0, &mut rng);
    let mut b = IkeSa::respond(cb);
    let mut seen = Vec::new();
    // B answers on the transport A's IKE_SA_INIT came in on: `start`.
    for round in 0..3 {
        if round == 2 {
            b.send_liveness(t0);
        }
        for d in drain(&mut a) {
            seen.push((exchange_of(&d), true, a.transport_for(&d, start)));
            b.handle_datagram(t0, &d, &mut rng).unwrap();
        }
        for d in drain(&mut b) {
            seen.push((exchange_of(&d), false, b.transport_for(&d, start)));
            a.handle_datagram(t0, &d, &mut rng).unwrap();
        }
        for d in drain(&mut a) {
            seen.push((exchange_of(&d), true, a.transport_for(&d, start)));
            b.handle_datagram(t0, &d, &mut rng).unwrap();
        }
    }
    assert!(a.is_established() && b.is_established());
    seen
}

fn expect(init: Transport, later: Transport) -> Vec<(ExchangeType, bool, Transport)> {
    use ExchangeType::*;
    vec![
        (IkeSaInit, true, init),
        (IkeSaInit, false, init),
        (IkeAuth, true, later),
        (IkeAuth, false, later),
        (Informational, false, later),
        (Informational, true, later),
    ]
}

const A500: &str = "192.0.2.1:500";
const B500: &str = "198.51.100.2:500";

#[test]
fn behind_a_nat_everything_after_ike_sa_init_moves_to_the_nat_t_port() {
    // A NAT rewrote A's source port: B sees 192.0.2.1:61000, not what A hashed.
    let seen = transports(
        nat(A500, B500, false),
        nat(B500, "192.0.2.1:61000", false),
        Transport::Ike,
    );
    assert_eq!(seen, expect(Transport::Ike, Transport::NatT));
}

#[test]
fn on_a_clean_path_ike_stays_on_its_port() {
    let seen = transports(
        nat(A500, B500, false),
        nat(B500, A500, false),
        Transport::Ike,
    );
    assert_eq!(seen, expect(Transport::Ike, Transport::Ike));
    // A peer that does no NAT-T at all: the same.
    let seen = transports(nat(A500, B500, true), None, Transport::Ike);
    assert_eq!(seen, expect(Transport::Ike, Transport::Ike));
}

#[test]
fn forced_encapsulation_by_either_end_moves_both_without_a_nat() {
    for (fa, fb) in [(true, false), (false, true)] {
        let seen = transports(nat(A500, B500, fa), nat(B500, A500, fb), Transport::Ike);
        assert_eq!(
            seen,
            expect(Transport::Ike, Transport::NatT),
            "force {fa}/{fb}"
        );
    }
}

#[test]
fn an_exchange_started_on_the_nat_t_port_stays_there() {
    let seen = transports(
        nat("192.0.2.1:4500", "198.51.100.2:4500", false),
        nat("198.51.100.2:4500", "192.0.2.1:4500", false),
        Transport::NatT,
    );
    assert_eq!(seen, expect(Transport::NatT, Transport::NatT));
}

#[test]
fn the_nat_t_port_carries_ike_behind_the_marker_esp_as_is_and_keepalives() {
    let t0 = Instant::now();
    let mut rng = rng(10);
    let init = drain(&mut IkeSa::initiate(a_towards_b("x"), t0, &mut rng))
        .pop()
        .unwrap();
    assert_eq!(Transport::Ike.frame(&init), init);
    assert_eq!(Transport::Ike.port(), 500);
    assert_eq!(Transport::NatT.port(), 4500);
    let framed = Transport::NatT.frame(&init);
    assert_eq!(framed[..4], NON_ESP_MARKER);
    assert_eq!(classify_nat_t(&framed), NatTDatagram::Ike(&init[..]));

    let esp = [0x00, 0x00, 0x12, 0x34, 0, 0, 0, 1, 0xaa, 0xbb];
    assert_eq!(classify_nat_t(&esp), NatTDatagram::Esp(&esp[..]));
    assert_eq!(classify_nat_t(&NAT_KEEPALIVE), NatTDatagram::Keepalive);
    for junk in [&[][..], &[1, 2, 3][..], &framed[..20], &[0xff, 0xff][..]] {
        assert_eq!(classify_nat_t(junk), NatTDatagram::Invalid, "{junk:?}");
    }
    // The decision never looks past the header: junk is "not IKE_SA_INIT".
    assert_eq!(transport_for(&[], Transport::Ike, true), Transport::NatT);
    assert_eq!(transport_for(&init, Transport::Ike, true), Transport::Ike);
}
