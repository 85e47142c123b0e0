//! TUN-side GRO: consecutive decrypted TCP segments of one flow are coalesced into one
//! super-packet with a virtio-net GSO header (`GSO_TCPV4` / `GSO_TCPV6`, checksum partial), so
//! the kernel takes one TUN write and walks its stack once for up to [`MAX_SEGMENTS`] segments.
//! When the TUN accepts USO, UDP datagrams of one flow are coalesced the same way
//! (`GSO_UDP_L4`, either family: equal payload sizes, the last may be shorter).
//!
//! Rules (as Linux `tcp_gro_receive` and wireguard-go's `tcpGRO`): IPv4 without options or
//! fragmentation; IPv6 whose only extension headers are Hop-by-Hop and Destination Options
//! (byte-identical in every segment, as Linux `ipv6_gro_receive` compares them); TCP with only
//! ACK (PSH allowed, and it ends the run); same addresses, ports, TTL / hop limit, TOS / traffic
//! class (and IPv6 flow label), ack number, window and identical option bytes; each segment
//! starts where the last ended; every segment but the last has the first one's payload size.
//! Anything else is written as it came: an IPv6 packet with a Fragment header (a fragment is
//! not a segment), a Routing header (the pseudo-header's destination is then the last segment,
//! RFC 8200 §8.1, and checking it is not worth a rare case) or AH (it covers the payload), and
//! every other protocol.
//!
//! **Checksums are checked before a segment joins a run**, as Linux GRO does (`inet_gro_receive`
//! checks the IPv4 header, `tcp4_gro_receive` / `tcp6_gro_receive` / `udp_gro_receive` the L4
//! checksum with its pseudo-header; IPv6 has no header checksum). A UDP checksum of zero means
//! "none" over IPv4 (RFC 768) and is invalid over IPv6 (RFC 8200 §8.1, the kernel drops it), so
//! over IPv6 it counts as a bad checksum. The AEAD proves a segment's bytes are the ones the peer
//! gateway sealed, not that the checksum the end host wrote matches them: a segment corrupted on
//! the far LAN, or sent with a bad checksum on purpose, arrives intact. A super-packet is written
//! with "checksum partial" and gets a fresh checksum when the kernel delivers or segments it,
//! which would turn that segment into a valid one. A segment that fails is therefore never
//! coalesced: it is written to the TUN alone and unchanged (an all-zero virtio-net header, so
//! nothing vouches for it), exactly as without GRO. The kernel then drops it and counts it
//! (`InCsumErrors`) on local delivery, and a forwarded one reaches its host still bad, which is
//! what the end-to-end checksum is for. Dropping it here instead would make the daemon judge
//! traffic that the non-GRO path passes through, and lose the kernel's counter.
//! [`TunGro::bad_checksums`] counts them.
//!
//! A run of one segment is written unchanged as well, so the first segment of a run is checked
//! only when a second would join it: traffic that never coalesces pays nothing.
//!
//! One copy per coalesced segment (its payload into the super-packet buffer) replaces one
//! syscall and one trip through the kernel's receive path.

use tandem_engine::checksum::{checksum, fold, pseudo_header, sum, verifies};
use tandem_engine::inner::{
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_TCP, PROTO_UDP, TCP_HEADER_LEN, UDP_HEADER_LEN,
    ipv6_upper,
};
use tun_rs::VIRTIO_NET_HDR_LEN;

// The header written in `flush` is `struct virtio_net_hdr` (linux/virtio_net.h): flags,
// gso_type, then hdr_len, gso_size, csum_start and csum_offset as 16-bit fields. A TUN's
// default vnet_hdr_sz is that size, and tun-rs opens the TUN with it.
const _: () = assert!(VIRTIO_NET_HDR_LEN == 10);

/// Most segments in one super-packet (Linux caps GRO at 64 segments per skb).
pub const MAX_SEGMENTS: usize = 64;
/// Largest super-packet: the IPv4 total-length field. IPv6 keeps to it too (its payload-length
/// field would allow 40 bytes more), so both families stay within Linux's default 64 KiB
/// `gro_max_size`.
const MAX_PACKET: usize = 65_535;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Offsets in the TCP header (RFC 9293 §3.1): ack number + data offset, flags, window,
/// checksum, options.
const TCP_ACK_OFF: usize = 8;
const TCP_FLAGS_OFF: usize = 13;
const TCP_WINDOW_OFF: usize = 14;
const TCP_CSUM_OFF: usize = 16;
/// Offsets in the UDP header (RFC 768): length, checksum.
const UDP_LEN_OFF: usize = 4;
const UDP_CSUM_OFF: usize = 6;

/// The IP version of a segment: where its header fields are and which GSO type a run gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// A coalescable TCP segment or UDP datagram, as [`parse`] finds it.
#[derive(Debug, Clone, Copy)]
struct Seg {
    family: Family,
    /// `PROTO_TCP` or `PROTO_UDP`.
    proto: u8,
    /// Offset of the TCP/UDP header: the IPv4 header, or IPv6's fixed header and its
    /// Hop-by-Hop / Destination Options headers.
    l4: usize,
    /// IP + extension + TCP/UDP header length.
    headers: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// The run being built in the buffer.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Its first segment (family, protocol, header layout).
    first: Seg,
    /// Bytes of the super-packet so far (IP header onwards).
    len: usize,
    /// Payload size of the last segment.
    last: usize,
    /// Segments so far.
    count: usize,
    /// Sequence number the next segment must have.
    next_seq: u32,
    /// The last segment had PSH: the run is closed.
    closed: bool,
}

