//! The Internet checksum (RFC 1071): the ones'-complement sum of 16-bit big-endian words, for
//! the IPv4 header, TCP, UDP and ICMP. One implementation for the engine (MSS clamping, ICMP
//! errors) and the daemon (TUN-side GRO).
//!
//! A *running sum* is a `u32` that [`sum`] keeps folded to 16 bits, so a caller may add small
//! terms to it (a protocol number, a length) before the next [`sum`] or the final [`fold`]. A
//! checksum field holds the complement of the folded sum ([`checksum`], [`finish`]); data that
//! includes a correct checksum field sums to `0xffff` ([`verifies`]).

/// Adds `data`, read as big-endian 16-bit words (an odd last byte padded with a zero byte), to
/// the running sum `acc`. Returns the sum folded to 16 bits.
///
/// RFC 1071 §2: the words are summed 32 bits at a time into a 64-bit accumulator whose carries
/// are folded back at the end (§2(C); since 2^16 ≡ 1 (mod 2^16 - 1), a 32-bit word counts as its
/// two 16-bit halves), and in the machine's byte order, the folded sum being byte-swapped once
/// at the end (§2(B)). The loop has neither a carry chain nor a byte swap, so the compiler
/// vectorises it with baseline SSE2.
#[must_use]
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut wide = 0u64;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        wide += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    // Fold 64 -> 32 -> 16 bits: each step keeps the value mod 2^16 - 1 and never reaches zero
    // from a non-zero sum, so the result is the one a 16-bit loop would give.
    let mut folded = (wide & 0xffff_ffff) + (wide >> 32);
    while folded > 0xffff {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    // Back to network byte order; the rest of the data starts at a multiple of 4 (even) offset.
    let mut narrow = u64::from(acc) + u64::from(u16::from_be(folded as u16));
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        narrow += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        narrow += u64::from(*last) << 8;
    }
    while narrow > 0xffff {
        narrow = (narrow & 0xffff) + (narrow >> 16);
    }
    narrow as u32
}

/// Folds a running sum to 16 bits (end-around carry).
#[must_use]
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The value of a checksum field for the running sum `acc`: its folded complement.
#[must_use]
pub fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// The Internet checksum (RFC 1071) of `data`.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// The running sum of a TCP/UDP/ICMPv6 pseudo-header: the source and destination addresses as
/// they stand in the IP header (`addrs`: IPv4 bytes 12..20, IPv6 bytes 8..40), the protocol
/// number and the upper-layer length (RFC 9293 §3.1, RFC 768, RFC 8200 §8.1).
#[must_use]
pub fn pseudo_header(addrs: &[u8], proto: u8, len: u32) -> u32 {
    sum(u32::from(proto) + fold(len) as u32, addrs)
}

/// Whether a running sum over data that includes its checksum field shows that field correct
/// (RFC 1071 §1: the receiver's sum is all ones).
#[must_use]
pub fn verifies(acc: u32) -> bool {
    fold(acc) == 0xffff
}

/// RFC 1624 eqn. 3: the checksum field `hc` after one 16-bit word of the covered data changes
/// from `old` to `new`, without summing the data again.
#[must_use]
pub fn update(hc: u16, old: u16, new: u16) -> u16 {
    finish(u32::from(!hc) + u32::from(!old) + u32::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain RFC 1071 loop: one 16-bit word at a time.
    fn reference(acc: u32, data: &[u8]) -> u16 {
        let mut s = acc;
        let mut i = 0;
        while i + 1 < data.len() {
            s += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            s += u32::from(data[i]) << 8;
        }
        fold(s)
    }

    #[test]
    fn the_rfc_1071_worked_example_sums_to_ddf2() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn data_with_its_checksum_verifies_and_a_flipped_bit_does_not() {
        let mut data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        data[10..12].fill(0);
        let c = checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verifies(sum(0, &data)));
        data[500] ^= 0x04;
        assert!(!verifies(sum(0, &data)));
    }

    #[test]
    fn an_incremental_update_matches_a_full_sum() {
        let mut data = [0x45u8, 0, 0x05, 0xdc, 0x12, 0x34, 0x40, 0, 0x40, 0x06, 0, 0];
        let c = checksum(&data);
        data[2..4].copy_from_slice(&0x0578u16.to_be_bytes());
        assert_eq!(update(c, 0x05dc, 0x0578), checksum(&data));
    }

    proptest! {
        #[test]
        fn the_wide_sum_equals_the_16_bit_loop(
            acc in 0u32..=0x1_ffff,
            data in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            prop_assert_eq!(fold(sum(acc, &data)), reference(acc, &data));
        }

        #[test]
        fn a_sum_split_at_an_even_offset_equals_the_whole(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cut in 0usize..1500,
        ) {
            let cut = (cut * 2).min(data.len() & !1);
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(fold(sum(sum(0, a), b)), fold(sum(0, &data)));
        }
    }
}
