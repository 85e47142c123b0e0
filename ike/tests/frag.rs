//! IKE fragmentation (RFC 7383) between two in-memory IKE SAs on a virtual clock: negotiation,
//! large IKE_AUTH and CREATE_CHILD_SA messages cut into fragments both ways, fragments out of
//! order, duplicated, missing (filled by the retransmission), forged, and left incomplete past
//! the reassembly timeout; and the bounded reassembly itself.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stderr)]

use std::net::Ipv4Addr;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use tandem_crypto::SaKeys;
use tandem_ike::frag::{
    self, Added, FRAGMENT_OVERHEAD, MAX_FRAGMENTS, REASSEMBLY_TIMEOUT, Reassembly,
};
use tandem_ike::sa::RETRANSMIT_INITIAL;
use tandem_ike::ts::ipv4_prefix;
use tandem_ike::wire::{ExchangeType, FLAG_INITIATOR, Header, Message, Payload, payload_type};
use tandem_ike::{Config, Dropped, Event, Fragmentation, IkeSa, Options};

mod common;
use common::*;

/// The fragment size of these tests: IPv4's minimum, so that a few dozen traffic selectors
/// already need fragments.
const SMALL: usize = 576;
/// The largest IKE message that size allows to an IPv4 peer (IP 20, UDP 8, marker 4).
const SMALL_MESSAGE: usize = SMALL - 32;

fn small() -> Options {
    let mut o = Options::default();
    o.fragmentation = Fragmentation::On {
        max_datagram: SMALL,
    };
    o
}

fn off() -> Options {
    let mut o = Options::default();
    o.fragmentation = Fragmentation::Off;
    o
}

/// A proposes 40 + 40 traffic selectors (1,280 bytes of them); B's policy covers them all, so
/// its answer echoes them and is as large.
fn big_a() -> Config {
    let mut a = a_towards_b("correct horse");
    a.local_ts = (0..40)
        .map(|i| ipv4_prefix(Ipv4Addr::new(10, 10, i, 0), 24))
        .collect();
    a.remote_ts = (0..40)
        .map(|i| ipv4_prefix(Ipv4Addr::new(10, 20, i, 0), 24))
        .collect();
    a
}

fn all_fragments(ds: &[Vec<u8>]) -> bool {
    ds.iter()
        .all(|d| frag::is_fragment(d) && d.len() <= SMALL_MESSAGE)
}

/// IKE_SA_INIT done; returns A's IKE_AUTH datagrams (not delivered yet).
fn through_init(
    a_opts: Options,
    b_opts: Options,
    seed: u64,
) -> (IkeSa, IkeSa, Instant, Vec<Vec<u8>>, ChaCha20Rng) {
    let t0 = Instant::now();
    let mut rng = rng(seed);
    let mut a = IkeSa::initiate_with(big_a(), a_opts, t0, &mut rng);
    let mut b = IkeSa::respond_with(config_b("correct horse"), b_opts);
    for d in drain(&mut a) {
        b.handle_datagram(t0, &d, &mut rng).unwrap();
    }
    for d in drain(&mut b) {
        a.handle_datagram(t0, &d, &mut rng).unwrap();
    }
    let auth = drain(&mut a);
    (a, b, t0, auth, rng)
}

#[test]
fn a_large_ike_auth_goes_in_fragments_both_ways_and_completes() {
    let (mut a, mut b, t0, auth, mut rng) = through_init(small(), small(), 1);
    assert!(a.fragmentation_negotiated() && b.fragmentation_negotiated());
    assert!(
        auth.len() > 1,
        "IKE_AUTH request in {} datagrams",
        auth.len()
    );
    assert!(all_fragments(&auth));
    for d in &auth {
        b.handle_datagram(t0, d, &mut rng).unwrap();
    }
    let response = drain(&mut b);
    assert!(
        response.len() > 1,
        "IKE_AUTH response in {} datagrams",
        response.len()
    );
    assert!(all_fragments(&response));
    for d in &response {
        a.handle_datagram(t0, d, &mut rng).unwrap();
    }
    let (ea, eb) = (established(events(&mut a)), established(events(&mut b)));
    assert_pair(&ea, &eb);
    let tandem_ike::FirstChild::Created(child) = &ea.child else {
        panic!()
    };
    assert_eq!(child.local_ts.len(), 40, "all selectors came through");
    eprintln!(
        "IKE_AUTH: request {} fragments, response {} fragments",
        auth.len(),
        response.len()
    );
}

#[test]
fn fragments_out_of_order_and_duplicated_are_reassembled_once() {
    let (mut a, mut b, t0, auth, mut rng) = through_init(small(), small(), 2);
    let mut shuffled: Vec<&Vec<u8>> = auth.iter().rev().collect();
    shuffled.extend(auth.iter());
    for d in shuffled {
        // The copies after completion are retransmissions of an answered request.
        b.handle_datagram(t0, d, &mut rng).unwrap();
    }
    let response = drain(&mut b);
    // One response, plus one resend for the copy of fragment 1 that came after completion.
    let n = response.len() / 2;
    assert_eq!(response.len(), 2 * n);
    assert_eq!(response[..n], response[n..]);
    for d in &response[..n] {
        a.handle_datagram(t0, d, &mut rng).unwrap();
    }
    assert_pair(&established(events(&mut a)), &established(events(&mut b)));
}