/// Coalesces TCP segments for the TUN; holds one pre-allocated 64 KiB buffer.
#[derive(Debug)]
pub struct TunGro {
    buf: Box<[u8]>,
    run: Option<Run>,
    /// Coalesce UDP too (the TUN accepts `GSO_UDP_L4`).
    udp: bool,
    /// Segments kept out of a run because a checksum was wrong.
    bad_checksums: u64,
}

impl Default for TunGro {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`TunGro::push`] does with a segment of the run's flow that fits, or with any other.
enum Join {
    /// It joins the run.
    Yes,
    /// Another flow, or it does not fit: the run is written and the segment starts the next.
    No,
    /// The run's single segment has a bad checksum: it is written alone, unchanged, and this
    /// segment starts the next run.
    BadFirst,
    /// This segment has a bad checksum: the run is written, then the segment alone, unchanged.
    BadSegment,
}

/// The family, the offset of the TCP/UDP header and the protocol of a packet GRO may coalesce:
/// IPv4 without options or fragmentation, IPv6 with nothing but Hop-by-Hop / Destination
/// Options headers; in both the IP length is the packet's length.
fn parse_ip(p: &[u8]) -> Option<(Family, usize, u8)> {
    match p.first()? >> 4 {
        4 => {
            if p.len() < IPV4_HEADER_LEN || p[0] != 0x45 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            // No fragments: MF clear and offset 0 (DF may be set).
            if total != p.len() || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                return None;
            }
            Some((Family::V4, IPV4_HEADER_LEN, p[9]))
        }
        6 => {
            // The payload length covers the rest (a jumbogram's zero never matches).
            let payload = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            if p.len() < IPV6_HEADER_LEN || IPV6_HEADER_LEN + payload != p.len() {
                return None;
            }
            let upper = ipv6_upper(p);
            if !upper.options_only {
                return None;
            }
            Some((Family::V6, upper.offset?, upper.proto))
        }
        _ => None,
    }
}

fn parse(p: &[u8], udp: bool) -> Option<Seg> {
    let (family, l4, proto) = parse_ip(p)?;
    match proto {
        PROTO_UDP if udp => {
            let headers = l4 + UDP_HEADER_LEN;
            if p.len() <= headers {
                return None;
            }
            let at = l4 + UDP_LEN_OFF;
            if usize::from(u16::from_be_bytes([p[at], p[at + 1]])) != p.len() - l4 {
                return None;
            }
            Some(Seg {
                family,
                proto,
                l4,
                headers,
                payload: p.len() - headers,
                seq: 0,
                flags: 0,
            })
        }
        PROTO_TCP => {
            if p.len() < l4 + TCP_HEADER_LEN {
                return None;
            }
            let thl = usize::from(p[l4 + 12] >> 4) * 4;
            if thl < TCP_HEADER_LEN || l4 + thl >= p.len() {
                return None;
            }
            let flags = p[l4 + TCP_FLAGS_OFF];
            if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
                return None;
            }
            Some(Seg {
                family,
                proto,
                l4,
                headers: l4 + thl,
                payload: p.len() - l4 - thl,
                seq: u32::from_be_bytes([p[l4 + 4], p[l4 + 5], p[l4 + 6], p[l4 + 7]]),
                flags,
            })
        }
        _ => None,
    }
}

/// Whether `pkt` (parsed as `seg`) belongs to the flow of the run's first segment `cur`
/// (parsed as `run`) with the same header fields, PSH aside (it may end a run).
fn same_flow(cur: &[u8], run: &Seg, pkt: &[u8], seg: &Seg) -> bool {
    if (run.family, run.proto, run.l4, run.headers) != (seg.family, seg.proto, seg.l4, seg.headers)
    {
        return false;
    }
    let l4 = run.l4;
    let ip = match run.family {
        Family::V4 => {
            cur[1] == pkt[1] // TOS
                && cur[8] == pkt[8] // TTL
                && cur[6] & 0x40 == pkt[6] & 0x40 // DF
                && cur[12..20] == pkt[12..20] // addresses
        }
        Family::V6 => {
            cur[..4] == pkt[..4] // version, traffic class, flow label
                && cur[6..l4] == pkt[6..l4] // next header, hop limit, addresses, options headers
        }
    };
    let ports = cur[l4..l4 + 4] == pkt[l4..l4 + 4];
    ip && ports
        && (run.proto == PROTO_UDP || {
            let (a, f, w) = (l4 + TCP_ACK_OFF, l4 + TCP_FLAGS_OFF, l4 + TCP_WINDOW_OFF);
            cur[a..f] == pkt[a..f] // ack number and data offset
                && cur[f] | TCP_PSH == pkt[f] | TCP_PSH // flags
                && cur[w..w + 2] == pkt[w..w + 2] // window
                && cur[l4 + TCP_HEADER_LEN..run.headers] == pkt[l4 + TCP_HEADER_LEN..seg.headers] // options
        })
}

/// The pseudo-header's addresses as they stand in the IP header (RFC 9293 §3.1, RFC 8200 §8.1).
fn addrs(p: &[u8], family: Family) -> &[u8] {
    match family {
        Family::V4 => &p[12..20],
        Family::V6 => &p[8..40],
    }
}

