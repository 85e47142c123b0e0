//! IKE_SA_INIT + IKE_AUTH between two in-memory IKE SAs, with a virtual clock: success both
//! ways and for every default proposal, wrong PSK, NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD,
//! lost responses and retransmitted requests, expiry.
// Tests: panics are the failure report; the virtual clock starts at one real `Instant`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use tandem_ike::sa::{HALF_OPEN_TIMEOUT, RETRANSMIT_INITIAL};
use tandem_ike::ts::ipv4_prefix;
use tandem_ike::wire::{
    self, Attribute, ExchangeType, FLAG_INITIATOR, Header, Message, Payload, Proposal, ProtocolId,
    Transform, transform_type,
};
use tandem_ike::{
    DEFAULT_IKE_PROPOSALS, DhGroup, Dropped, Event, Failure, FirstChild, Identity, IkeProposal,
    IkeSa, NotifyType, Prf, Role,
};

mod common;
use common::*;

#[test]
fn initiator_and_responder_establish_an_ike_sa_and_a_child_sa_with_each_default_proposal() {
    let t0 = Instant::now();
    for (n, proposal) in DEFAULT_IKE_PROPOSALS.iter().enumerate() {
        let mut rng = rng(n as u64);
        let mut ca = a_towards_b("correct horse");
        ca.ike_proposals = vec![*proposal];
        let mut a = IkeSa::initiate(ca, t0, &mut rng);
        let mut b = IkeSa::respond(config_b("correct horse"));
        assert_eq!(
            pump(&mut a, &mut b, t0 + ms(1), &mut rng),
            4,
            "two exchanges, two messages each"
        );
        assert!(a.is_established() && b.is_established());
        let ea = established(events(&mut a));
        let eb = established(events(&mut b));
        assert_eq!(ea.proposal, *proposal);
        assert_pair(&ea, &eb);
        let (FirstChild::Created(ca), FirstChild::Created(cb)) = (&ea.child, &eb.child) else {
            unreachable!()
        };
        esp_round_trip(ca, cb);
        esp_round_trip(cb, ca);
        // Nothing left to do: no retransmission pending, no expiry.
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(b.poll_timeout(), None);
    }
}

#[test]
fn either_gateway_can_initiate() {
    let t0 = Instant::now();
    let mut rng = rng(7);
    // B initiates towards A this time.
    let mut cb = config_b("pw");
    cb.remote_id = Identity::Ipv4(GW_A);
    let mut ca = config_a("pw");
    ca.local_id = Identity::Ipv4(GW_A);
    ca.remote_id = Identity::Fqdn("vpn.example.net".into());
    let mut b = IkeSa::initiate(cb, t0, &mut rng);
    let mut a = IkeSa::respond(ca);
    pump(&mut b, &mut a, t0, &mut rng);
    let eb = established(events(&mut b));
    let ea = established(events(&mut a));
    assert_pair(&eb, &ea);
    // The first default proposal wins: the initiator lists it first.
    assert_eq!(eb.proposal, DEFAULT_IKE_PROPOSALS[0]);
}

#[test]
fn responder_narrows_traffic_selectors_to_its_policy() {
    let t0 = Instant::now();
    let mut rng = rng(8);
    let mut ca = a_towards_b("pw");
    // A offers the whole 10/8 on the far side; B only serves 10.20.5.0/24.
    ca.remote_ts = vec![ipv4_prefix(Ipv4Addr::new(10, 0, 0, 0), 8)];
    let mut cb = config_b("pw");
    cb.local_ts = vec![ipv4_prefix(Ipv4Addr::new(10, 20, 5, 0), 24)];
    let mut a = IkeSa::initiate(ca, t0, &mut rng);
    let mut b = IkeSa::respond(cb);
    pump(&mut a, &mut b, t0, &mut rng);
    let ea = established(events(&mut a));
    let FirstChild::Created(child) = ea.child else {
        panic!("no child")
    };
    assert_eq!(
        child.remote_ts,
        vec![ipv4_prefix(Ipv4Addr::new(10, 20, 5, 0), 24)]
    );
    assert_eq!(
        child.local_ts,
        vec![ipv4_prefix(Ipv4Addr::new(10, 10, 0, 0), 16)]
    );
}

