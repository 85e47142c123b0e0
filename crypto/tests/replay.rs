//! The anti-replay window: a vector table of the edges, a property test against a `BTreeSet`
//! model, ESN inference (RFC 4303 Appendix A) and the window as `open` uses it.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use tandem_crypto::esp::{HEADROOM, REJECT_AFTER_PACKETS, TAILROOM, infer_seq};
use tandem_crypto::replay::{MIN_WINDOW, RING_BITS, WINDOW};
use tandem_crypto::{OpenError, ReplayError, ReplayWindow, WindowSize};

#[derive(Debug, Clone, Copy)]
enum Op {
    /// commit; expect the result
    Commit(u64, Result<(), ReplayError>),
    /// check only; expect the result
    Check(u64, Result<(), ReplayError>),
}
use Op::*;

const OK: Result<(), ReplayError> = Ok(());
const DUP: Result<(), ReplayError> = Err(ReplayError::Duplicate);
const OLD: Result<(), ReplayError> = Err(ReplayError::TooOld);
const ZERO: Result<(), ReplayError> = Err(ReplayError::Zero);

fn run(name: &str, ops: &[Op]) {
    run_sized(name, WindowSize::MAX, ops);
}

fn run_sized(name: &str, size: WindowSize, ops: &[Op]) {
    let mut w = ReplayWindow::with_size(size);
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Commit(s, want) => assert_eq!(w.commit(s), want, "{name}: op {i} commit({s})"),
            Check(s, want) => assert_eq!(w.check(s), want, "{name}: op {i} check({s})"),
        }
    }
}

#[test]
fn the_window_is_8192_bits_and_accepts_8128_packets_behind_the_top() {
    assert_eq!(RING_BITS, 8192);
    assert_eq!(WINDOW, 8128);
}

#[test]
fn window_sizes_run_from_32_to_8128_packets() {
    assert_eq!(MIN_WINDOW, 32);
    assert_eq!(WindowSize::new(31), None);
    assert_eq!(WindowSize::new(32).unwrap().packets(), 32);
    assert_eq!(WindowSize::new(1024).unwrap().packets(), 1024);
    assert_eq!(WindowSize::new(8128), Some(WindowSize::MAX));
    assert_eq!(WindowSize::new(8129), None);
    assert_eq!(WindowSize::new(0), None);
    assert_eq!(WindowSize::default(), WindowSize::MAX);
    assert_eq!(ReplayWindow::new().size(), WindowSize::MAX);
}

#[test]
fn a_smaller_window_refuses_at_its_own_edge() {
    for n in [32u64, 64, 1024, 2048, 8127] {
        let size = WindowSize::new(n).unwrap();
        run_sized(
            &format!("window {n}, edge - 1, edge, + 1"),
            size,
            &[
                Commit(10_000, OK),
                Check(10_000 - n, OLD),
                Check(10_000 - n + 1, OK),
                Commit(10_000 - n + 1, OK),
                Commit(10_000 - n + 1, DUP),
                Commit(10_001, OK),
                Check(10_000 - n + 1, OLD),
                Check(10_001 - n + 1, OK),
            ],
        );
        run_sized(
            &format!("window {n}, a slide by less than the window keeps the bits"),
            size,
            &[
                Commit(500, OK),
                Commit(499, OK),
                Commit(498 + n, OK),
                Check(499, DUP),
                Check(500, DUP),
                Check(501, OK),
                Commit(499 + n, OK),
                Check(499, OLD),
                Check(500, DUP),
            ],
        );
    }
}

