//! Helpers shared by the IKE SA tests: two gateways' configurations, a pump that moves
//! datagrams between two in-memory IKE SAs, and checks on what they agreed.
// Each test binary uses its own subset.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_ike::ts::ipv4_prefix;
use tandem_ike::{
    Config, DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, Established, Event, Failure, FirstChild,
    Identity, IkeSa, Psk, Role,
};

pub const GW_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const GW_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Gateway A (office 10.10.0.0/16) and gateway B (VPC 10.20.0.0/16).
pub fn config_a(psk: &str) -> Config {
    Config {
        psk: Psk::new(psk.as_bytes()),
        local_id: Identity::Ipv4(GW_A),
        remote_id: Identity::Ipv4(GW_B),
        ike_proposals: DEFAULT_IKE_PROPOSALS.to_vec(),
        esp_proposals: DEFAULT_ESP_PROPOSALS.to_vec(),
        local_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 10, 0, 0), 16)],
        remote_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 20, 0, 0), 16)],
        nat_t: None,
    }
}

pub fn config_b(psk: &str) -> Config {
    Config {
        psk: Psk::new(psk.as_bytes()),
        local_id: Identity::Fqdn("vpn.example.net".into()),
        remote_id: Identity::Ipv4(GW_A),
        ike_proposals: DEFAULT_IKE_PROPOSALS.to_vec(),
        esp_proposals: DEFAULT_ESP_PROPOSALS.to_vec(),
        local_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 20, 0, 0), 16)],
        remote_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 10, 0, 0), 16)],
        nat_t: None,
    }
}

/// A's view of B uses B's FQDN identity.
pub fn a_towards_b(psk: &str) -> Config {
    let mut c = config_a(psk);
    c.remote_id = Identity::Fqdn("vpn.example.net".into());
    c
}

pub fn drain(sa: &mut IkeSa) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| sa.poll_transmit()).collect()
}

pub fn events(sa: &mut IkeSa) -> Vec<Event> {
    std::iter::from_fn(|| sa.poll_event()).collect()
}

/// Delivers every pending datagram both ways until both are quiet; returns how many moved.
pub fn pump(a: &mut IkeSa, b: &mut IkeSa, now: Instant, rng: &mut ChaCha20Rng) -> usize {
    let mut moved = 0;
    loop {
        let from_a = drain(a);
        let from_b = drain(b);
        if from_a.is_empty() && from_b.is_empty() {
            return moved;
        }
        for d in from_a {
            moved += 1;
            let _ = b.handle_datagram(now, &d, rng);
        }
        for d in from_b {
            moved += 1;
            let _ = a.handle_datagram(now, &d, rng);
        }
    }
}

pub fn established(evs: Vec<Event>) -> Established {
    match evs.as_slice() {
        [Event::Established(e)] => (**e).clone(),
        other => panic!("expected one Established event, got {other:?}"),
    }
}

pub fn failed(evs: Vec<Event>) -> Failure {
    match evs.as_slice() {
        [Event::Failed(f)] => f.clone(),
        other => panic!("expected one Failed event, got {other:?}"),
    }
}

pub fn assert_pair(i: &Established, r: &Established) {
    assert_eq!(i.role, Role::Initiator);
    assert_eq!(r.role, Role::Responder);
    assert_eq!((i.spi_i, i.spi_r), (r.spi_i, r.spi_r));
    assert_ne!(i.spi_r, 0);
    assert_eq!(i.proposal, r.proposal);
    assert_eq!(i.keys.sk_ei.key, r.keys.sk_ei.key);
    assert_eq!(i.keys.sk_er.key, r.keys.sk_er.key);
    assert_ne!(i.keys.sk_ei.key, i.keys.sk_er.key);
    let (FirstChild::Created(ci), FirstChild::Created(cr)) = (&i.child, &r.child) else {
        panic!("child not created: {:?} / {:?}", i.child, r.child);
    };
    assert_eq!(ci.outbound_spi, cr.inbound_spi);
    assert_eq!(ci.inbound_spi, cr.outbound_spi);
    assert_eq!(ci.outbound.key, cr.inbound.key);
    assert_eq!(ci.outbound.salt, cr.inbound.salt);
    assert_eq!(ci.inbound.key, cr.outbound.key);
    assert_ne!(ci.inbound.key, ci.outbound.key);
    assert_eq!(ci.local_ts, cr.remote_ts);
    assert_eq!(ci.remote_ts, cr.local_ts);
}

/// Seals a packet with one side's outbound Child SA and opens it with the other's inbound one,
/// through tandem-crypto's ESP SA: the negotiated keys and SPIs really line up.
pub fn esp_round_trip(from: &tandem_ike::ChildSa, to: &tandem_ike::ChildSa) {
    use tandem_crypto::{HEADROOM, InboundSa, OutboundSa, Spi, TAILROOM};
    let mut out = OutboundSa::new(Spi::new(from.outbound_spi).unwrap(), from.outbound.clone());
    let mut inb = InboundSa::new(Spi::new(to.inbound_spi).unwrap(), to.inbound.clone());
    let packet = [0x45u8; 40];
    let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
    let sealed = out
        .seal(
            &mut buf,
            HEADROOM..HEADROOM + packet.len(),
            tandem_crypto::esp::NEXT_HEADER_IPV4,
        )
        .unwrap();
    let mut datagram = buf[sealed.datagram.clone()].to_vec();
    let len = datagram.len();
    let opened = inb.open(&mut datagram, 0..len).unwrap();
    assert_eq!(&datagram[opened.payload.clone()], &packet[..]);
}