/// Whether the IPv4 header checksum (IPv6 has none) and the TCP/UDP checksum of a parsed
/// segment `p` are correct (RFC 1071 §1; pseudo-header: RFC 9293 §3.1, RFC 768, RFC 8200 §8.1).
/// A UDP checksum of zero means "none" over IPv4 (RFC 768) and is invalid over IPv6.
fn checksums_ok(p: &[u8], seg: &Seg) -> bool {
    if seg.family == Family::V4 && !verifies(sum(0, &p[..IPV4_HEADER_LEN])) {
        return false;
    }
    let l4 = &p[seg.l4..];
    if seg.proto == PROTO_UDP && l4[UDP_CSUM_OFF..UDP_CSUM_OFF + 2] == [0, 0] {
        return seg.family == Family::V4;
    }
    let pseudo = pseudo_header(addrs(p, seg.family), seg.proto, l4.len() as u32);
    verifies(sum(pseudo, l4))
}

impl TunGro {
    /// A writer with its buffer allocated once.
    pub fn new() -> Self {
        TunGro {
            buf: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
            run: None,
            udp: false,
            bad_checksums: 0,
        }
    }

    /// Coalesce UDP datagrams as well (only when the TUN accepts `GSO_UDP_L4`).
    pub fn with_udp(mut self, udp: bool) -> Self {
        self.udp = udp;
        self
    }

    /// Segments kept out of a super-packet because their IPv4 or TCP/UDP checksum was wrong
    /// (each written alone and unchanged), since this writer was made.
    pub fn bad_checksums(&self) -> u64 {
        self.bad_checksums
    }