#[test]
fn disjoint_traffic_selectors_refuse_the_child_sa_but_not_the_ike_sa() {
    let t0 = Instant::now();
    let mut rng = rng(9);
    let mut cb = config_b("pw");
    cb.local_ts = vec![ipv4_prefix(Ipv4Addr::new(172, 16, 0, 0), 12)];
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(cb);
    pump(&mut a, &mut b, t0, &mut rng);
    let ea = established(events(&mut a));
    let eb = established(events(&mut b));
    assert!(
        matches!(ea.child, FirstChild::Refused(NotifyType::TS_UNACCEPTABLE)),
        "{:?}",
        ea.child
    );
    assert!(
        matches!(eb.child, FirstChild::Refused(NotifyType::TS_UNACCEPTABLE)),
        "{:?}",
        eb.child
    );
}

#[test]
fn wrong_psk_fails_cleanly_on_both_ends() {
    let t0 = Instant::now();
    let mut rng = rng(10);
    let mut a = IkeSa::initiate(a_towards_b("the right one"), t0, &mut rng);
    let mut b = IkeSa::respond(config_b("the wrong one"));
    pump(&mut a, &mut b, t0, &mut rng);
    assert_eq!(
        failed(events(&mut b)),
        Failure::AuthenticationFailed {
            reason: "the initiator's AUTH does not verify with our PSK"
        }
    );
    assert_eq!(
        failed(events(&mut a)),
        Failure::PeerNotify(NotifyType::AUTHENTICATION_FAILED)
    );
    assert!(!a.is_established() && !b.is_established());
    assert_eq!((a.state_name(), b.state_name()), ("failed", "failed"));
    // Nothing is retransmitted or kept alive afterwards.
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn an_unexpected_peer_identity_fails_authentication() {
    let t0 = Instant::now();
    let mut rng = rng(11);
    let mut cb = config_b("pw");
    cb.remote_id = Identity::Ipv4(Ipv4Addr::new(203, 0, 113, 9));
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(cb);
    pump(&mut a, &mut b, t0, &mut rng);
    assert!(matches!(
        failed(events(&mut b)),
        Failure::AuthenticationFailed { .. }
    ));
    assert_eq!(
        failed(events(&mut a)),
        Failure::PeerNotify(NotifyType::AUTHENTICATION_FAILED)
    );
}

fn weak_initiation() -> Vec<u8> {
    let kl = |bits| {
        vec![Attribute::Tv {
            ty: wire::ATTR_KEY_LENGTH,
            value: bits,
        }]
    };
    let proposal = Proposal {
        number: 1,
        protocol: ProtocolId::Ike,
        spi: Vec::new(),
        transforms: vec![
            Transform {
                ty: transform_type::ENCR,
                id: 12,
                attributes: kl(128),
            },
            Transform::new(transform_type::PRF, 2),
            Transform::new(transform_type::INTEG, 2),
            Transform::new(transform_type::DH, 2),
        ],
    };
    Message {
        header: Header {
            spi_i: 0x1122_3344_5566_7788,
            spi_r: 0,
            exchange: ExchangeType::IkeSaInit,
            flags: FLAG_INITIATOR,
            message_id: 0,
        },
        payloads: vec![
            Payload::Sa(vec![proposal]),
            Payload::Ke {
                group: 2,
                data: vec![0x5a; 128],
            },
            Payload::Nonce(vec![7; 32]),
        ],
    }
    .to_bytes()
}

#[test]
fn a_peer_offering_only_aes_cbc_sha1_modp1024_gets_no_proposal_chosen_naming_its_offer() {
    let mut rng = rng(12);
    let mut b = IkeSa::respond(config_b("pw"));
    let req = weak_initiation();
    b.handle_datagram(Instant::now(), &req, &mut rng).unwrap();
    let out = drain(&mut b);
    assert_eq!(out.len(), 1);
    let reply = Message::parse(&out[0]).unwrap();
    assert!(reply.header.is_response());
    assert_eq!(reply.header.spi_r, 0, "no state: no responder SPI");
    assert!(reply.notify(NotifyType::NO_PROPOSAL_CHOSEN).is_some());
    let Failure::NoProposalChosen { offered } = failed(events(&mut b)) else {
        panic!("wrong failure")
    };
    assert_eq!(
        offered,
        "#1 IKE: AES_CBC_128/PRF_HMAC_SHA1/HMAC_SHA1_96/MODP_1024"
    );
    // The retransmitted offer gets the same answer, and no second event.
    b.handle_datagram(Instant::now(), &req, &mut rng).unwrap();
    assert_eq!(drain(&mut b), out);
    assert!(events(&mut b).is_empty());
}

#[test]
fn an_initiator_told_no_proposal_chosen_fails_with_that_notify() {
    let t0 = Instant::now();
    let mut rng = rng(13);
    let mut cb = config_b("pw");
    cb.ike_proposals = vec![IkeProposal {
        prf: Prf::HmacSha512,
        group: DhGroup::Ecp256,
    }];
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(cb);
    pump(&mut a, &mut b, t0, &mut rng);
    assert_eq!(
        failed(events(&mut a)),
        Failure::PeerNotify(NotifyType::NO_PROPOSAL_CHOSEN)
    );
    let Failure::NoProposalChosen { offered } = failed(events(&mut b)) else {
        panic!("wrong failure")
    };
    assert!(
        offered.contains("AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384"),
        "{offered}"
    );
}

#[test]
fn invalid_ke_payload_makes_the_initiator_retry_with_the_requested_group() {
    let t0 = Instant::now();
    let mut rng = rng(14);
    // A guesses ecp384 (its first proposal); B takes only x25519.
    let mut cb = config_b("pw");
    cb.ike_proposals = vec![IkeProposal {
        prf: Prf::HmacSha256,
        group: DhGroup::Curve25519,
    }];
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(cb);

    let first = drain(&mut a);
    let m = Message::parse(&first[0]).unwrap();
    assert!(
        m.payloads
            .iter()
            .any(|p| matches!(p, Payload::Ke { group: 20, .. }))
    );
    b.handle_datagram(t0, &first[0], &mut rng).unwrap();
    let answer = drain(&mut b);
    let n = Message::parse(&answer[0]).unwrap();
    assert_eq!(
        n.notify(NotifyType::INVALID_KE_PAYLOAD).unwrap().data,
        31u16.to_be_bytes()
    );
    assert!(
        events(&mut b).is_empty(),
        "asking for another group is not a failure"
    );
    assert_eq!(b.state_name(), "awaiting-ike-sa-init");

    a.handle_datagram(t0, &answer[0], &mut rng).unwrap();
    let retry = drain(&mut a);
    let m2 = Message::parse(&retry[0]).unwrap();
    assert_eq!(m2.header.spi_i, m.header.spi_i);
    assert_eq!(m2.header.message_id, 0);
    assert!(
        m2.payloads
            .iter()
            .any(|p| matches!(p, Payload::Ke { group: 31, .. }))
    );
    b.handle_datagram(t0, &retry[0], &mut rng).unwrap();
    pump(&mut a, &mut b, t0, &mut rng);
    let ea = established(events(&mut a));
    let eb = established(events(&mut b));
    assert_pair(&ea, &eb);
    assert_eq!(ea.proposal.group, DhGroup::Curve25519);
}

#[test]
fn lost_responses_are_recovered_by_retransmission_and_the_duplicate_request_is_answered_from_cache()
{
    let t0 = Instant::now();
    let mut rng = rng(15);
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(config_b("pw"));

    // IKE_SA_INIT: the response is lost.
    let init = drain(&mut a);
    b.handle_datagram(t0, &init[0], &mut rng).unwrap();
    let lost = drain(&mut b);
    assert_eq!(lost.len(), 1);
    assert_eq!(a.poll_timeout(), Some(t0 + RETRANSMIT_INITIAL));
    a.handle_timeout(t0 + ms(999));
    assert!(drain(&mut a).is_empty(), "not before the deadline");
    a.handle_timeout(t0 + RETRANSMIT_INITIAL);
    let again = drain(&mut a);
    assert_eq!(again, init, "retransmission is the same bytes");
    assert_eq!(
        a.poll_timeout(),
        Some(t0 + RETRANSMIT_INITIAL + 2 * RETRANSMIT_INITIAL)
    );
    let t1 = t0 + RETRANSMIT_INITIAL;
    b.handle_datagram(t1, &again[0], &mut rng).unwrap();
    let cached = drain(&mut b);
    assert_eq!(
        cached, lost,
        "the duplicate request gets the cached response"
    );
    assert!(events(&mut b).is_empty());

    // IKE_AUTH: the response is lost too.
    a.handle_datagram(t1, &cached[0], &mut rng).unwrap();
    let auth = drain(&mut a);
    b.handle_datagram(t1, &auth[0], &mut rng).unwrap();
    let lost_auth = drain(&mut b);
    let eb = established(events(&mut b));
    let deadline = a.poll_timeout().unwrap();
    assert_eq!(deadline, t1 + RETRANSMIT_INITIAL);
    a.handle_timeout(deadline);
    let auth_again = drain(&mut a);
    assert_eq!(auth_again, auth);
    b.handle_datagram(deadline, &auth_again[0], &mut rng)
        .unwrap();
    let cached_auth = drain(&mut b);
    assert_eq!(cached_auth, lost_auth);
    assert!(
        events(&mut b).is_empty(),
        "the duplicate is not processed twice"
    );
    a.handle_datagram(deadline, &cached_auth[0], &mut rng)
        .unwrap();
    let ea = established(events(&mut a));
    assert_pair(&ea, &eb);
    // A late second copy of the response is ignored.
    assert_eq!(
        a.handle_datagram(deadline, &cached_auth[0], &mut rng),
        Err(Dropped::UnexpectedResponse)
    );
}

#[test]
fn initiator_gives_up_after_its_retransmissions() {
    let t0 = Instant::now();
    let mut rng = rng(16);
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let first = drain(&mut a);
    let mut sent = 1;
    while let Some(t) = a.poll_timeout() {
        a.handle_timeout(t);
        let out = drain(&mut a);
        if let Some(d) = out.first() {
            assert_eq!(d, &first[0]);
        }
        sent += out.len();
        if !events(&mut a).is_empty() {
            assert_eq!(t, t0 + Duration::from_secs(63));
            break;
        }
    }
    assert_eq!(sent, 6, "the request and 5 retransmissions");
    assert_eq!(a.state_name(), "failed");
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn responder_forgets_a_half_open_sa() {
    let t0 = Instant::now();
    let mut rng = rng(17);
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(config_b("pw"));
    b.handle_datagram(t0, &drain(&mut a)[0], &mut rng).unwrap();
    let _ = drain(&mut b);
    assert_eq!(b.poll_timeout(), Some(t0 + HALF_OPEN_TIMEOUT));
    b.handle_timeout(t0 + HALF_OPEN_TIMEOUT);
    assert_eq!(failed(events(&mut b)), Failure::HalfOpenExpired);
}

#[test]
fn tampered_or_misaddressed_messages_are_dropped_and_the_exchange_goes_on() {
    let t0 = Instant::now();
    let mut rng = rng(18);
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(config_b("pw"));
    b.handle_datagram(t0, &drain(&mut a)[0], &mut rng).unwrap();
    a.handle_datagram(t0, &drain(&mut b)[0], &mut rng).unwrap();
    let auth = drain(&mut a).remove(0);

    // A flipped ciphertext bit: the SK payload does not authenticate.
    let mut bad = auth.clone();
    let at = bad.len() - 20;
    bad[at] ^= 0x01;
    assert_eq!(
        b.handle_datagram(t0, &bad, &mut rng),
        Err(Dropped::DecryptFailed)
    );
    // Another responder SPI.
    let mut other = auth.clone();
    other[8] ^= 0xff;
    assert_eq!(
        b.handle_datagram(t0, &other, &mut rng),
        Err(Dropped::UnexpectedRequest)
    );
    // Truncated.
    assert!(matches!(
        b.handle_datagram(t0, &auth[..auth.len() - 1], &mut rng),
        Err(Dropped::Malformed(_))
    ));
    assert!(events(&mut b).is_empty() && drain(&mut b).is_empty());
    assert_eq!(b.state_name(), "awaiting-ike-auth");

    // The genuine message still completes the exchange.
    b.handle_datagram(t0, &auth, &mut rng).unwrap();
    pump(&mut a, &mut b, t0, &mut rng);
    assert_pair(&established(events(&mut a)), &established(events(&mut b)));
}

fn nat_t(local: &str, remote: &str, force: bool) -> Option<tandem_ike::NatT> {
    Some(tandem_ike::NatT {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        force,
    })
}

/// Runs IKE_SA_INIT + IKE_AUTH with the given NAT-T settings; returns whether each side
/// encapsulates.
fn encapsulation(a_nat: Option<tandem_ike::NatT>, b_nat: Option<tandem_ike::NatT>) -> (bool, bool) {
    let t0 = Instant::now();
    let mut rng = rng(77);
    let mut ca = a_towards_b("correct horse");
    ca.nat_t = a_nat;
    let mut cb = config_b("correct horse");
    cb.nat_t = b_nat;
    let mut a = IkeSa::initiate(ca, t0, &mut rng);
    let mut b = IkeSa::respond(cb);
    pump(&mut a, &mut b, t0 + ms(1), &mut rng);
    assert!(a.is_established() && b.is_established());
    (a.udp_encapsulation(), b.udp_encapsulation())
}

#[test]
fn nat_detection_finds_no_nat_on_a_clean_path_and_a_nat_when_an_address_is_rewritten() {
    let (a, b) = (GW_A.to_string(), GW_B.to_string());
    let a500 = format!("{a}:500");
    let b500 = format!("{b}:500");
    // Both see the same addresses: no NAT, IKE stays on 500.
    assert_eq!(
        encapsulation(nat_t(&a500, &b500, false), nat_t(&b500, &a500, false)),
        (false, false)
    );
    // A NAT rewrote A's source port: B sees another port than A hashed.
    assert_eq!(
        encapsulation(
            nat_t(&a500, &b500, false),
            nat_t(&b500, &format!("{a}:61000"), false)
        ),
        (true, true)
    );
    // Forced by either side (like strongSwan's encap = yes).
    assert_eq!(
        encapsulation(nat_t(&a500, &b500, true), nat_t(&b500, &a500, false)),
        (true, true)
    );
    assert_eq!(
        encapsulation(nat_t(&a500, &b500, false), nat_t(&b500, &a500, true)),
        (true, true)
    );
    // A peer without NAT-T support: nothing to detect, no encapsulation.
    assert_eq!(
        encapsulation(nat_t(&a500, &b500, true), None),
        (false, false)
    );
}

/// An established pair (A initiated) with their Established events drained.
fn established_pair(seed: u64) -> (IkeSa, IkeSa, Instant, ChaCha20Rng) {
    let t0 = Instant::now();
    let mut rng = rng(seed);
    let mut a = IkeSa::initiate(a_towards_b("correct horse"), t0, &mut rng);
    let mut b = IkeSa::respond(config_b("correct horse"));
    pump(&mut a, &mut b, t0, &mut rng);
    let ea = established(events(&mut a));
    let eb = established(events(&mut b));
    assert_pair(&ea, &eb);
    (a, b, t0, rng)
}

/// Both ends hold the same Child SAs, mirrored.
fn assert_children_mirror(a: &IkeSa, b: &IkeSa) {
    assert_eq!(a.children().len(), b.children().len());
    for ca in a.children() {
        let cb = b
            .children()
            .iter()
            .find(|c| c.inbound_spi == ca.outbound_spi)
            .unwrap_or_else(|| panic!("B has no Child SA for {:08x}", ca.outbound_spi));
        assert_eq!(cb.outbound_spi, ca.inbound_spi);
        assert_eq!(
            (ca.outbound.key, ca.outbound.salt),
            (cb.inbound.key, cb.inbound.salt)
        );
        assert_eq!(
            (ca.inbound.key, ca.inbound.salt),
            (cb.outbound.key, cb.outbound.salt)
        );
        esp_round_trip(ca, cb);
        esp_round_trip(cb, ca);
    }
}

#[test]
fn an_empty_informational_is_answered_both_ways_as_liveness() {
    let (mut a, mut b, t0, mut rng) = established_pair(20);
    a.send_liveness(t0 + ms(10));
    assert_eq!(pump(&mut a, &mut b, t0 + ms(10), &mut rng), 2);
    assert!(matches!(events(&mut a).as_slice(), [Event::Alive]));
    assert!(events(&mut b).is_empty());
    b.send_liveness(t0 + ms(20));
    assert_eq!(pump(&mut a, &mut b, t0 + ms(20), &mut rng), 2);
    assert!(matches!(events(&mut b).as_slice(), [Event::Alive]));
    // A lost answer: the request is retransmitted and answered from the cache.
    a.send_liveness(t0 + ms(30));
    let req = drain(&mut a);
    b.handle_datagram(t0 + ms(30), &req[0], &mut rng).unwrap();
    let _lost = drain(&mut b);
    a.handle_timeout(t0 + ms(30) + RETRANSMIT_INITIAL);
    assert_eq!(pump(&mut a, &mut b, t0 + ms(1100), &mut rng), 2);
    assert!(matches!(events(&mut a).as_slice(), [Event::Alive]));
    assert!(events(&mut b).is_empty(), "processed once");
}

#[test]
fn only_fresh_authenticated_messages_count_as_proof_of_the_peers_address() {
    let t0 = Instant::now();
    let mut rng = rng(21);
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(config_b("pw"));
    let init = drain(&mut a);
    b.handle_datagram(t0, &init[0], &mut rng).unwrap();
    a.handle_datagram(t0, &drain(&mut b)[0], &mut rng).unwrap();
    assert_eq!(
        (a.fresh_peer_messages(), b.fresh_peer_messages()),
        (0, 0),
        "IKE_SA_INIT proves nothing"
    );
    let auth = drain(&mut a);
    b.handle_datagram(t0, &auth[0], &mut rng).unwrap();
    let answer = drain(&mut b);
    assert_eq!(b.fresh_peer_messages(), 1, "the IKE_AUTH request");
    // The same request again (a retransmission, or a replay by anyone who saw it): answered
    // from the cache, not counted.
    b.handle_datagram(t0, &auth[0], &mut rng).unwrap();
    assert_eq!(drain(&mut b), answer);
    assert_eq!(b.fresh_peer_messages(), 1);
    a.handle_datagram(t0, &answer[0], &mut rng).unwrap();
    assert_eq!(a.fresh_peer_messages(), 1, "the IKE_AUTH response");
    assert!(a.handle_datagram(t0, &answer[0], &mut rng).is_err());
    assert_eq!(a.fresh_peer_messages(), 1, "a second copy of the response");
    // A liveness exchange: one fresh message each way.
    a.send_liveness(t0 + ms(10));
    let req = drain(&mut a);
    b.handle_datagram(t0 + ms(10), &req[0], &mut rng).unwrap();
    let resp = drain(&mut b);
    b.handle_datagram(t0 + ms(10), &req[0], &mut rng).unwrap();
    assert_eq!(
        drain(&mut b),
        resp,
        "the duplicate is answered from the cache"
    );
    a.handle_datagram(t0 + ms(10), &resp[0], &mut rng).unwrap();
    assert_eq!((a.fresh_peer_messages(), b.fresh_peer_messages()), (2, 2));
    // A tampered message does not authenticate and counts for nothing.
    b.send_liveness(t0 + ms(20));
    let mut req = drain(&mut b).remove(0);
    let last = req.len() - 1;
    req[last] ^= 1;
    assert_eq!(
        a.handle_datagram(t0 + ms(20), &req, &mut rng),
        Err(Dropped::DecryptFailed)
    );
    assert_eq!(a.fresh_peer_messages(), 2);
}

fn child_rekey_by(initiator_rekeys: bool, seed: u64) {
    let (mut a, mut b, t0, mut rng) = established_pair(seed);
    let (x, y) = if initiator_rekeys {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let old = x.children()[0].clone();
    assert!(x.rekey_child(t0 + ms(5), old.inbound_spi, &mut rng));
    // CREATE_CHILD_SA, then the Delete of the old Child SA: four messages.
    assert_eq!(pump(x, y, t0 + ms(5), &mut rng), 4);
    for (side, evs) in [("rekeying", events(x)), ("other", events(y))] {
        let [
            Event::ChildRekeyed {
                old_inbound_spi,
                new,
            },
            Event::ChildDeleted { inbound_spi },
        ] = evs.as_slice()
        else {
            panic!("{side}: {evs:?}");
        };
        assert_eq!(
            old_inbound_spi, inbound_spi,
            "{side}: the old one is deleted"
        );
        assert_ne!(new.inbound_spi, *inbound_spi);
        assert_eq!(new.proposal.pfs, Some(DhGroup::Ecp384), "{side}: PFS group");
    }
    assert_eq!(x.children().len(), 1);
    assert_ne!(x.children()[0].outbound.key, old.outbound.key, "new keys");
    assert_ne!(x.children()[0].inbound_spi, old.inbound_spi);
    assert_children_mirror(x, y);
}

#[test]
fn the_initiator_rekeys_the_child_sa_with_pfs_and_deletes_the_old_one() {
    child_rekey_by(true, 21);
}

#[test]
fn the_responder_rekeys_the_child_sa_with_pfs_and_deletes_the_old_one() {
    child_rekey_by(false, 22);
}

#[test]
fn simultaneous_child_rekeys_keep_one_new_child_sa_on_both_ends() {
    for seed in 30..40 {
        let (mut a, mut b, t0, mut rng) = established_pair(seed);
        let old_a = a.children()[0].inbound_spi;
        let old_b = b.children()[0].inbound_spi;
        assert!(a.rekey_child(t0 + ms(5), old_a, &mut rng));
        assert!(b.rekey_child(t0 + ms(5), old_b, &mut rng));
        pump(&mut a, &mut b, t0 + ms(5), &mut rng);
        // Each end saw two new Child SAs and then two deletes: the old one and the redundant
        // one (RFC 7296 §2.8.1).
        for (side, sa) in [("A", &mut a), ("B", &mut b)] {
            let evs = events(sa);
            let rekeyed = evs
                .iter()
                .filter(|e| matches!(e, Event::ChildRekeyed { .. }))
                .count();
            let deleted = evs
                .iter()
                .filter(|e| matches!(e, Event::ChildDeleted { .. }))
                .count();
            assert_eq!((rekeyed, deleted), (2, 2), "{side} seed {seed}: {evs:?}");
        }
        assert_eq!(a.children().len(), 1, "seed {seed}");
        assert_ne!(a.children()[0].inbound_spi, old_a);
        assert_children_mirror(&a, &b);
    }
}

fn ike_rekey_by(initiator_rekeys: bool, seed: u64) {
    let (mut a, mut b, t0, mut rng) = established_pair(seed);
    let (x, y) = if initiator_rekeys {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let (old_i, old_r) = (x.spi_i(), x.spi_r());
    let child = x.children()[0].clone();
    x.rekey_ike(t0 + ms(5), &mut rng);
    // CREATE_CHILD_SA, then the Delete of the old IKE SA on its old SPIs.
    assert_eq!(pump(x, y, t0 + ms(5), &mut rng), 4);
    let (ex, ey) = (events(x), events(y));
    let (
        [
            Event::IkeRekeyed {
                spi_i, spi_r, keys, ..
            },
        ],
        [
            Event::IkeRekeyed {
                spi_i: yi,
                spi_r: yr,
                keys: ykeys,
                ..
            },
        ],
    ) = (ex.as_slice(), ey.as_slice())
    else {
        panic!("{ex:?} / {ey:?}");
    };
    assert_eq!((spi_i, spi_r), (yi, yr));
    assert_ne!((*spi_i, *spi_r), (old_i, old_r));
    assert_eq!(keys.sk_ei.key, ykeys.sk_ei.key);
    assert_eq!(keys.sk_er.key, ykeys.sk_er.key);
    // The rekey's initiator is the new SA's initiator (RFC 7296 §2.18).
    assert_eq!(x.role(), Role::Initiator);
    assert_eq!(y.role(), Role::Responder);
    assert_eq!((x.spi_i(), x.spi_r()), (*spi_i, *spi_r));
    // The Child SA carries over; the new SA works for liveness and Child SA rekeys.
    assert_eq!(x.children()[0].inbound_spi, child.inbound_spi);
    y.send_liveness(t0 + ms(10));
    assert_eq!(pump(x, y, t0 + ms(10), &mut rng), 2);
    assert!(matches!(events(y).as_slice(), [Event::Alive]));
    let spi = y.children()[0].inbound_spi;
    assert!(y.rekey_child(t0 + ms(20), spi, &mut rng));
    assert_eq!(pump(x, y, t0 + ms(20), &mut rng), 4);
    assert_children_mirror(x, y);
}

#[test]
fn the_initiator_rekeys_the_ike_sa_and_the_child_sa_carries_over() {
    ike_rekey_by(true, 40);
}

#[test]
fn the_responder_rekeys_the_ike_sa_and_becomes_the_new_initiator() {
    ike_rekey_by(false, 41);
}

#[test]
fn a_deleted_ike_sa_is_closed_on_both_ends() {
    let (mut a, mut b, t0, mut rng) = established_pair(50);
    b.close(t0 + ms(5));
    assert_eq!(pump(&mut a, &mut b, t0 + ms(5), &mut rng), 2);
    assert!(matches!(events(&mut a).as_slice(), [Event::Closed]));
    assert!(matches!(events(&mut b).as_slice(), [Event::Closed]));
    assert_eq!((a.state_name(), b.state_name()), ("closed", "closed"));
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn an_initiator_that_refuses_the_responders_auth_tells_it_with_authentication_failed() {
    let t0 = Instant::now();
    let mut rng = rng(60);
    let mut a = IkeSa::initiate(a_towards_b("pw"), t0, &mut rng);
    let mut b = IkeSa::respond(config_b("pw"));
    let init = drain(&mut a);
    b.handle_datagram(t0, &init[0], &mut rng).unwrap();
    a.handle_datagram(t0, &drain(&mut b)[0], &mut rng).unwrap();
    b.handle_datagram(t0, &drain(&mut a)[0], &mut rng).unwrap();
    let eb = established(events(&mut b));
    // Forge the responder's AUTH inside its (genuine) IKE_AUTH response.
    let response = drain(&mut b).remove(0);
    let msg = Message::parse(&response).unwrap();
    let mut inner = wire::open_sk(&response, &msg, &eb.keys.sk_er).unwrap();
    for p in &mut inner {
        if let Payload::Auth { data, .. } = p {
            data[0] ^= 1;
        }
    }
    let forged = wire::seal_message(&msg.header, &inner, &eb.keys.sk_er, 1000);
    a.handle_datagram(t0, &forged, &mut rng).unwrap();
    assert!(matches!(
        failed(events(&mut a)),
        Failure::AuthenticationFailed { .. }
    ));
    // The INFORMATIONAL with AUTHENTICATION_FAILED (RFC 7296 §2.21.2) ends B's SA.
    let notice = drain(&mut a);
    assert_eq!(notice.len(), 1);
    let h = Message::parse(&notice[0]).unwrap().header;
    assert_eq!((h.exchange, h.message_id), (ExchangeType::Informational, 2));
    b.handle_datagram(t0, &notice[0], &mut rng).unwrap();
    assert_eq!(
        failed(events(&mut b)),
        Failure::PeerNotify(NotifyType::AUTHENTICATION_FAILED)
    );
    assert!(!b.is_established());
}
