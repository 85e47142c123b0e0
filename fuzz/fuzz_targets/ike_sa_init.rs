//! A responder's IKE_SA_INIT processing: the COOKIE gate (`CookieJar::admit`, under load and
//! not) and a fresh `IkeSa::respond` taking the datagram. Modes: raw bytes; a real IKE_SA_INIT
//! request with bytes XORed over it; a payload chain of the input's making in a valid header.
//! Invariants: no panic; everything the responder or the gate sends parses; a COOKIE answer
//! echoed in the request is accepted, and only from the same address.
#![no_main]

#[path = "ike_common.rs"]
mod ike_common;

use std::net::IpAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_ike::wire::{
    ExchangeType, FLAG_INITIATOR, Header, Message, Notify, NotifyType, Payload,
};
use tandem_ike::{Admission, AdmissionPolicy, CookieJar, IkeSa};

fn respond(d: &[u8]) {
    let mut rng = ike_common::rng();
    let mut sa = IkeSa::respond(ike_common::responder_config());
    let _ = sa.handle_datagram(Instant::now(), d, &mut rng);
    while let Some(out) = sa.poll_transmit() {
        Message::parse(&out).expect("an IKE_SA_INIT answer parses");
    }
    while sa.poll_event().is_some() {}
}

fn gate(d: &[u8], under_load: bool) {
    let mut rng = ike_common::rng();
    let policy = AdmissionPolicy {
        threshold: if under_load { 0 } else { 1 },
        max_half_open: 8,
    };
    let mut jar = CookieJar::new(policy, Instant::now(), &mut rng);
    let from: IpAddr = "192.0.2.1".parse().expect("an address");
    let Admission::Cookie(reply) = jar.admit(d, from, 0) else {
        return;
    };
    let m = Message::parse(&reply).expect("a COOKIE answer parses");
    let cookie = m
        .notify(NotifyType::COOKIE)
        .expect("it carries the cookie")
        .data
        .clone();
    // The request again, the cookie first (what an initiator does): admitted from the same
    // address, not from another.
    let Ok(mut req) = Message::parse(d) else {
        return;
    };
    req.payloads
        .insert(0, Payload::Notify(Notify::new(NotifyType::COOKIE, cookie)));
    let retry = req.to_bytes();
    if retry.len() <= tandem_ike::wire::MAX_MESSAGE_LEN {
        assert_eq!(jar.admit(&retry, from, 0), Admission::Admit);
        let other: IpAddr = "192.0.2.99".parse().expect("an address");
        assert_ne!(jar.admit(&retry, other, 0), Admission::Admit);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let d = match mode % 3 {
        0 => rest.to_vec(),
        1 => {
            let mut d = ike_common::init_request();
            let n = d.len();
            for (i, x) in rest.iter().enumerate() {
                d[i % n] ^= x;
            }
            d
        }
        _ => {
            let Some((&first, chain)) = rest.split_first() else {
                return;
            };
            let Ok(payloads) = tandem_ike::wire::parse_payloads(first, chain) else {
                return;
            };
            Message {
                header: Header {
                    spi_i: ike_common::SPI_I,
                    spi_r: 0,
                    exchange: ExchangeType::IkeSaInit,
                    flags: FLAG_INITIATOR,
                    message_id: 0,
                },
                payloads,
            }
            .to_bytes()
        }
    };
    gate(&d, mode & 0x80 != 0);
    respond(&d);
});
