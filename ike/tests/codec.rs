//! The codec: build + parse round-trips for arbitrary messages (plain and encrypted), parsing
//! never panics on junk or on damaged real messages, and each malformation gets its error.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tandem_crypto::SaKeys;
use tandem_ike::wire::{
    self, AddrRange, Attribute, Delete, ExchangeType, Header, Identity, Message, Notify,
    NotifyType, ParseError, Payload, Proposal, ProtocolId, TrafficSelector, Transform,
};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn exchange() -> impl Strategy<Value = ExchangeType> {
    prop_oneof![
        Just(ExchangeType::IkeSaInit),
        Just(ExchangeType::IkeAuth),
        Just(ExchangeType::CreateChildSa),
        Just(ExchangeType::Informational),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (1u64.., any::<u64>(), exchange(), any::<u8>(), any::<u32>()).prop_map(
        |(spi_i, spi_r, exchange, flags, message_id)| Header {
            spi_i,
            spi_r,
            exchange,
            flags,
            message_id,
        },
    )
}

fn attribute() -> impl Strategy<Value = Attribute> {
    prop_oneof![
        (0u16..0x8000, any::<u16>()).prop_map(|(ty, value)| Attribute::Tv { ty, value }),
        (0u16..0x8000, bytes(8)).prop_map(|(ty, value)| Attribute::Tlv { ty, value }),
    ]
}

fn proposal() -> impl Strategy<Value = Proposal> {
    let protocol = prop_oneof![
        Just(ProtocolId::Ike),
        Just(ProtocolId::Ah),
        Just(ProtocolId::Esp)
    ];
    let transform = (
        1u8..6,
        any::<u16>(),
        prop::collection::vec(attribute(), 0..3),
    )
        .prop_map(|(ty, id, attributes)| Transform { ty, id, attributes });
    (
        any::<u8>(),
        protocol,
        bytes(9),
        prop::collection::vec(transform, 1..6),
    )
        .prop_map(|(number, protocol, spi, transforms)| Proposal {
            number,
            protocol,
            spi,
            transforms,
        })
}

fn identity() -> impl Strategy<Value = Identity> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| Identity::Ipv4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| Identity::Ipv6(Ipv6Addr::from(a))),
        "[a-z0-9.-]{1,40}".prop_map(Identity::Fqdn),
        (prop_oneof![Just(3u8), Just(9u8), Just(11u8)], bytes(20))
            .prop_map(|(ty, data)| Identity::Other { ty, data }),
    ]
}

fn selector() -> impl Strategy<Value = TrafficSelector> {
    let addrs = prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(a, b)| AddrRange::V4(a.into(), b.into())),
        (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(a, b)| AddrRange::V6(a.into(), b.into())),
    ];
    (any::<u8>(), any::<u16>(), any::<u16>(), addrs).prop_map(
        |(ip_proto, start_port, end_port, addrs)| TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            addrs,
        },
    )
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        prop::collection::vec(proposal(), 1..4).prop_map(Payload::Sa),
        (any::<u16>(), bytes(100)).prop_map(|(group, data)| Payload::Ke { group, data }),
        identity().prop_map(Payload::IdI),
        identity().prop_map(Payload::IdR),
        (any::<u8>(), bytes(64)).prop_map(|(method, data)| Payload::Auth { method, data }),
        bytes(64).prop_map(Payload::Nonce),
        (any::<u8>(), bytes(8), any::<u16>(), bytes(20)).prop_map(|(protocol, spi, ty, data)| {
            Payload::Notify(Notify {
                protocol,
                spi,
                ty: NotifyType(ty),
                data,
            })
        }),
        prop::collection::vec(any::<[u8; 4]>(), 0..5).prop_map(|s| Payload::Delete(Delete {
            protocol: ProtocolId::Esp,
            spis: s.into_iter().map(|x| x.to_vec()).collect()
        })),
        Just(Payload::Delete(Delete {
            protocol: ProtocolId::Ike,
            spis: vec![]
        })),
        bytes(30).prop_map(Payload::Vendor),
        prop::collection::vec(selector(), 1..4).prop_map(Payload::TsI),
        prop::collection::vec(selector(), 1..4).prop_map(Payload::TsR),
        // Unassigned types without the critical bit are kept as they are.
        (
            prop_oneof![Just(37u8), Just(38u8), Just(47u8), Just(48u8), Just(200u8)],
            bytes(30)
        )
            .prop_map(|(ty, body)| Payload::Unknown { ty, body }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (header(), prop::collection::vec(payload(), 0..6))
        .prop_map(|(header, payloads)| Message { header, payloads })
}

