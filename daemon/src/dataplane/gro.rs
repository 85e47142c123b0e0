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
//! as it came. Segments were authenticated by the AEAD, so their bytes are the sender's.
//!
//! One copy per coalesced segment (its payload into the super-packet buffer) replaces one
//! syscall and one trip through the kernel's receive path.

/// Length of the virtio-net header that precedes a TUN write with `IFF_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
/// Most segments in one super-packet (Linux caps GRO at 64 segments per skb).
pub const MAX_SEGMENTS: usize = 64;
/// Largest super-packet: the IPv4 total-length field.
const MAX_PACKET: usize = 65_535;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
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
}

impl Default for TunGro {
    fn default() -> Self {
        Self::new()
    }
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
    if p.len() <= 28 || p[0] != 0x45 || p[9] != PROTO_UDP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let udp_len = usize::from(u16::from_be_bytes([p[24], p[25]]));
    if total != p.len() || udp_len != total - 20 || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    Some(Seg {
        headers: 28,
        payload: total - 28,
        seq: 0,
        flags: 0,
        proto: PROTO_UDP,
    })
}

fn parse(p: &[u8], udp: bool) -> Option<Seg> {
    if udp && p.len() > 9 && p[9] == PROTO_UDP {
        return parse_udp(p);
    }
    if p.len() < 40 || p[0] != 0x45 || p[9] != PROTO_TCP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // No fragments: MF clear and offset 0 (DF may be set).
    if total != p.len() || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let thl = usize::from(p[32] >> 4) * 4;
    if thl < 20 || 20 + thl >= total {
        return None;
    }
    let flags = p[33];
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some(Seg {
        headers: 20 + thl,
        payload: total - 20 - thl,
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

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(b: &[u8], mut sum: u32) -> u32 {
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

impl TunGro {
    /// A writer with its buffer allocated once.
    pub fn new() -> Self {
        TunGro {
            buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
            run: None,
            udp: false,
        }
    }

    /// Coalesce UDP datagrams as well (only when the TUN accepts `GSO_UDP_L4`).
    pub fn with_udp(mut self, udp: bool) -> Self {
        self.udp = udp;
        self
    }

    /// Offer `pkt`. Returns false when it cannot be coalesced: the run in progress has then been
    /// flushed through `write`, and the caller writes `pkt` itself (after it, keeping order).
    pub fn push(&mut self, pkt: &[u8], write: &mut dyn FnMut(&[u8])) -> bool {
        let Some(seg) = parse(pkt, self.udp) else {
            self.flush(write);
            return false;
        };
        if let Some(run) = self.run {
            let cur = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + run.len];
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
            if same_flow && fits {
                let at = VNET_HDR_LEN + run.len;
                self.buf[at..at + seg.payload].copy_from_slice(&pkt[seg.headers..]);
                let run = self.run.as_mut().unwrap_or_else(|| unreachable!());
                run.len += seg.payload;
                run.last = seg.payload;
                run.count += 1;
                run.next_seq = seg.seq.wrapping_add(seg.payload as u32);
                if seg.flags & TCP_PSH != 0 {
                    run.closed = true;
                    self.buf[VNET_HDR_LEN + 33] |= TCP_PSH;
                }
                return true;
            }
            self.flush(write);
        }
        // Start a new run with this segment.
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
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
        let (hdr, pkt) = self.buf.split_at_mut(VNET_HDR_LEN);
        let pkt = &mut pkt[..run.len];
        hdr.fill(0);
        if run.count > 1 {
            pkt[2..4].copy_from_slice(&(run.len as u16).to_be_bytes());
            pkt[10..12].fill(0);
            let ip_sum = !fold(sum16(&pkt[..20], 0));
            pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
            // Checksum partial: the L4 checksum field holds the folded pseudo-header sum; the
            // kernel completes it (or trusts it for local delivery) per the virtio header.
            let l4_len = (run.len - 20) as u32;
            let pseudo = sum16(&pkt[12..20], u32::from(run.proto) + l4_len);
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
            hdr[6..8].copy_from_slice(&20u16.to_le_bytes()); // csum_start: the L4 header
            hdr[8..10].copy_from_slice(&csum_offset.to_le_bytes()); // its checksum field
        }
        write(&self.buf[..VNET_HDR_LEN + run.len]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn segment(seq: u32, payload: usize, flags: u8, fill: u8) -> Vec<u8> {
        let total = 20 + 32 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 1, 0, 5]);
        p[16..20].copy_from_slice(&[10, 2, 0, 7]);
        let s = !fold(sum16(&p[..20], 0));
        p[10..12].copy_from_slice(&s.to_be_bytes());
        p[20..22].copy_from_slice(&5001u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&77u32.to_be_bytes());
        p[32] = 8 << 4; // 32-byte header (timestamps option)
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p[52..].fill(fill);
        p
    }

    fn collect(gro: &mut TunGro, pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in pkts {
            let mut w = |b: &[u8]| out.push(b.to_vec());
            if !gro.push(p, &mut w) {
                let mut hdr = vec![0u8; VNET_HDR_LEN];
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
        let (hdr, p) = w.split_at(VNET_HDR_LEN);
        assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 52);
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000);
        assert_eq!(p.len(), 52 + 2400);
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert_eq!(
            fold(sum16(&p[..20], 0)),
            0xffff,
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
        let sizes: Vec<usize> = out.iter().map(|w| w.len() - VNET_HDR_LEN).collect();
        assert_eq!(sizes, vec![28 + 2600, 1028]);
        let (hdr, p) = out[0].split_at(VNET_HDR_LEN);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000);
        assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 6);
        assert_eq!(
            usize::from(u16::from_be_bytes([p[24], p[25]])),
            p.len() - 20
        );
        assert_eq!(fold(sum16(&p[..20], 0)), 0xffff);
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
        let sizes: Vec<usize> = out.iter().map(|w| w.len() - VNET_HDR_LEN).collect();
        assert_eq!(sizes, vec![1052, 1052 + 500, 552, 62]);
        // Single segments go out with an all-zero header and untouched bytes.
        assert!(out[0][..VNET_HDR_LEN].iter().all(|&b| b == 0));
        assert_eq!(&out[0][VNET_HDR_LEN..], &pkts[0][..]);
        assert_eq!(out[1][1], VIRTIO_NET_HDR_GSO_TCPV4);
    }
}
