//! TUN-side GRO: consecutive decrypted TCP segments of one flow are coalesced into one
//! super-packet with a virtio-net GSO header (`GSO_TCPV4`, checksum partial), so the kernel
//! takes one TUN write and walks its stack once for up to [`MAX_SEGMENTS`] segments. When the
//! TUN accepts USO, UDP datagrams of one flow are coalesced the same way (`GSO_UDP_L4`: equal
//! payload sizes, the last may be shorter).
//!
//! Rules (as Linux `tcp_gro_receive` and wireguard-go's `tcpGRO`): IPv4 without options or
//! fragmentation; TCP with only ACK (PSH allowed, and it ends the run); same addresses, ports,
//! TTL, TOS, ack number, window and identical option bytes; each segment starts where the last
//! ended; every segment but the last has the first one's payload size. Anything else is written
//! as it came.
//!
//! **Checksums are checked before a segment joins a run**, as Linux GRO does (`inet_gro_receive`
//! checks the IPv4 header, `tcp4_gro_receive` / `udp4_gro_receive` the L4 checksum with its
//! pseudo-header; a UDP checksum of zero over IPv4 means "none", RFC 768). The AEAD proves a
//! segment's bytes are the ones the peer gateway sealed, not that the checksum the end host wrote
//! matches them: a segment corrupted on the far LAN, or sent with a bad checksum on purpose,
//! arrives intact. A super-packet is written with "checksum partial" and gets a fresh checksum
//! when the kernel delivers or segments it, which would turn that segment into a valid one. A
//! segment that fails is therefore never coalesced: it is written to the TUN alone and unchanged
//! (an all-zero virtio-net header, so nothing vouches for it), exactly as without GRO. The kernel
//! then drops it and counts it (`InCsumErrors`) on local delivery, and a forwarded one reaches
//! its host still bad, which is what the end-to-end checksum is for. Dropping it here instead
//! would make the daemon judge traffic that the non-GRO path passes through, and lose the
//! kernel's counter. [`TunGro::bad_checksums`] counts them.
//!
//! A run of one segment is written unchanged as well, so the first segment of a run is checked
//! only when a second would join it: traffic that never coalesces pays nothing.
//!
//! One copy per coalesced segment (its payload into the super-packet buffer) replaces one
//! syscall and one trip through the kernel's receive path.

use tandem_engine::checksum::{checksum, fold, pseudo_header, sum, verifies};
use tandem_engine::inner::{IPV4_HEADER_SZ, PROTO_TCP, PROTO_UDP, TCP_HEADER_SZ, UDP_HEADER_SZ};
use tun_rs::VIRTIO_NET_HDR_LEN;

// The header written in `flush` is `struct virtio_net_hdr` (linux/virtio_net.h): flags,
// gso_type, then hdr_len, gso_size, csum_start and csum_offset as 16-bit fields. A TUN's
// default vnet_hdr_sz is that size, and tun-rs opens the TUN with it.
const _: () = assert!(VIRTIO_NET_HDR_LEN == 10);

/// Most segments in one super-packet (Linux caps GRO at 64 segments per skb).
pub const MAX_SEGMENTS: usize = 64;
/// Largest super-packet: the IPv4 total-length field.
const MAX_PACKET: usize = 65_535;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// The run being built in the buffer.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Bytes of the super-packet so far (IP header onwards).
    len: usize,
    /// IP + TCP header length.
    headers: usize,
    /// Payload size of the first segment (the GSO size).
    seg: usize,
    /// Payload size of the last segment.
    last: usize,
    /// Segments so far.
    count: usize,
    /// Sequence number the next segment must have.
    next_seq: u32,
    /// The last segment had PSH: the run is closed.
    closed: bool,
    /// `PROTO_TCP` or `PROTO_UDP`.
    proto: u8,
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

/// A coalescable IPv4/TCP segment or IPv4/UDP datagram.
struct Seg {
    headers: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    proto: u8,
}

