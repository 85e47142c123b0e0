//! The IKEv2 message parser on arbitrary bytes, and a real encrypted message with arbitrary
//! bytes XORed over it. Invariants: no panic; a message that parses re-encodes to bytes that
//! parse to the same value; a damaged encrypted message never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_crypto::SaKeys;
use tandem_ike::wire::{
    self, ExchangeType, FLAG_INITIATOR, Header, Message, Notify, NotifyType, Payload,
};

fn keys() -> SaKeys {
    SaKeys {
        key: [0x24; 32],
        salt: [1, 2, 3, 4],
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(m) = Message::parse(rest) {
            let again = Message::parse(&m.to_bytes()).expect("a parsed message re-encodes");
            assert_eq!(again, m);
            let _ = wire::open_sk(rest, &m, &keys());
        }
        return;
    }
    let header = Header {
        spi_i: 0x0102_0304_0506_0708,
        spi_r: 0x1112_1314_1516_1718,
        exchange: ExchangeType::Informational,
        flags: FLAG_INITIATOR,
        message_id: 3,
    };
    let inner = [
        Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, Vec::new())),
        Payload::Nonce(rest.iter().take(32).copied().collect()),
    ];
    let mut msg = wire::seal_message(&header, &inner, &keys(), 9);
    let mut changed = false;
    for (i, x) in rest.iter().enumerate().skip(32) {
        let n = msg.len();
        msg[(i - 32) % n] ^= x;
        changed |= *x != 0;
    }
    if let Ok(m) = Message::parse(&msg) {
        let opened = wire::open_sk(&msg, &m, &keys());
        if changed {
            // XORs can cancel out; only a changed message must fail.
            if msg != wire::seal_message(&header, &inner, &keys(), 9) {
                assert!(opened.is_err());
            }
        } else {
            assert_eq!(opened.expect("unmodified message opens"), inner.to_vec());
        }
    }
});