#[test]
fn a_missing_fragment_is_filled_in_by_the_retransmission_and_answers_are_not_multiplied() {
    let (mut a, mut b, t0, auth, mut rng) = through_init(small(), small(), 3);
    for (i, d) in auth.iter().enumerate() {
        if i != 1 {
            b.handle_datagram(t0, d, &mut rng).unwrap();
        }
    }
    assert!(drain(&mut b).is_empty(), "nothing to answer yet");
    assert_eq!(b.state_name(), "awaiting-ike-auth");

    // A retransmits the whole set; only the missing fragment reaches B.
    let t1 = t0 + RETRANSMIT_INITIAL;
    a.handle_timeout(t1);
    let again = drain(&mut a);
    assert_eq!(again, auth, "a retransmission repeats the same fragments");
    b.handle_datagram(t1, &again[1], &mut rng).unwrap();
    let response = drain(&mut b);
    assert!(response.len() > 1);
    assert!(b.is_established());

    // The response is lost; A's next retransmission reaches B whole: B answers once.
    let t2 = t1 + RETRANSMIT_INITIAL * 2;
    a.handle_timeout(t2);
    for d in drain(&mut a) {
        b.handle_datagram(t2, &d, &mut rng).unwrap();
    }
    let resent = drain(&mut b);
    assert_eq!(resent, response, "the cached response, once");
    for d in &resent {
        a.handle_datagram(t2, d, &mut rng).unwrap();
    }
    assert_pair(&established(events(&mut a)), &established(events(&mut b)));
}

#[test]
fn an_incomplete_message_is_dropped_after_the_reassembly_timeout() {
    let (mut a, mut b, t0, auth, mut rng) = through_init(small(), small(), 4);
    let (last, head) = auth.split_last().unwrap();
    for d in head {
        b.handle_datagram(t0, d, &mut rng).unwrap();
    }
    assert!(b.poll_timeout().unwrap() <= t0 + REASSEMBLY_TIMEOUT);
    b.handle_timeout(t0 + REASSEMBLY_TIMEOUT);
    // The earlier fragments are gone: the last one alone completes nothing.
    b.handle_datagram(t0 + REASSEMBLY_TIMEOUT, last, &mut rng)
        .unwrap();
    assert!(drain(&mut b).is_empty());
    assert!(!b.is_established());
    // The whole set still does (B's half-open SA outlives the reassembly timeout).
    for d in &auth {
        b.handle_datagram(t0 + REASSEMBLY_TIMEOUT, d, &mut rng)
            .unwrap();
    }
    for d in drain(&mut b) {
        a.handle_datagram(t0 + REASSEMBLY_TIMEOUT, &d, &mut rng)
            .unwrap();
    }
    assert_pair(&established(events(&mut a)), &established(events(&mut b)));
}

#[test]
fn forged_or_misdirected_fragments_are_dropped_without_effect() {
    let (mut a, mut b, t0, auth, mut rng) = through_init(small(), small(), 5);
    let mut forged = auth[0].clone();
    let n = forged.len();
    forged[n - 20] ^= 0x40;
    assert_eq!(
        b.handle_datagram(t0, &forged, &mut rng),
        Err(Dropped::DecryptFailed)
    );
    let mut wrong_id = auth[1].clone();
    wrong_id[23] = 7; // message ID 7: not the IKE_AUTH request
    assert_eq!(
        b.handle_datagram(t0, &wrong_id, &mut rng),
        Err(Dropped::UnexpectedRequest)
    );
    let mut wrong_spi = auth[1].clone();
    wrong_spi[0] ^= 1;
    assert_eq!(
        b.handle_datagram(t0, &wrong_spi, &mut rng),
        Err(Dropped::WrongSpi)
    );
    let mut cut = auth[1].clone();
    cut.truncate(40);
    assert!(matches!(
        b.handle_datagram(t0, &cut, &mut rng),
        Err(Dropped::Malformed(_))
    ));
    assert!(drain(&mut b).is_empty() && events(&mut b).is_empty());
    for d in &auth {
        b.handle_datagram(t0, d, &mut rng).unwrap();
    }
    for d in drain(&mut b) {
        a.handle_datagram(t0, &d, &mut rng).unwrap();
    }
    assert_pair(&established(events(&mut a)), &established(events(&mut b)));
}

