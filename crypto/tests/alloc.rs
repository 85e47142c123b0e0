//! Zero allocations per packet: a counting `#[global_allocator]` (tandem-testkit's, which counts
//! the test's own thread only) watches `seal` and `open` in place, in both sequence-number modes
//! and with a small and the largest replay window, over a steady-state run that also slides the
//! window and drops replays.
#![allow(clippy::unwrap_used)]

use tandem_crypto::esp::{HEADROOM, TAILROOM};
use tandem_crypto::{
    InboundParams, InboundSa, OutboundSa, PeerIv, SaKeys, SeqMode, Spi, WindowSize,
};
use tandem_testkit::{CountingAlloc, Region};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn seal_and_open_allocate_nothing_in_either_mode() {
    let keys = SaKeys {
        key: [9; 32],
        salt: [1, 2, 3, 4],
    };
    let spi = Spi::new(0x1234).unwrap();
    let probe = Region::new();
    std::hint::black_box(vec![0u8; 8]);
    assert_eq!(probe.change().allocations, 1, "the counter counts");
    for (mode, window, peer_iv) in [
        (SeqMode::Esn, WindowSize::MAX, PeerIv::Sequence),
        (SeqMode::Bits32, WindowSize::new(64).unwrap(), PeerIv::Any),
        (SeqMode::Bits32, WindowSize::MAX, PeerIv::Any),
    ] {
        let mut out = OutboundSa::with_mode(spi, keys.clone(), mode);
        let params = InboundParams {
            seq: mode,
            window,
            peer_iv,
        };
        let mut inb = InboundSa::with_params(spi, keys.clone(), params);
        let mut buf = vec![0u8; HEADROOM + 1420 + TAILROOM];
        let mut replay = vec![0u8; buf.len()];
        let region = Region::new();
        for i in 0..10_000usize {
            let len = 1 + i % 1420;
            let s = out.seal(&mut buf, HEADROOM..HEADROOM + len, 4).unwrap();
            if i % 100 == 0 {
                // Jump the counter: the window slides far and clears its ring.
                out.set_next_seq_for_testing(s.seq + 5_000);
            }
            replay[..s.datagram.len()].copy_from_slice(&buf[s.datagram.clone()]);
            let n = s.datagram.len();
            assert!(inb.open(&mut buf, s.datagram).is_ok());
            assert!(inb.open(&mut replay, 0..n).is_err());
        }
        let stats = region.change();
        assert_eq!(
            (stats.allocations, stats.reallocations),
            (0, 0),
            "allocations during 10 000 packets ({mode:?}, window {})",
            window.packets()
        );
    }
}