#[test]
fn replay_window_vector_table() {
    let w = WINDOW;
    let table: &[(&str, Vec<Op>)] = &[
        (
            "zero is never valid",
            vec![
                Check(0, ZERO),
                Commit(0, ZERO),
                Commit(1, OK),
                Check(0, ZERO),
            ],
        ),
        ("in order", (1..=300).map(|s| Commit(s, OK)).collect()),
        (
            "duplicates",
            vec![
                Commit(1, OK),
                Commit(1, DUP),
                Commit(2, OK),
                Check(1, DUP),
                Check(2, DUP),
                Commit(2, DUP),
            ],
        ),
        (
            "out of order within the window",
            vec![
                Commit(10, OK),
                Commit(5, OK),
                Commit(7, OK),
                Commit(5, DUP),
                Commit(6, OK),
                Commit(11, OK),
                Commit(1, OK),
                Commit(10, DUP),
            ],
        ),
        (
            "window edge - 1, edge, + 1",
            vec![
                Commit(10_000, OK),
                Check(10_000 - w, OLD),
                Check(10_000 - w + 1, OK),
                Check(10_000 - w + 2, OK),
                Commit(10_000 - w + 1, OK),
                Commit(10_000 - w + 1, DUP),
                Commit(10_001, OK),
                Check(10_001 - w, OLD),
                Check(10_000 - w + 1, OLD),
            ],
        ),
        (
            "the first packet may come after a gap",
            vec![
                Commit(8_000, OK),
                Commit(1, OK),
                Commit(2, OK),
                Check(8_000, DUP),
            ],
        ),
        (
            "far jump forgets the old window",
            vec![
                Commit(1, OK),
                Commit(2, OK),
                Commit(1_000_000, OK),
                Check(1, OLD),
                Check(2, OLD),
                Check(1_000_000 - w, OLD),
                Check(1_000_000 - w + 1, OK),
                Check(1_000_000 - 1, OK),
                Check(1_000_000, DUP),
            ],
        ),
        (
            "jump by exactly one ring reuses a word that must be cleared",
            vec![
                Commit(64, OK),
                Commit(65, OK),
                Commit(64 + RING_BITS, OK),
                Check(64 + RING_BITS - 1, OK),
                Check(65 + RING_BITS, OK),
                Check(65, OLD),
            ],
        ),
        (
            "jump by one word less than the ring keeps the newest history",
            vec![
                Commit(8_000, OK),
                Commit(8_000 + 8_000, OK),
                Check(8_000, DUP),
                Check(8_001, OK),
                Check(7_999, OK),
                Check(16_000 - w + 1, OK),
                Check(16_000 - w, OLD),
            ],
        ),
        (
            "bits set before a partial slide survive it",
            vec![
                Commit(100, OK),
                Commit(90, OK),
                Commit(100 + 4_000, OK),
                Check(90, DUP),
                Check(100, DUP),
                Check(91, OK),
            ],
        ),
        (
            "around 2^32 (ESN)",
            vec![
                Commit((1 << 32) - 2, OK),
                Commit((1 << 32) - 1, OK),
                Commit(1 << 32, OK),
                Commit((1 << 32) + 1, OK),
                Check((1 << 32) - 2, DUP),
                Check((1 << 32) - 3, OK),
                Commit(1 << 32, DUP),
            ],
        ),
        (
            "near the counter limits",
            vec![
                Commit(REJECT_AFTER_PACKETS - 1, OK),
                Commit(REJECT_AFTER_PACKETS, OK),
                Check(REJECT_AFTER_PACKETS + 1, OK),
                Commit(REJECT_AFTER_PACKETS - 1, DUP),
                Commit(u64::MAX, OK),
                Check(u64::MAX, DUP),
                Check(u64::MAX - w, OLD),
                Check(u64::MAX - w + 1, OK),
            ],
        ),
    ];
    for (name, ops) in table {
        run(name, ops);
    }
}

#[test]
fn esn_high_bits_are_inferred_as_in_rfc_4303_appendix_a() {
    let two32 = 1u64 << 32;
    let table: &[(u64, u32, u64)] = &[
        // (top, seq low, expected 64-bit seq)
        (0, 1, 1),
        (0, 5000, 5000),
        (100, 50, 50),
        (100, 4_000_000_000, 4_000_000_000), // a far jump forward, high bits stay 0 at the start
        (two32 - 1, 0, two32),               // wrap: low 0 after top 2^32-1 is 2^32
        (two32 - 1, 5, two32 + 5),
        (two32 - 1, (two32 - 2) as u32, two32 - 2), // just behind the top, same block
        (two32 - 1, (two32 - WINDOW) as u32, two32 - WINDOW), // window edge, same block
        (two32 + 5, 10, two32 + 10),
        (two32 + 5, 0xFFFF_FF00, 0xFFFF_FF00), // behind the top, previous block
        (
            two32 + 5,
            (two32 + 5 - (WINDOW - 1)) as u32,
            two32 + 5 - (WINDOW - 1),
        ), // window bottom
        (
            two32 + 5,
            (two32 + 5 - WINDOW) as u32,
            2 * two32 + 5 - WINDOW,
        ), // one below: next block
        (3 * two32 + 9000, 8000, 3 * two32 + 8000),
        (3 * two32 + 9000, 100, 4 * two32 + 100), // below the window bottom: next block
    ];
    for &(top, lo, want) in table {
        assert_eq!(infer_seq(top, lo), want, "top {top:#x} low {lo:#x}");
    }
}