fn keys() -> SaKeys {
    SaKeys {
        key: [0x42; 32],
        salt: [1, 2, 3, 4],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn built_messages_parse_back_to_the_same_value(m in message()) {
        let b = m.to_bytes();
        prop_assert_eq!(Message::parse(&b).unwrap(), m);
    }

    #[test]
    fn sealed_messages_open_back_to_the_same_payloads(h in header(), inner in prop::collection::vec(payload(), 0..5), iv in any::<u64>()) {
        let b = wire::seal_message(&h, &inner, &keys(), iv);
        let m = Message::parse(&b).unwrap();
        prop_assert_eq!(m.header, h);
        prop_assert_eq!(wire::open_sk(&b, &m, &keys()).unwrap(), inner.clone());
        // Every byte is covered: the header and SK header are AAD, the rest is IV, ciphertext
        // and ICV. So a flipped bit anywhere fails to parse or fails to open.
        for i in (0..b.len()).step_by(7) {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            if let Ok(m2) = Message::parse(&bad) {
                prop_assert!(wire::open_sk(&bad, &m2, &keys()).is_err(), "bit flip at {} still opened", i);
            }
        }
    }

    #[test]
    fn parsing_junk_never_panics(b in bytes(400)) {
        let _ = Message::parse(&b);
    }

    #[test]
    fn parsing_damaged_real_messages_never_panics(m in message(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
        let mut b = m.to_bytes();
        for (at, x) in flips {
            let n = b.len();
            b[at % n] ^= x;
        }
        let _ = Message::parse(&b);
        // With the length field fixed up, parsing goes deeper into the payloads.
        let n = b.len();
        let cut = (cut % (n + 1)).max(wire::HEADER_LEN.min(n));
        let mut c = b[..cut].to_vec();
        if c.len() >= wire::HEADER_LEN {
            let l = c.len() as u32;
            c[24..28].copy_from_slice(&l.to_be_bytes());
        }
        let _ = Message::parse(&c);
    }
}

fn sample() -> Message {
    Message {
        header: Header {
            spi_i: 1,
            spi_r: 0,
            exchange: ExchangeType::IkeSaInit,
            flags: wire::FLAG_INITIATOR,
            message_id: 0,
        },
        payloads: vec![
            Payload::Nonce(vec![9; 32]),
            Payload::Vendor(b"tandem".to_vec()),
        ],
    }
}

#[test]
fn each_malformation_gets_its_own_error() {
    let good = sample().to_bytes();
    assert_eq!(
        Message::parse(&good[..27]),
        Err(ParseError::Truncated("IKE header"))
    );
    let mut v1 = good.clone();
    v1[17] = 0x10;
    assert_eq!(
        Message::parse(&v1),
        Err(ParseError::UnsupportedVersion(0x10))
    );
    let mut ex = good.clone();
    ex[18] = 99;
    assert_eq!(Message::parse(&ex), Err(ParseError::UnknownExchange(99)));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        Message::parse(&long),
        Err(ParseError::LengthMismatch {
            header: good.len() as u32,
            actual: good.len() + 1
        })
    );
    let mut zero_spi = good.clone();
    zero_spi[..8].fill(0);
    assert_eq!(
        Message::parse(&zero_spi),
        Err(ParseError::Invalid("initiator SPI zero"))
    );
    // The first payload claims to be longer than what is left.
    let mut plen = good.clone();
    plen[30..32].copy_from_slice(&1000u16.to_be_bytes());
    assert_eq!(Message::parse(&plen), Err(ParseError::BadLength("payload")));
    // A payload length below the generic header.
    let mut small = good.clone();
    small[30..32].copy_from_slice(&3u16.to_be_bytes());
    assert_eq!(
        Message::parse(&small),
        Err(ParseError::BadLength("payload"))
    );
    // The last payload says another follows, but the message ends.
    let mut more = good.clone();
    let last = 28 + 4 + 32;
    more[last] = wire::payload_type::NONCE;
    assert_eq!(
        Message::parse(&more),
        Err(ParseError::Truncated("payload header"))
    );
    // An unknown payload with the critical bit (RFC 7296 §2.5).
    let mut crit = good.clone();
    crit[28] = 200; // the nonce says the next is type 200
    crit[last + 1] = 0x80;
    assert_eq!(
        Message::parse(&crit),
        Err(ParseError::UnsupportedCriticalPayload(200))
    );
    // The same without the critical bit is skipped as Unknown.
    crit[last + 1] = 0;
    assert!(matches!(
        Message::parse(&crit).unwrap().payloads[1],
        Payload::Unknown { ty: 200, .. }
    ));
}

#[test]
fn an_encrypted_payload_must_be_the_last_one() {
    let h = sample().header;
    let sealed = wire::seal_message(&h, &[Payload::Nonce(vec![1; 16])], &keys(), 0);
    let m = Message::parse(&sealed).unwrap();
    // Re-encode it with a payload after the SK one.
    let mut bad = m.clone();
    bad.payloads.push(Payload::Nonce(vec![2; 16]));
    let b = bad.to_bytes();
    assert_eq!(Message::parse(&b), Err(ParseError::MisplacedEncrypted));
    // A wrong key does not open it.
    let other = SaKeys {
        key: [0x43; 32],
        salt: [1, 2, 3, 4],
    };
    assert_eq!(
        wire::open_sk(&sealed, &m, &other),
        Err(ParseError::DecryptFailed)
    );
}

#[test]
fn notify_types_print_their_registry_names() {
    assert_eq!(
        NotifyType::NO_PROPOSAL_CHOSEN.to_string(),
        "NO_PROPOSAL_CHOSEN"
    );
    assert_eq!(NotifyType(40000).to_string(), "NOTIFY_40000");
    assert!(NotifyType::AUTHENTICATION_FAILED.is_error());
    assert!(!NotifyType::COOKIE.is_error());
}