#[test]
fn without_the_peers_support_nothing_is_fragmented() {
    for (ao, bo) in [(small(), off()), (off(), small())] {
        let (mut a, mut b, t0, auth, mut rng) = through_init(ao, bo, 6);
        assert!(!a.fragmentation_negotiated() && !b.fragmentation_negotiated());
        assert_eq!(auth.len(), 1);
        assert!(!frag::is_fragment(&auth[0]));
        assert!(auth[0].len() > SMALL_MESSAGE);
        b.handle_datagram(t0, &auth[0], &mut rng).unwrap();
        let response = drain(&mut b);
        assert_eq!(response.len(), 1);
        a.handle_datagram(t0, &response[0], &mut rng).unwrap();
        assert_pair(&established(events(&mut a)), &established(events(&mut b)));
    }
}

#[test]
fn a_large_child_sa_rekey_goes_in_fragments_both_ways() {
    let (mut a, mut b, t0, auth, mut rng) = through_init(small(), small(), 7);
    for d in &auth {
        b.handle_datagram(t0, d, &mut rng).unwrap();
    }
    for d in drain(&mut b) {
        a.handle_datagram(t0, &d, &mut rng).unwrap();
    }
    let _ = (events(&mut a), events(&mut b));
    rekey_in_fragments(&mut a, &mut b, t0 + ms(10), &mut rng);
    rekey_in_fragments(&mut b, &mut a, t0 + ms(20), &mut rng);
}

/// `x` rekeys its Child SA: request and response both go in fragments, and the rekey completes.
fn rekey_in_fragments(x: &mut IkeSa, y: &mut IkeSa, now: Instant, rng: &mut ChaCha20Rng) {
    let old = x.children()[0].inbound_spi;
    assert!(x.rekey_child(now, old, rng));
    let request = drain(x);
    assert!(request.len() > 1 && all_fragments(&request));
    for d in &request {
        y.handle_datagram(now, d, rng).unwrap();
    }
    let response = drain(y);
    assert!(response.len() > 1 && all_fragments(&response));
    for d in &response {
        x.handle_datagram(now, d, rng).unwrap();
    }
    pump(x, y, now, rng);
    let ex = events(x);
    assert!(
        ex.iter().any(|e| matches!(e, Event::ChildRekeyed { .. })),
        "{ex:?}"
    );
    let _ = events(y);
}

fn keys() -> SaKeys {
    SaKeys {
        key: [9; 32],
        salt: [1, 2, 3, 4],
    }
}

fn header() -> Header {
    Header {
        spi_i: 1,
        spi_r: 2,
        exchange: ExchangeType::IkeAuth,
        flags: FLAG_INITIATOR,
        message_id: 1,
    }
}

/// Feeds datagrams to a reassembly slot; returns the results.
fn feed(slot: &mut Option<Reassembly>, now: Instant, ds: &[Vec<u8>]) -> Vec<Added> {
    ds.iter()
        .map(|d| {
            let f = frag::parse_fragment(d).unwrap();
            let plain = f.open(&keys()).unwrap();
            Reassembly::add(slot, now, &f, plain)
        })
        .collect()
}

#[test]
fn reassembly_refuses_too_many_fragments_and_follows_a_smaller_cut() {
    let t0 = Instant::now();
    let inner = [Payload::Nonce(vec![0x5a; 1000])];
    let mut iv = 0;
    // 1000 bytes in 8-byte pieces: 126 fragments, more than we keep.
    let tiny = frag::seal_fragments(&header(), &inner, &keys(), &mut iv, FRAGMENT_OVERHEAD + 8);
    assert!(tiny.len() > usize::from(MAX_FRAGMENTS));
    let mut slot = None;
    assert!(matches!(
        feed(&mut slot, t0, &tiny[..1])[0],
        Added::Refused(_)
    ));
    assert!(slot.is_none(), "nothing kept");

    // A first cut in 3 fragments, of which 2 arrive; then the sender re-cuts smaller (6):
    // the new set replaces the old one, and late fragments of the old cut are refused.
    let three = frag::seal_fragments(&header(), &inner, &keys(), &mut iv, 420);
    let six = frag::seal_fragments(&header(), &inner, &keys(), &mut iv, 250);
    assert_eq!((three.len(), six.len()), (3, 6));
    assert_eq!(
        feed(&mut slot, t0, &three[..2]),
        [Added::Stored, Added::Stored]
    );
    assert_eq!(feed(&mut slot, t0, &six[..1]), [Added::Stored]);
    assert!(matches!(
        feed(&mut slot, t0, &three[2..])[0],
        Added::Refused(_)
    ));
    assert_eq!(feed(&mut slot, t0, &six[..1]), [Added::Duplicate]);
    let results = feed(&mut slot, t0, &six[1..]);
    let Some(Added::Complete {
        first_payload,
        plain,
        ..
    }) = results.last()
    else {
        panic!("{results:?}");
    };
    assert_eq!(*first_payload, payload_type::NONCE);
    assert_eq!(
        tandem_ike::wire::parse_payloads(*first_payload, plain).unwrap(),
        inner
    );
    assert!(slot.is_none(), "freed once complete");

    // A whole message is never mistaken for a fragment.
    let whole = tandem_ike::wire::seal_message(&header(), &inner, &keys(), 99);
    assert!(!frag::is_fragment(&whole));
    assert!(Message::parse(&whole).is_ok());
}