#[test]
fn open_rejects_replays_before_the_aead_and_commits_only_after_it() {
    let (mut a, mut b) = handshake(9);
    let mut pkts = Vec::new();
    for _ in 0..5 {
        let mut buf = vec![0u8; HEADROOM + 8 + TAILROOM];
        let s = a
            .outbound
            .seal(&mut buf, HEADROOM..HEADROOM + 8, 4)
            .unwrap();
        pkts.push(buf[s.datagram].to_vec());
    }
    // A forged packet claiming seq 5 fails authentication and does not poison the window.
    let mut forged = pkts[4].clone();
    let n = forged.len();
    forged[n - 1] ^= 1;
    assert_eq!(b.inbound.open(&mut forged, 0..n), Err(OpenError::BadTag));
    let mut p = pkts[4].clone();
    assert!(b.inbound.open(&mut p, 0..n).is_ok());
    let mut p = pkts[4].clone();
    assert_eq!(
        b.inbound.open(&mut p, 0..n),
        Err(OpenError::Replay(ReplayError::Duplicate))
    );
    // Out of order below the top still opens once.
    for i in [2usize, 0, 3, 1] {
        let mut p = pkts[i].clone();
        assert_eq!(b.inbound.open(&mut p, 0..n).unwrap().seq, i as u64 + 1);
        let mut p = pkts[i].clone();
        assert_eq!(
            b.inbound.open(&mut p, 0..n),
            Err(OpenError::Replay(ReplayError::Duplicate))
        );
    }
    assert_eq!(b.inbound.highest_seq(), 5);
}

/// The model: the set of accepted numbers and the window size.
fn model_check(set: &BTreeSet<u64>, size: u64, seq: u64) -> Result<(), ReplayError> {
    if seq == 0 {
        return Err(ReplayError::Zero);
    }
    let top = set.last().copied().unwrap_or(0);
    if seq > top {
        Ok(())
    } else if top - seq >= size {
        Err(ReplayError::TooOld)
    } else if set.contains(&seq) {
        Err(ReplayError::Duplicate)
    } else {
        Ok(())
    }
}

/// A step relative to the current top, so the generated sequences hit the interesting places.
fn step() -> impl Strategy<Value = (u8, u64, bool)> {
    (0u8..6, any::<u64>(), any::<bool>())
}

fn pick(kind: u8, r: u64, top: u64, size: u64) -> u64 {
    match kind {
        0 => top.saturating_add(1 + r % 4),        // in order, small gaps
        1 => top.saturating_sub(r % (size + 64)),  // behind, around the edge
        2 => top.saturating_sub(size - 2 + r % 4), // exactly at the edge +- 1
        3 => top.saturating_add(r % (3 * RING_BITS)), // jumps up to 3 rings
        4 => r % 64,                               // the start, including 0
        _ => top.saturating_sub(r % 64),           // recent: duplicates likely
    }
}

/// The sizes peers use (IKEv2 gateways 64..2048, tandem 8128), the bounds, and any other.
fn window_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(WINDOW),
        Just(MIN_WINDOW),
        Just(64u64),
        Just(1024u64),
        Just(2048u64),
        MIN_WINDOW..=WINDOW,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_window_agrees_with_a_btreeset_model(
        size in window_size(),
        steps in prop::collection::vec(step(), 1..48),
    ) {
        let mut w = ReplayWindow::with_size(WindowSize::new(size).unwrap());
        let mut set = BTreeSet::new();
        for (kind, r, commit) in steps {
            let top = set.last().copied().unwrap_or(0);
            let seq = pick(kind, r, top, size);
            let want = model_check(&set, size, seq);
            prop_assert_eq!(w.check(seq), want, "check({})", seq);
            if commit {
                prop_assert_eq!(w.commit(seq), want, "commit({})", seq);
                if want.is_ok() {
                    set.insert(seq);
                }
            }
            prop_assert_eq!(w.top(), set.last().copied().unwrap_or(0));
        }
    }
}
