//! COOKIEs under half-open load (RFC 7296 §2.6), sans-IO: the responder's admission rule and
//! stateless cookies ([`CookieJar`]), the initiator's retry with the cookie, and a flood of
//! 10,000 IKE_SA_INIT requests from as many spoofed sources against a responder table that
//! follows the rule: its state stays bounded and a legitimate initiator still gets through.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stderr)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use tandem_ike::cookie::{COOKIE_LEN, Refused, SECRET_LIFETIME};
use tandem_ike::sa::HALF_OPEN_TIMEOUT;
use tandem_ike::wire::{Message, Payload};
use tandem_ike::{Admission, AdmissionPolicy, CookieJar, Event, IkeSa, NotifyType};

mod common;
use common::*;

const LEGIT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fn always_cookies() -> AdmissionPolicy {
    AdmissionPolicy {
        threshold: 0,
        ..AdmissionPolicy::default()
    }
}

fn cookie_of(reply: &[u8]) -> Vec<u8> {
    let m = Message::parse(reply).unwrap();
    assert!(m.header.is_response());
    assert_eq!(
        m.header.spi_r, 0,
        "a COOKIE answer commits to no responder SPI"
    );
    m.notify(NotifyType::COOKIE).unwrap().data.clone()
}

fn nonce_of(request: &[u8]) -> Vec<u8> {
    let m = Message::parse(request).unwrap();
    m.payloads
        .iter()
        .find_map(|p| match p {
            Payload::Nonce(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_responder_in_cookie_mode_keeps_nothing_and_admits_the_retry_that_echoes_the_cookie() {
    let t0 = Instant::now();
    let mut rng = rng(1);
    let mut jar = CookieJar::new(always_cookies(), t0, &mut rng);
    let mut a = IkeSa::initiate(a_towards_b("correct horse"), t0, &mut rng);
    let first = drain(&mut a).pop().unwrap();

    let Admission::Cookie(reply) = jar.admit(&first, LEGIT, 0) else {
        panic!("no cookie demanded");
    };
    assert_eq!(cookie_of(&reply).len(), COOKIE_LEN);
    assert_eq!(jar.cookies_issued(), 1);

    // The initiator retries at once with the cookie first, the same SPIi and the same Ni
    // (the cookie is bound to both).
    a.handle_datagram(t0, &reply, &mut rng).unwrap();
    let retry = drain(&mut a).pop().unwrap();
    let m = Message::parse(&retry).unwrap();
    assert!(
        matches!(&m.payloads[0], Payload::Notify(n) if n.ty == NotifyType::COOKIE),
        "COOKIE is the first payload (RFC 7296 §2.6): {:?}",
        m.payloads[0]
    );
    assert_eq!(&retry[..8], &first[..8], "same SPIi");
    assert_eq!(nonce_of(&retry), nonce_of(&first), "same Ni");

    // The same request from another address does not pass with this cookie.
    let other: IpAddr = "203.0.113.9".parse().unwrap();
    assert!(matches!(jar.admit(&retry, other, 0), Admission::Cookie(_)));
    // From the right address it does; the exchange then completes as usual (the AUTH signs
    // the request that carried the cookie).
    assert_eq!(jar.admit(&retry, LEGIT, 0), Admission::Admit);
    let mut b = IkeSa::respond(config_b("correct horse"));
    b.handle_datagram(t0, &retry, &mut rng).unwrap();
    pump(&mut a, &mut b, t0, &mut rng);
    assert_pair(&established(events(&mut a)), &established(events(&mut b)));
}

#[test]
fn a_cookie_is_bound_to_nonce_address_and_spi_and_lives_through_one_rotation_only() {
    let t0 = Instant::now();
    let mut rng = rng(2);
    let mut jar = CookieJar::new(always_cookies(), t0, &mut rng);
    let ni = [7u8; 32];
    let c = jar.cookie(&ni, LEGIT, 0x1122);
    assert!(jar.verify(&c, &ni, LEGIT, 0x1122));
    assert!(!jar.verify(&c, &[8u8; 32], LEGIT, 0x1122), "other nonce");
    assert!(
        !jar.verify(&c, &ni, "192.0.2.2".parse().unwrap(), 0x1122),
        "other address"
    );
    assert!(!jar.verify(&c, &ni, LEGIT, 0x1123), "other SPI");
    assert!(!jar.verify(&c[..COOKIE_LEN - 1], &ni, LEGIT, 0x1122), "cut");
    assert!(!jar.verify(&[], &ni, LEGIT, 0x1122), "empty");
    let mut flipped = c;
    flipped[5] ^= 1;
    assert!(!jar.verify(&flipped, &ni, LEGIT, 0x1122), "one bit off");

    // Not yet time to rotate: nothing changes.
    jar.handle_timeout(t0 + SECRET_LIFETIME / 2, &mut rng);
    assert_eq!(jar.cookie(&ni, LEGIT, 0x1122), c);
    // One rotation: new cookies differ, the old one still verifies (previous secret).
    jar.handle_timeout(jar.poll_timeout(), &mut rng);
    let c2 = jar.cookie(&ni, LEGIT, 0x1122);
    assert_ne!(c2, c);
    assert_ne!(c2[0], c[0], "the version byte names the new secret");
    assert!(jar.verify(&c, &ni, LEGIT, 0x1122));
    // A second rotation retires the first secret.
    jar.handle_timeout(jar.poll_timeout(), &mut rng);
    assert!(!jar.verify(&c, &ni, LEGIT, 0x1122));
    assert!(jar.verify(&c2, &ni, LEGIT, 0x1122));
}

#[test]
fn below_the_threshold_every_init_is_admitted_and_junk_is_refused_without_a_cookie() {
    let t0 = Instant::now();
    let mut rng = rng(3);
    let policy = AdmissionPolicy {
        threshold: 2,
        max_half_open: 4,
    };
    let mut jar = CookieJar::new(policy, t0, &mut rng);
    let init = drain(&mut IkeSa::initiate(a_towards_b("x"), t0, &mut rng))
        .pop()
        .unwrap();
    assert_eq!(jar.admit(&init, LEGIT, 0), Admission::Admit);
    assert_eq!(jar.admit(&init, LEGIT, 1), Admission::Admit);
    assert!(matches!(jar.admit(&init, LEGIT, 2), Admission::Cookie(_)));
    assert_eq!(jar.admit(&init, LEGIT, 4), Admission::Drop(Refused::Full));
    for junk in [&b""[..], &[0u8; 27], &init[..init.len() - 1]] {
        assert_eq!(jar.admit(junk, LEGIT, 3), Admission::Drop(Refused::NotInit));
    }
    // A response, or a request that is not IKE_SA_INIT, is not for the gate.
    let mut response = init.clone();
    response[19] |= 0x20;
    assert_eq!(
        jar.admit(&response, LEGIT, 0),
        Admission::Drop(Refused::NotInit)
    );
    assert_eq!(jar.cookies_issued(), 1);
}

/// A responder table as a driver keeps it: one `IkeSa` per (source, SPIi), admitted by the
/// jar, half-open ones counted, expired ones removed.
struct Table {
    jar: CookieJar,
    sas: HashMap<(IpAddr, u64), IkeSa>,
    /// The largest number of IKE SAs the table ever held.
    peak: usize,
    cookies_sent: usize,
    dropped_full: usize,
}

impl Table {
    fn half_open(&self) -> usize {
        self.sas.values().filter(|s| !s.is_established()).count()
    }

    /// One datagram from `from`; returns what the table sends back.
    fn receive(
        &mut self,
        now: Instant,
        from: IpAddr,
        d: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> Vec<Vec<u8>> {
        let spi_i = u64::from_be_bytes(d[..8].try_into().unwrap());
        if let Some(sa) = self.sas.get_mut(&(from, spi_i)) {
            let _ = sa.handle_datagram(now, d, rng);
            return drain(sa);
        }
        let half_open = self.half_open();
        match self.jar.admit(d, from, half_open) {
            Admission::Admit => {
                let mut sa = IkeSa::respond(config_b("correct horse"));
                let _ = sa.handle_datagram(now, d, rng);
                let out = drain(&mut sa);
                self.sas.insert((from, spi_i), sa);
                self.peak = self.peak.max(self.sas.len());
                out
            }
            Admission::Cookie(reply) => {
                self.cookies_sent += 1;
                vec![reply]
            }
            Admission::Drop(Refused::Full) => {
                self.dropped_full += 1;
                Vec::new()
            }
            Admission::Drop(Refused::NotInit) => Vec::new(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for sa in self.sas.values_mut() {
            sa.handle_timeout(now);
        }
        self.sas.retain(|_, sa| {
            let failed =
                std::iter::from_fn(|| sa.poll_event()).any(|e| matches!(e, Event::Failed(_)));
            !failed
        });
    }
}

#[test]
fn ten_thousand_spoofed_inits_leave_bounded_state_and_a_legitimate_initiator_still_completes() {
    let t0 = Instant::now();
    let mut rng = rng(4);
    let policy = AdmissionPolicy::default();
    let mut table = Table {
        jar: CookieJar::new(policy, t0, &mut rng),
        sas: HashMap::new(),
        peak: 0,
        cookies_sent: 0,
        dropped_full: 0,
    };
    // The flood: one real IKE_SA_INIT, replayed with a new SPIi from 10,000 spoofed sources
    // that never see what the responder sends back.
    let template = drain(&mut IkeSa::initiate(a_towards_b("x"), t0, &mut rng))
        .pop()
        .unwrap();
    const FLOOD: u32 = 10_000;
    for i in 0..FLOOD {
        let mut d = template.clone();
        d[..8].copy_from_slice(&(u64::from(i) + 1).to_be_bytes());
        let from = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let _lost = table.receive(t0 + ms(u64::from(i) / 10), from, &d, &mut rng);
    }
    let now = t0 + ms(u64::from(FLOOD) / 10);
    eprintln!(
        "after {FLOOD} spoofed IKE_SA_INITs: {} IKE SAs held (peak {}), {} COOKIE answers",
        table.sas.len(),
        table.peak,
        table.cookies_sent
    );
    assert_eq!(
        table.sas.len(),
        policy.threshold,
        "state bounded by the threshold"
    );
    assert_eq!(table.cookies_sent, FLOOD as usize - policy.threshold);

    // A legitimate initiator during the flood: asked for a cookie, retries, completes.
    let mut a = IkeSa::initiate(a_towards_b("correct horse"), now, &mut rng);
    let mut to_b = drain(&mut a);
    let mut rounds = 0;
    while !to_b.is_empty() {
        rounds += 1;
        let mut to_a = Vec::new();
        for d in &to_b {
            to_a.extend(table.receive(now, LEGIT, d, &mut rng));
        }
        to_b.clear();
        for d in &to_a {
            let _ = a.handle_datagram(now, d, &mut rng);
        }
        to_b = drain(&mut a);
    }
    assert!(a.is_established(), "the legitimate initiator completed");
    assert_eq!(rounds, 3, "cookie, IKE_SA_INIT, IKE_AUTH");
    assert_eq!(table.sas.len(), policy.threshold + 1);

    // The spoofed half-open SAs expire; only the real one is left.
    table.handle_timeout(now + HALF_OPEN_TIMEOUT);
    assert_eq!(table.sas.len(), 1);
    assert_eq!(table.half_open(), 0);
}

#[test]
fn initiators_that_echo_cookies_cannot_grow_the_table_past_its_cap() {
    let t0 = Instant::now();
    let mut rng = rng(5);
    let policy = AdmissionPolicy {
        threshold: 0,
        max_half_open: 50,
    };
    let mut table = Table {
        jar: CookieJar::new(policy, t0, &mut rng),
        sas: HashMap::new(),
        peak: 0,
        cookies_sent: 0,
        dropped_full: 0,
    };
    // 200 initiators at real addresses: each sees its cookie and retries with it.
    for i in 0..200u32 {
        let from = IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i));
        let mut a = IkeSa::initiate(a_towards_b("x"), t0, &mut rng);
        let init = drain(&mut a).pop().unwrap();
        let reply = table.receive(t0, from, &init, &mut rng);
        let [reply] = reply.as_slice() else {
            assert!(reply.is_empty());
            continue; // full: not even a cookie
        };
        a.handle_datagram(t0, reply, &mut rng).unwrap();
        let retry = drain(&mut a).pop().unwrap();
        let _ = table.receive(t0, from, &retry, &mut rng);
    }
    assert_eq!(table.peak, 50);
    assert_eq!(table.half_open(), 50);
    assert_eq!(table.dropped_full, 150);
    assert_eq!(table.cookies_sent, 50);
}