fn parse_udp(p: &[u8]) -> Option<Seg> {
    const HEADERS: usize = IPV4_HEADER_SZ + UDP_HEADER_SZ;
    if p.len() <= HEADERS || p[0] != 0x45 || p[9] != PROTO_UDP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let udp_len = usize::from(u16::from_be_bytes([p[24], p[25]]));
    if total != p.len()
        || udp_len != total - IPV4_HEADER_SZ
        || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0
    {
        return None;
    }
    Some(Seg {
        headers: HEADERS,
        payload: total - HEADERS,
        seq: 0,
        flags: 0,
        proto: PROTO_UDP,
    })
}

fn parse(p: &[u8], udp: bool) -> Option<Seg> {
    if udp && p.len() > 9 && p[9] == PROTO_UDP {
        return parse_udp(p);
    }
    if p.len() < IPV4_HEADER_SZ + TCP_HEADER_SZ || p[0] != 0x45 || p[9] != PROTO_TCP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // No fragments: MF clear and offset 0 (DF may be set).
    if total != p.len() || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let thl = usize::from(p[32] >> 4) * 4;
    if thl < TCP_HEADER_SZ || IPV4_HEADER_SZ + thl >= total {
        return None;
    }
    let flags = p[33];
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some(Seg {
        headers: IPV4_HEADER_SZ + thl,
        payload: total - IPV4_HEADER_SZ - thl,
        seq: u32::from_be_bytes([p[24], p[25], p[26], p[27]]),
        flags,
        proto: PROTO_TCP,
    })
}

/// Same UDP flow and IP header fields.
fn same_udp_flow(cur: &[u8], pkt: &[u8]) -> bool {
    cur[9] == PROTO_UDP
        && cur[1] == pkt[1] // TOS
        && cur[8] == pkt[8] // TTL
        && cur[6] & 0x40 == pkt[6] & 0x40 // DF
        && cur[12..24] == pkt[12..24] // addresses and ports
}

/// Same TCP flow and same header fields, PSH aside (it may end a run).
fn same_flow(cur: &[u8], pkt: &[u8], cur_headers: usize, pkt_headers: usize) -> bool {
    cur[9] == PROTO_TCP
        && cur_headers == pkt_headers
        && cur[1] == pkt[1] // TOS
        && cur[8] == pkt[8] // TTL
        && cur[6] & 0x40 == pkt[6] & 0x40 // DF
        && cur[12..24] == pkt[12..24] // addresses and ports
        && cur[28..33] == pkt[28..33] // ack number and data offset
        && cur[33] | TCP_PSH == pkt[33] | TCP_PSH // flags
        && cur[34..36] == pkt[34..36] // window
        && cur[40..cur_headers] == pkt[40..pkt_headers] // options
}

