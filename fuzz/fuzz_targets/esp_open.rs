//! ESP open on arbitrary datagrams, and on real datagrams with arbitrary bit flips.
//! Invariants: no panic; an unmodified datagram opens to its payload; a modified one never does
//! (except when only the trailing bytes outside it changed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_crypto::esp::{HEADROOM, TAILROOM};
use tandem_crypto::{InboundSa, OutboundSa, SaKeys, Spi};

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
    let spi = Spi::new(0x100).expect("valid SPI");
    let mut inb = InboundSa::new(spi, keys());
    if mode & 1 == 0 {
        // Raw bytes as a datagram, at an offset inside a larger buffer.
        let mut buf = vec![0u8; rest.len() + 8];
        buf[3..3 + rest.len()].copy_from_slice(rest);
        let _ = inb.open(&mut buf, 3..3 + rest.len());
        return;
    }
    // A real datagram carrying the first part of `rest` as payload, then the rest XORed over it.
    let split = usize::from(mode >> 1).min(rest.len());
    let (payload, mask) = rest.split_at(split);
    let mut out = OutboundSa::new(spi, keys());
    let mut buf = vec![0u8; HEADROOM + payload.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
    let sealed = out
        .seal(&mut buf, HEADROOM..HEADROOM + payload.len(), 4)
        .expect("room for the packet");
    let d = sealed.datagram.clone();
    let mut changed = false;
    for (b, m) in buf[d.clone()].iter_mut().zip(mask) {
        *b ^= m;
        changed |= *m != 0;
    }
    match inb.open(&mut buf, d) {
        Ok(o) => {
            assert!(!changed, "a modified datagram opened");
            assert_eq!(&buf[o.payload], payload);
        }
        Err(e) => assert!(changed, "an unmodified datagram failed: {e}"),
    }
});
