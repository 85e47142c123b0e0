//! Zero allocations per packet: a counting `#[global_allocator]` watches `seal` and `open` in
//! place, in both sequence-number modes and with a small and the largest replay window, over a
//! steady-state run that also slides the window and drops replays.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tandem_crypto::esp::{HEADROOM, TAILROOM};
use tandem_crypto::{
    InboundParams, InboundSa, OutboundSa, PeerIv, SaKeys, SeqMode, Spi, WindowSize,
};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the test's own thread: the harness's threads allocate at times of their own
    /// (seen under load: "4 allocations"), and they are not the code under test.
    static COUNTED_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTING.load(Ordering::Relaxed) && COUNTED_THREAD.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn seal_and_open_allocate_nothing_in_either_mode() {
    let keys = SaKeys {
        key: [9; 32],
        salt: [1, 2, 3, 4],
    };
    let spi = Spi::new(0x1234).unwrap();
    COUNTED_THREAD.with(|c| c.set(true));
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
        ALLOCS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
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
        COUNTING.store(false, Ordering::Relaxed);
        assert_eq!(
            ALLOCS.load(Ordering::Relaxed),
            0,
            "allocations during 10 000 packets ({mode:?}, window {})",
            window.packets()
        );
    }
}