/// Whether the IPv4 header checksum and the TCP/UDP checksum of a parsed segment `p` (an IPv4
/// packet without options, `proto` its protocol) are correct (RFC 1071 §1; pseudo-header:
/// RFC 9293 §3.1, RFC 768). A UDP checksum of zero means the sender computed none (RFC 768).
fn checksums_ok(p: &[u8], proto: u8) -> bool {
    let (ip, l4) = p.split_at(IPV4_HEADER_SZ);
    if !verifies(sum(0, ip)) {
        return false;
    }
    if proto == PROTO_UDP && l4[6..8] == [0, 0] {
        return true;
    }
    verifies(sum(pseudo_header(&ip[12..20], proto, l4.len() as u32), l4))
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
            let same_flow = match seg.proto {
                PROTO_UDP => same_udp_flow(cur, pkt),
                _ => same_flow(cur, pkt, run.headers, seg.headers),
            };
            let fits = !run.closed
                && run.count < MAX_SEGMENTS
                && run.last == run.seg
                && seg.payload <= run.seg
                && (seg.proto == PROTO_UDP || seg.seq == run.next_seq)
                && run.len + seg.payload <= MAX_PACKET;
            // A run of one is written unchanged, so its segment is checked only now, when a
            // second one would join it; every segment of a super-packet is checked once.
            let join = if !(same_flow && fits) {
                Join::No
            } else if run.count == 1 && !checksums_ok(cur, run.proto) {
                Join::BadFirst
            } else if !checksums_ok(pkt, seg.proto) {
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
                        self.buf[VIRTIO_NET_HDR_LEN + 33] |= TCP_PSH;
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
            len: pkt.len(),
            headers: seg.headers,
            seg: seg.payload,
            last: seg.payload,
            count: 1,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            closed: seg.flags & TCP_PSH != 0,
            proto: seg.proto,
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
            pkt[2..4].copy_from_slice(&(run.len as u16).to_be_bytes());
            pkt[10..12].fill(0);
            let ip_sum = checksum(&pkt[..IPV4_HEADER_SZ]);
            pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
            // Checksum partial: the L4 checksum field holds the folded pseudo-header sum; the
            // kernel completes it (or trusts it for local delivery) per the virtio header.
            let l4_len = (run.len - IPV4_HEADER_SZ) as u32;
            let pseudo = pseudo_header(&pkt[12..20], run.proto, l4_len);
            let (gso_type, csum_offset) = if run.proto == PROTO_UDP {
                pkt[24..26].copy_from_slice(&(l4_len as u16).to_be_bytes());
                pkt[26..28].copy_from_slice(&fold(pseudo).to_be_bytes());
                (VIRTIO_NET_HDR_GSO_UDP_L4, 6u16)
            } else {
                pkt[36..38].copy_from_slice(&fold(pseudo).to_be_bytes());
                (VIRTIO_NET_HDR_GSO_TCPV4, 16u16)
            };
            hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            hdr[1] = gso_type;
            hdr[2..4].copy_from_slice(&(run.headers as u16).to_le_bytes());
            hdr[4..6].copy_from_slice(&(run.seg as u16).to_le_bytes());
            // csum_start: the L4 header.
            hdr[6..8].copy_from_slice(&(IPV4_HEADER_SZ as u16).to_le_bytes());
            hdr[8..10].copy_from_slice(&csum_offset.to_le_bytes()); // its checksum field
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

    /// Writes the TCP or UDP checksum of an IPv4 packet without options (a computed UDP
    /// checksum of zero is sent as all ones, RFC 768).
    fn set_l4_checksum(p: &mut [u8]) {
        let at = if p[9] == PROTO_TCP { 36 } else { 26 };
        p[at..at + 2].fill(0);
        let acc = pseudo_header(&p[12..20], p[9], (p.len() - 20) as u32);
        let c = match !fold(sum(acc, &p[20..])) {
            0 if p[9] == PROTO_UDP => 0xffff,
            c => c,
        };
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// Whether a write is well-formed with valid checksums: a plain packet (all-zero virtio-net
    /// header) has a valid IPv4 and TCP/UDP checksum; a super-packet has a valid IPv4 header
    /// checksum and the folded pseudo-header sum in its L4 checksum field (checksum partial),
    /// with `csum_start`/`csum_offset` pointing at that field.
    fn checksums_valid(w: &[u8]) -> bool {
        let (hdr, p) = w.split_at(VIRTIO_NET_HDR_LEN);
        if !verifies(sum(0, &p[..20])) {
            return false;
        }
        let field = if p[9] == PROTO_TCP { 36 } else { 26 };
        if hdr.iter().all(|&b| b == 0) {
            return checksums_ok(p, p[9]);
        }
        let partial = fold(pseudo_header(&p[12..20], p[9], (p.len() - 20) as u32));
        hdr[0] == VIRTIO_NET_HDR_F_NEEDS_CSUM
            && usize::from(u16::from_le_bytes([hdr[6], hdr[7]]))
                + usize::from(u16::from_le_bytes([hdr[8], hdr[9]]))
                == field
            && u16::from_be_bytes([p[field], p[field + 1]]) == partial
    }

    /// The payload bytes of an IPv4 packet (after the TCP/UDP header).
    fn payload(p: &[u8]) -> &[u8] {
        let headers = if p[9] == PROTO_TCP {
            20 + usize::from(p[32] >> 4) * 4
        } else {
            28
        };
        &p[headers..]
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
}