    /// Offer `pkt`. Returns false when it cannot be coalesced (it is not a candidate, or its
    /// checksum is wrong): the run in progress has then been flushed through `write`, and the
    /// caller writes `pkt` itself, unchanged (after it, keeping order).
    pub fn push(&mut self, pkt: &[u8], write: &mut dyn FnMut(&[u8])) -> bool {
        let Some(seg) = parse(pkt, self.udp) else {
            self.flush(write);
            return false;
        };
        if let Some(run) = self.run {
            let cur = &self.buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + run.len];
            let first = run.first;
            let fits = !run.closed
                && run.count < MAX_SEGMENTS
                && run.last == first.payload
                && seg.payload <= first.payload
                && (seg.proto == PROTO_UDP || seg.seq == run.next_seq)
                && run.len + seg.payload <= MAX_PACKET;
            // A run of one is written unchanged, so its segment is checked only now, when a
            // second one would join it; every segment of a super-packet is checked once.
            let join = if !(fits && same_flow(cur, &first, pkt, &seg)) {
                Join::No
            } else if run.count == 1 && !checksums_ok(cur, &first) {
                Join::BadFirst
            } else if !checksums_ok(pkt, &seg) {
                Join::BadSegment
            } else {
                Join::Yes
            };
            match join {
                Join::Yes => {
                    let at = VIRTIO_NET_HDR_LEN + run.len;
                    self.buf[at..at + seg.payload].copy_from_slice(&pkt[seg.headers..]);
                    let run = self.run.as_mut().unwrap_or_else(|| unreachable!());
                    run.len += seg.payload;
                    run.last = seg.payload;
                    run.count += 1;
                    run.next_seq = seg.seq.wrapping_add(seg.payload as u32);
                    if seg.flags & TCP_PSH != 0 {
                        run.closed = true;
                        self.buf[VIRTIO_NET_HDR_LEN + first.l4 + TCP_FLAGS_OFF] |= TCP_PSH;
                    }
                    return true;
                }
                Join::BadSegment => {
                    self.bad_checksums += 1;
                    self.flush(write);
                    return false;
                }
                // The bad first segment goes out alone; `pkt` starts the next run.
                Join::BadFirst => {
                    self.bad_checksums += 1;
                    self.flush(write);
                }
                Join::No => self.flush(write),
            }
        }
        // Start a new run with this segment.
        self.buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        self.run = Some(Run {
            first: seg,
            len: pkt.len(),
            last: seg.payload,
            count: 1,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            closed: seg.flags & TCP_PSH != 0,
        });
        true
    }

    /// Write the run in progress, if any.
    pub fn flush(&mut self, write: &mut dyn FnMut(&[u8])) {
        let Some(run) = self.run.take() else { return };
        let (hdr, pkt) = self.buf.split_at_mut(VIRTIO_NET_HDR_LEN);
        let pkt = &mut pkt[..run.len];
        hdr.fill(0);
        if run.count > 1 {
            let Seg {
                family, proto, l4, ..
            } = run.first;
            let tcp_gso = match family {
                Family::V4 => {
                    pkt[2..4].copy_from_slice(&(run.len as u16).to_be_bytes());
                    pkt[10..12].fill(0);
                    let ip_sum = checksum(&pkt[..IPV4_HEADER_LEN]);
                    pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
                    VIRTIO_NET_HDR_GSO_TCPV4
                }
                Family::V6 => {
                    let payload = (run.len - IPV6_HEADER_LEN) as u16;
                    pkt[4..6].copy_from_slice(&payload.to_be_bytes());
                    VIRTIO_NET_HDR_GSO_TCPV6
                }
            };
            // Checksum partial: the L4 checksum field holds the folded pseudo-header sum; the
            // kernel completes it (or trusts it for local delivery) per the virtio header.
            let l4_len = (run.len - l4) as u32;
            let partial = fold(pseudo_header(addrs(pkt, family), proto, l4_len)).to_be_bytes();
            let (gso_type, csum_offset) = if proto == PROTO_UDP {
                let at = l4 + UDP_LEN_OFF;
                pkt[at..at + 2].copy_from_slice(&(l4_len as u16).to_be_bytes());
                pkt[l4 + UDP_CSUM_OFF..l4 + UDP_CSUM_OFF + 2].copy_from_slice(&partial);
                (VIRTIO_NET_HDR_GSO_UDP_L4, UDP_CSUM_OFF)
            } else {
                pkt[l4 + TCP_CSUM_OFF..l4 + TCP_CSUM_OFF + 2].copy_from_slice(&partial);
                (tcp_gso, TCP_CSUM_OFF)
            };
            hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            hdr[1] = gso_type;
            hdr[2..4].copy_from_slice(&(run.first.headers as u16).to_le_bytes());
            hdr[4..6].copy_from_slice(&(run.first.payload as u16).to_le_bytes());
            // csum_start: the L4 header.
            hdr[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
            hdr[8..10].copy_from_slice(&(csum_offset as u16).to_le_bytes()); // its checksum field
        }
        write(&self.buf[..VIRTIO_NET_HDR_LEN + run.len]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn segment(seq: u32, payload: usize, flags: u8, fill: u8) -> Vec<u8> {
        crate::dataplane::loopback::ipv4_tcp_segment(seq, flags, payload, fill)
    }

    /// Where a test packet's TCP/UDP header is, its pseudo-header addresses and its protocol
    /// (read with the engine's IPv6 walk, not with the code under test).
    fn layout(p: &[u8]) -> (usize, Vec<u8>, u8) {
        if p[0] >> 4 == 4 {
            (20, p[12..20].to_vec(), p[9])
        } else {
            let u = ipv6_upper(p);
            (u.offset.unwrap(), p[8..40].to_vec(), u.proto)
        }
    }

    /// The offset of the TCP or UDP checksum field.
    fn csum_field(l4: usize, proto: u8) -> usize {
        l4 + if proto == PROTO_TCP { 16 } else { 6 }
    }

    /// Writes the TCP or UDP checksum of an IPv4 or IPv6 packet (a computed UDP checksum of
    /// zero is sent as all ones, RFC 768).
    fn set_l4_checksum(p: &mut [u8]) {
        let (l4, addrs, proto) = layout(p);
        let at = csum_field(l4, proto);
        p[at..at + 2].fill(0);
        let acc = pseudo_header(&addrs, proto, (p.len() - l4) as u32);
        let c = match !fold(sum(acc, &p[l4..])) {
            0 if proto == PROTO_UDP => 0xffff,
            c => c,
        };
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// Whether a plain packet's IPv4 header checksum (if IPv4) and TCP/UDP checksum verify
    /// (a zero UDP checksum counts only over IPv4).
    fn plain_checksums_valid(p: &[u8]) -> bool {
        let (l4, addrs, proto) = layout(p);
        if p[0] >> 4 == 4 && !verifies(sum(0, &p[..20])) {
            return false;
        }
        let at = csum_field(l4, proto);
        if proto == PROTO_UDP && p[at..at + 2] == [0, 0] {
            return p[0] >> 4 == 4;
        }
        verifies(sum(
            pseudo_header(&addrs, proto, (p.len() - l4) as u32),
            &p[l4..],
        ))
    }

    /// Whether a write is well-formed with valid checksums: a plain packet (all-zero virtio-net
    /// header) has a valid IPv4 and TCP/UDP checksum; a super-packet has a valid IPv4 header
    /// checksum (IPv6 has none) and the folded pseudo-header sum in its L4 checksum field
    /// (checksum partial), with `csum_start`/`csum_offset` pointing at that field.
    fn checksums_valid(w: &[u8]) -> bool {
        let (hdr, p) = w.split_at(VIRTIO_NET_HDR_LEN);
        if hdr.iter().all(|&b| b == 0) {
            return plain_checksums_valid(p);
        }
        if p[0] >> 4 == 4 && !verifies(sum(0, &p[..20])) {
            return false;
        }
        let (l4, addrs, proto) = layout(p);
        let field = csum_field(l4, proto);
        let partial = fold(pseudo_header(&addrs, proto, (p.len() - l4) as u32));
        hdr[0] == VIRTIO_NET_HDR_F_NEEDS_CSUM
            && usize::from(u16::from_le_bytes([hdr[6], hdr[7]])) == l4
            && usize::from(u16::from_le_bytes([hdr[6], hdr[7]]))
                + usize::from(u16::from_le_bytes([hdr[8], hdr[9]]))
                == field
            && u16::from_be_bytes([p[field], p[field + 1]]) == partial
    }

    /// The payload bytes of a packet (after the TCP/UDP header).
    fn payload(p: &[u8]) -> &[u8] {
        let (l4, _, proto) = layout(p);
        let headers = if proto == PROTO_TCP {
            l4 + usize::from(p[l4 + 12] >> 4) * 4
        } else {
            l4 + 8
        };
        &p[headers..]
    }

    /// What the kernel makes of a write (`tcp_gso_segment`, `__udp_gso_segment`): a plain packet
    /// as it is; a super-packet cut into `gso_size` pieces, each behind a copy of the headers
    /// with its IP length, TCP sequence number or UDP length, and a full checksum; PSH only on
    /// the last piece. The IPv4 ID is left as it is (the test segments all carry the same).
    fn resegment(w: &[u8]) -> Vec<Vec<u8>> {
        let (hdr, p) = w.split_at(VIRTIO_NET_HDR_LEN);
        if hdr[1] == 0 {
            return vec![p.to_vec()];
        }
        let le = |i: usize| usize::from(u16::from_le_bytes([hdr[i], hdr[i + 1]]));
        let (hdr_len, gso, l4) = (le(2), le(4), le(6));
        let tcp = hdr[1] != VIRTIO_NET_HDR_GSO_UDP_L4;
        let mut seq = u32::from_be_bytes([p[l4 + 4], p[l4 + 5], p[l4 + 6], p[l4 + 7]]);
        let pieces: Vec<&[u8]> = p[hdr_len..].chunks(gso).collect();
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let mut s = p[..hdr_len].to_vec();
            s.extend_from_slice(piece);
            let n = s.len();
            if s[0] >> 4 == 6 {
                s[4..6].copy_from_slice(&((n - 40) as u16).to_be_bytes());
            } else {
                s[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                s[10..12].fill(0);
                let c = checksum(&s[..20]);
                s[10..12].copy_from_slice(&c.to_be_bytes());
            }
            if tcp {
                s[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                seq = seq.wrapping_add(piece.len() as u32);
                if i + 1 < pieces.len() {
                    s[l4 + 13] &= !TCP_PSH;
                }
            } else {
                s[l4 + 4..l4 + 6].copy_from_slice(&((n - l4) as u16).to_be_bytes());
            }
            set_l4_checksum(&mut s);
            out.push(s);
        }
        out
    }

    /// An IPv6/TCP segment from fd00:10::10:5001 to fd00:20::10:40000, laid out as
    /// [`crate::dataplane::loopback::ipv4_tcp_segment`]'s (timestamps option, ack 77, window
    /// 512), behind the extension headers `exts` (8 bytes each, PadN), checksum valid.
    fn segment6(seq: u32, payload: usize, flags: u8, fill: u8, exts: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[1..4].copy_from_slice(&[0x0a, 0xbc, 0xde]); // flow label 0xabcde
        p[7] = 64;
        p[8..24].copy_from_slice(
            &"fd00:10::10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p[24..40].copy_from_slice(
            &"fd00:20::10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let mut next_at = 6;
        for &e in exts {
            p[next_at] = e;
            next_at = p.len();
            p.extend_from_slice(&[0, 0, 1, 4, 0, 0, 0, 0]);
        }
        p[next_at] = PROTO_TCP;
        let l4 = p.len();
        p.resize(l4 + 32 + payload, fill);
        let t = &mut p[l4..];
        t[0..2].copy_from_slice(&5001u16.to_be_bytes());
        t[2..4].copy_from_slice(&40000u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = (32 / 4) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[16..20].fill(0);
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        set_l4_checksum(&mut p);
        p
    }

    /// An IPv6/UDP datagram from fd00:10::10:5201 to fd00:20::10:5202, checksum valid.
    fn datagram6(payload: usize, fill: u8) -> Vec<u8> {
        let mut p = segment6(0, 0, TCP_ACK, 0, &[]);
        p.truncate(40);
        p[6] = PROTO_UDP;
        p.resize(48 + payload, fill);
        p[40..42].copy_from_slice(&5201u16.to_be_bytes());
        p[42..44].copy_from_slice(&5202u16.to_be_bytes());
        p[44..46].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        p[46..48].fill(0);
        p[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        set_l4_checksum(&mut p);
        p
    }

    fn collect(gro: &mut TunGro, pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in pkts {
            let mut w = |b: &[u8]| out.push(b.to_vec());
            if !gro.push(p, &mut w) {
                let mut hdr = vec![0u8; VIRTIO_NET_HDR_LEN];
                hdr.extend_from_slice(p);
                out.push(hdr);
            }
        }
        gro.flush(&mut |b: &[u8]| out.push(b.to_vec()));
        out
    }

    #[test]
    fn contiguous_segments_of_one_flow_become_one_gso_super_packet() {
        let mut gro = TunGro::new();
        let pkts = vec![
            segment(1000, 1000, TCP_ACK, 1),
            segment(2000, 1000, TCP_ACK, 2),
            segment(3000, 400, TCP_ACK | TCP_PSH, 3),
        ];
        let out = collect(&mut gro, &pkts);
        assert_eq!(out.len(), 1);
        let w = &out[0];
        let (hdr, p) = w.split_at(VIRTIO_NET_HDR_LEN);
        assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 52);
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000);
        assert_eq!(p.len(), 52 + 2400);
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert!(
            verifies(sum(0, &p[..20])),
            "IPv4 header checksum must verify"
        );
        assert_eq!(p[33], TCP_ACK | TCP_PSH);
        assert!(p[52..1052].iter().all(|&b| b == 1));
        assert!(p[1052..2052].iter().all(|&b| b == 2));
        assert!(p[2052..].iter().all(|&b| b == 3));
    }

    fn datagram(payload: usize, fill: u8) -> Vec<u8> {
        let total = 28 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 1, 0, 5]);
        p[16..20].copy_from_slice(&[10, 2, 0, 7]);
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&5202u16.to_be_bytes());
        p[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        p[28..].fill(fill);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn udp_datagrams_coalesce_only_when_the_tun_takes_uso() {
        let pkts = vec![
            datagram(1000, 1),
            datagram(1000, 2),
            datagram(600, 3),
            datagram(1000, 4),
        ];
        let out = collect(&mut TunGro::new(), &pkts);
        assert_eq!(out.len(), 4, "without USO every datagram goes alone");
        let out = collect(&mut TunGro::new().with_udp(true), &pkts);
        let sizes: Vec<usize> = out.iter().map(|w| w.len() - VIRTIO_NET_HDR_LEN).collect();
        assert_eq!(sizes, vec![28 + 2600, 1028]);
        let (hdr, p) = out[0].split_at(VIRTIO_NET_HDR_LEN);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000);
        assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 6);
        assert_eq!(
            usize::from(u16::from_be_bytes([p[24], p[25]])),
            p.len() - 20
        );
        assert!(verifies(sum(0, &p[..20])));
        assert!(p[2028..].iter().all(|&b| b == 3));
    }

    #[test]
    fn a_gap_a_flag_or_a_short_middle_segment_starts_a_new_packet() {
        let mut gro = TunGro::new();
        let pkts = vec![
            segment(1000, 1000, TCP_ACK, 1),
            segment(2500, 1000, TCP_ACK, 2),      // gap: new run
            segment(3500, 500, TCP_ACK, 3),       // short: ends this run
            segment(4000, 500, TCP_ACK, 4),       // previous was short: new run
            segment(4500, 10, TCP_ACK | 0x01, 5), // FIN: written alone
        ];
        let out = collect(&mut gro, &pkts);
        let sizes: Vec<usize> = out.iter().map(|w| w.len() - VIRTIO_NET_HDR_LEN).collect();
        assert_eq!(sizes, vec![1052, 1052 + 500, 552, 62]);
        // Single segments go out with an all-zero header and untouched bytes.
        assert!(out[0][..VIRTIO_NET_HDR_LEN].iter().all(|&b| b == 0));
        assert_eq!(&out[0][VIRTIO_NET_HDR_LEN..], &pkts[0][..]);
        assert_eq!(out[1][1], VIRTIO_NET_HDR_GSO_TCPV4);
    }

    /// Pushes `pkts` with `pkts[bad]` corrupted by `corrupt` (after its checksums were written)
    /// and checks the outcome: that segment is written alone with an all-zero header and its
    /// bytes unchanged, it is in no super-packet, the others coalesce around it, and every
    /// other write has valid checksums.
    fn one_corrupted(mut pkts: Vec<Vec<u8>>, bad: usize, corrupt: fn(&mut [u8]), udp: bool) {
        corrupt(&mut pkts[bad]);
        let mut gro = TunGro::new().with_udp(udp);
        let out = collect(&mut gro, &pkts);
        let alone = out
            .iter()
            .position(|w| w[VIRTIO_NET_HDR_LEN..] == pkts[bad][..])
            .expect("the bad segment is written on its own");
        assert!(
            out[alone][..VIRTIO_NET_HDR_LEN].iter().all(|&b| b == 0),
            "nothing vouches for the bad segment's checksum"
        );
        assert!(!checksums_valid(&out[alone]), "the kernel sees it bad");
        // The other writes carry exactly the other segments' payloads, in order.
        let mut expected = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            if i != bad {
                expected.extend_from_slice(payload(p));
            }
        }
        let mut carried = Vec::new();
        for (i, w) in out.iter().enumerate() {
            if i != alone {
                assert!(checksums_valid(w), "write {i} has valid checksums");
                carried.extend_from_slice(payload(&w[VIRTIO_NET_HDR_LEN..]));
            }
        }
        assert!(carried == expected, "the good segments' payloads, in order");
        let good: Vec<Vec<u8>> = (0..pkts.len())
            .filter(|&i| i != bad)
            .map(|i| pkts[i].clone())
            .collect();
        let handed_on: Vec<Vec<u8>> = (0..out.len())
            .filter(|&i| i != alone)
            .flat_map(|i| resegment(&out[i]))
            .collect();
        assert!(
            handed_on == good,
            "the kernel hands on the good segments as they came"
        );
        let sizes: Vec<usize> = out.iter().map(|w| w.len() - VIRTIO_NET_HDR_LEN).collect();
        assert_eq!(
            out.iter().filter(|w| w[1] != 0).count(),
            usize::from(bad >= 2) + usize::from(pkts.len() - bad > 2),
            "the good segments on each side of the bad one coalesce: {sizes:?}"
        );
        assert_eq!(gro.bad_checksums(), 1, "the bad segment is counted");
    }

    fn tcp_run(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| segment(1000 + 1000 * i as u32, 1000, TCP_ACK, i as u8 + 1))
            .collect()
    }

    fn udp_run(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut d = datagram(1000, i as u8 + 1);
                set_l4_checksum(&mut d);
                d
            })
            .collect()
    }

    fn tcp6_run(n: usize, exts: &[u8]) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| segment6(1000 + 1000 * i as u32, 1000, TCP_ACK, i as u8 + 1, exts))
            .collect()
    }

    fn udp6_run(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| datagram6(1000, i as u8 + 1)).collect()
    }

    /// One bit flipped in the payload, as a bad link or memory would (checksums not updated).
    fn flip_payload_bit(p: &mut [u8]) {
        let last = p.len() - 1;
        p[last - 100] ^= 0x10;
    }

    #[test]
    fn a_tcp_segment_with_a_bad_checksum_mid_run_is_written_alone_and_the_rest_coalesce() {
        one_corrupted(tcp_run(7), 3, flip_payload_bit, false);
    }

    #[test]
    fn a_udp_datagram_with_a_bad_checksum_mid_run_is_written_alone_and_the_rest_coalesce() {
        one_corrupted(udp_run(7), 3, flip_payload_bit, true);
    }

    #[test]
    fn a_bad_first_segment_is_caught_when_the_second_would_join_it() {
        one_corrupted(tcp_run(5), 0, flip_payload_bit, false);
        one_corrupted(udp_run(5), 0, flip_payload_bit, true);
    }

    #[test]
    fn a_segment_with_a_bad_ipv4_header_checksum_is_kept_out_of_the_run() {
        // The IP ID is not compared between segments and not in the pseudo-header: only the
        // IPv4 header checksum tells.
        one_corrupted(tcp_run(7), 4, |p| p[5] ^= 1, false);
    }

    #[test]
    fn udp_datagrams_without_a_checksum_still_coalesce() {
        // RFC 768: zero means the sender computed none; nothing is laundered.
        let pkts = vec![datagram(1000, 1), datagram(1000, 2), datagram(1000, 3)];
        assert!(pkts.iter().all(|p| p[26..28] == [0, 0]));
        let mut gro = TunGro::new().with_udp(true);
        let out = collect(&mut gro, &pkts);
        assert_eq!(out.len(), 1);
        assert_eq!(gro.bad_checksums(), 0);
    }

    /// Pushes `pkts`, checks every write's checksums and that the kernel would hand on exactly
    /// `pkts`; returns the writes.
    fn coalesce_exactly(gro: &mut TunGro, pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let out = collect(gro, pkts);
        for (i, w) in out.iter().enumerate() {
            assert!(checksums_valid(w), "write {i} has valid checksums");
        }
        let handed_on: Vec<Vec<u8>> = out.iter().flat_map(|w| resegment(w)).collect();
        assert!(
            handed_on == pkts,
            "the kernel hands on the segments as they came"
        );
        out
    }

    #[test]
    fn ipv6_tcp_segments_of_one_flow_become_one_gso_tcpv6_super_packet() {
        let pkts = vec![
            segment6(1000, 1000, TCP_ACK, 1, &[]),
            segment6(2000, 1000, TCP_ACK, 2, &[]),
            segment6(3000, 400, TCP_ACK | TCP_PSH, 3, &[]),
        ];
        let mut gro = TunGro::new();
        let out = coalesce_exactly(&mut gro, &pkts);
        assert_eq!(out.len(), 1);
        let (hdr, p) = out[0].split_at(VIRTIO_NET_HDR_LEN);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(
            u16::from_le_bytes([hdr[2], hdr[3]]),
            72,
            "hdr_len: IPv6 + TCP"
        );
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000, "gso_size");
        assert_eq!(u16::from_le_bytes([hdr[6], hdr[7]]), 40, "csum_start");
        assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 16, "csum_offset");
        assert_eq!(p.len(), 72 + 2400);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        assert_eq!(p[53], TCP_ACK | TCP_PSH);
        assert_eq!(gro.bad_checksums(), 0);
    }

    #[test]
    fn ipv6_tcp_segments_behind_hop_by_hop_and_destination_options_coalesce_with_them() {
        const HBH: u8 = tandem_engine::inner::NEXT_HEADER_HOP_BY_HOP;
        const DST: u8 = tandem_engine::inner::NEXT_HEADER_DEST_OPTS;
        let pkts = tcp6_run(5, &[HBH, DST]);
        let out = coalesce_exactly(&mut TunGro::new(), &pkts);
        assert_eq!(out.len(), 1);
        let hdr = &out[0][..VIRTIO_NET_HDR_LEN];
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 56 + 32, "hdr_len");
        assert_eq!(
            u16::from_le_bytes([hdr[6], hdr[7]]),
            56,
            "csum_start: past the options"
        );
        // Different option bytes: another run (as Linux compares the extension headers).
        let mut pkts = tcp6_run(4, &[HBH]);
        pkts[2][44] = 0x05; // a router alert instead of PadN
        pkts[3][44] = 0x05;
        let out = coalesce_exactly(&mut TunGro::new(), &pkts);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn ipv6_with_a_routing_fragment_or_ah_header_is_written_as_it_came() {
        use tandem_engine::inner::{NEXT_HEADER_AH, NEXT_HEADER_FRAGMENT, NEXT_HEADER_ROUTING};
        for ext in [NEXT_HEADER_ROUTING, NEXT_HEADER_FRAGMENT, NEXT_HEADER_AH] {
            let mut pkts = tcp6_run(3, &[tandem_engine::inner::NEXT_HEADER_DEST_OPTS]);
            for p in &mut pkts {
                p[6] = ext;
                // Routing: type 4 with segments left 0 (final destination as in the header);
                // Fragment: an atomic fragment (8 bytes); AH: length 0 -> 8 bytes.
                p[40..48].copy_from_slice(&[PROTO_TCP, 0, 4, 0, 0, 0, 0, 0]);
                if ext == NEXT_HEADER_FRAGMENT {
                    p[40..48].copy_from_slice(&[PROTO_TCP, 0, 0, 0, 0, 0, 0, 1]);
                }
                if ext == NEXT_HEADER_AH {
                    p[41] = 0;
                }
            }
            let out = collect(&mut TunGro::new(), &pkts);
            assert_eq!(out.len(), 3, "next header {ext}: each written alone");
            for (w, p) in out.iter().zip(&pkts) {
                assert!(w[..VIRTIO_NET_HDR_LEN].iter().all(|&b| b == 0));
                assert_eq!(&w[VIRTIO_NET_HDR_LEN..], &p[..]);
            }
        }
    }

    #[test]
    fn ipv6_udp_datagrams_coalesce_into_one_gso_udp_l4_write() {
        let pkts = vec![
            datagram6(1000, 1),
            datagram6(1000, 2),
            datagram6(600, 3),
            datagram6(1000, 4),
        ];
        let out = collect(&mut TunGro::new(), &pkts);
        assert_eq!(out.len(), 4, "without USO every datagram goes alone");
        let mut gro = TunGro::new().with_udp(true);
        let out = coalesce_exactly(&mut gro, &pkts);
        let sizes: Vec<usize> = out.iter().map(|w| w.len() - VIRTIO_NET_HDR_LEN).collect();
        assert_eq!(sizes, vec![48 + 2600, 1048]);
        let (hdr, p) = out[0].split_at(VIRTIO_NET_HDR_LEN);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 48, "hdr_len");
        assert_eq!(u16::from_le_bytes([hdr[6], hdr[7]]), 40, "csum_start");
        assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 6, "csum_offset");
        assert_eq!(
            usize::from(u16::from_be_bytes([p[44], p[45]])),
            p.len() - 40
        );
        assert_eq!(gro.bad_checksums(), 0);
    }

    #[test]
    fn an_ipv6_tcp_segment_with_a_bad_checksum_is_written_alone_and_the_rest_coalesce() {
        one_corrupted(tcp6_run(7, &[]), 3, flip_payload_bit, false);
        one_corrupted(tcp6_run(5, &[]), 0, flip_payload_bit, false);
        one_corrupted(
            tcp6_run(7, &[tandem_engine::inner::NEXT_HEADER_HOP_BY_HOP]),
            5,
            flip_payload_bit,
            false,
        );
    }

    #[test]
    fn a_bit_flipped_in_an_ipv6_address_is_caught_by_the_pseudo_header() {
        // IPv6 has no header checksum: the pseudo-header is all that covers the addresses. A
        // segment whose address changed is another flow: it ends the run and starts its own,
        // and is checked when a second segment (the same flip) would join it. The second is then
        // alone in front of a good segment of the first flow, so it is written as it came
        // without a check: never laundered either way.
        let mut pkts = tcp6_run(6, &[]);
        pkts[3][23] ^= 1;
        pkts[4][23] ^= 1;
        let mut gro = TunGro::new();
        let out = collect(&mut gro, &pkts);
        assert_eq!(gro.bad_checksums(), 1, "the first of them is caught");
        for bad in [3, 4] {
            let alone = out
                .iter()
                .find(|w| w[VIRTIO_NET_HDR_LEN..] == pkts[bad][..])
                .expect("written alone, unchanged");
            assert!(alone[..VIRTIO_NET_HDR_LEN].iter().all(|&b| b == 0));
            assert!(!checksums_valid(alone));
        }
        let supers: Vec<usize> = out.iter().map(|w| resegment(w).len()).collect();
        assert_eq!(supers, vec![3, 1, 1, 1]);
    }

    #[test]
    fn an_ipv6_udp_datagram_with_a_bad_or_zero_checksum_is_written_alone_and_the_rest_coalesce() {
        one_corrupted(udp6_run(7), 3, flip_payload_bit, true);
        one_corrupted(udp6_run(5), 0, flip_payload_bit, true);
        // RFC 8200 §8.1: over IPv6 a zero UDP checksum is not "none", it is wrong.
        one_corrupted(udp6_run(7), 2, |p| p[46..48].fill(0), true);
    }

    #[test]
    fn another_flow_label_or_hop_limit_or_family_starts_a_new_run() {
        let mut pkts = tcp6_run(6, &[]);
        pkts[2][3] ^= 1; // flow label: ends the run, and 3 cannot join 2
        pkts[4][7] -= 1; // hop limit
        set_l4_checksum(&mut pkts[2]);
        set_l4_checksum(&mut pkts[4]);
        let out = coalesce_exactly(&mut TunGro::new(), &pkts);
        let counts: Vec<usize> = out.iter().map(|w| resegment(w).len()).collect();
        assert_eq!(counts, vec![2, 1, 1, 1, 1]);
        // IPv4 and IPv6 segments interleaved never share a run.
        let v4 = tcp_run(4);
        let v6 = tcp6_run(4, &[]);
        let mixed: Vec<Vec<u8>> = (0..4)
            .flat_map(|i| [v4[i].clone(), v6[i].clone()])
            .collect();
        let out = coalesce_exactly(&mut TunGro::new(), &mixed);
        assert_eq!(out.len(), 8);
    }
}
