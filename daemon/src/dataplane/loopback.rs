//! Two engines wired back to back in memory, with no sockets and no TUN: the harness of the
//! counting-allocator test (`daemon/tests/dataplane_alloc.rs`) and the criterion bench
//! (`daemon/benches/dataplane.rs`), which drive the daemon's own [`super::path`] functions; and
//! the TCP segments of the GRO tests and bench (`daemon/benches/gro.rs`).
//!
//! Side A routes 10.1.0.0/24 -> 10.2.0.0/24 over one tunnel to side B. Time is explicit: the
//! pair keeps a virtual `now` that only [`EnginePair::establish`] advances.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tandem_engine::checksum::{checksum, finish, pseudo_header, sum};
use tandem_engine::inner::{IPV4_HEADER_LEN, PROTO_TCP, PROTO_UDP, TCP_HEADER_LEN};
use tandem_engine::{ConnectionConfig, Engine, EngineConfig, TunnelConfig, TunnelId, TunnelState};
use zeroize::Zeroizing;

use super::batch::{Batch, SlotDest};

/// Side A's tunnel endpoint (never bound: the pair moves datagrams itself).
pub const A_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4500);
/// Side B's tunnel endpoint.
pub const B_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 4500);
/// The one tunnel's id on both sides.
pub const TUNNEL: TunnelId = TunnelId(0);

fn config(
    private: [u8; 32],
    peer_public: [u8; 32],
    local: &str,
    remote: &str,
    local_addr: SocketAddr,
    remote_addr: SocketAddr,
) -> EngineConfig {
    let mut c = ConnectionConfig::with_defaults("bench");
    c.local_subnets = local.parse().into_iter().collect();
    c.remote_subnets = remote.parse().into_iter().collect();
    c.tunnels.push(TunnelConfig {
        name: "t1".into(),
        local: Some(local_addr),
        remote: Some(remote_addr),
        peer_public_key: peer_public,
        psk: Zeroizing::new([9u8; 32]),
        priority: 1,
        ike: None,
    });
    EngineConfig {
        private_key: Zeroizing::new(private),
        mtu: 1400,
        connections: vec![c],
    }
}

/// Two engines with an established tunnel between them.
#[derive(Debug)]
pub struct EnginePair {
    /// Side A (10.1.0.0/24).
    pub a: Engine,
    /// Side B (10.2.0.0/24).
    pub b: Engine,
    /// Virtual time.
    pub now: Instant,
    scratch: Box<[u8]>,
}

impl Default for EnginePair {
    fn default() -> Self {
        Self::new()
    }
}

impl EnginePair {
    /// Two fresh engines (fixed keys: this is a test harness).
    pub fn new() -> Self {
        let ka = [0x11u8; 32];
        let kb = [0x22u8; 32];
        let pa = x25519_dalek::x25519(ka, x25519_dalek::X25519_BASEPOINT_BYTES);
        let pb = x25519_dalek::x25519(kb, x25519_dalek::X25519_BASEPOINT_BYTES);
        let now = Instant::now();
        let unix = Duration::from_secs(1_800_000_000);
        let a = Engine::new(
            config(ka, pb, "10.1.0.0/24", "10.2.0.0/24", A_ADDR, B_ADDR),
            [1; 32],
            now,
            unix,
        );
        let b = Engine::new(
            config(kb, pa, "10.2.0.0/24", "10.1.0.0/24", B_ADDR, A_ADDR),
            [2; 32],
            now,
            unix,
        );
        EnginePair {
            a,
            b,
            now,
            scratch: vec![0u8; 2048].into_boxed_slice(),
        }
    }

    /// Exchange control packets (virtual time, 10 ms steps) until the tunnel is Up on both
    /// sides. Returns false if it never came up within 10 virtual seconds.
    pub fn establish(&mut self) -> bool {
        for _ in 0..1000 {
            self.now += Duration::from_millis(10);
            let now = self.now;
            for e in [&mut self.a, &mut self.b] {
                if e.poll_timeout().is_some_and(|t| t <= now) {
                    e.handle_timeout(now);
                }
            }
            for _ in 0..4 {
                while let Some(t) = self.a.poll_transmit(&mut self.scratch) {
                    let _ =
                        self.b
                            .handle_datagram(TUNNEL, A_ADDR, &mut self.scratch, 0..t.len, now);
                }
                while let Some(t) = self.b.poll_transmit(&mut self.scratch) {
                    let _ =
                        self.a
                            .handle_datagram(TUNNEL, B_ADDR, &mut self.scratch, 0..t.len, now);
                }
            }
            while self.a.poll_event().is_some() {}
            while self.b.poll_event().is_some() {}
            if self.a.tunnel_state(TUNNEL) == Some(TunnelState::Up)
                && self.b.tunnel_state(TUNNEL) == Some(TunnelState::Up)
            {
                return true;
            }
        }
        false
    }
}

/// Write an IPv4/UDP packet of `len` bytes (>= 28) from `src` to `dst` at `buf[..len]`, with a
/// valid header checksum. Returns `len`.
pub fn write_ipv4_udp(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> usize {
    let len = len.max(28);
    let b = &mut buf[..len];
    b.fill(0xab);
    b[0] = 0x45;
    b[1] = 0;
    b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    b[4..6].copy_from_slice(&[0, 1]);
    b[6..8].copy_from_slice(&[0x40, 0]); // DF
    b[8] = 64;
    b[9] = PROTO_UDP;
    b[10..12].copy_from_slice(&[0, 0]);
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&b[..IPV4_HEADER_LEN]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b[20..22].copy_from_slice(&40000u16.to_be_bytes());
    b[22..24].copy_from_slice(&9u16.to_be_bytes());
    b[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    b[26..28].copy_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    len
}

/// An IPv4/TCP segment from side A's 10.1.0.5:5001 to side B's 10.2.0.7:40000 with a 32-byte
/// TCP header (the timestamps option, as Linux sends), sequence number `seq`, TCP `flags`, and
/// `payload` bytes of `fill`; its IPv4 and TCP checksums are valid. For the GRO tests and bench.
pub fn ipv4_tcp_segment(seq: u32, flags: u8, payload: usize, fill: u8) -> Vec<u8> {
    const TCP_TIMESTAMPS_LEN: usize = TCP_HEADER_LEN + 12;
    let headers = IPV4_HEADER_LEN + TCP_TIMESTAMPS_LEN;
    let total = headers + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = PROTO_TCP;
    p[12..16].copy_from_slice(&[10, 1, 0, 5]);
    p[16..20].copy_from_slice(&[10, 2, 0, 7]);
    let c = checksum(&p[..IPV4_HEADER_LEN]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut p[IPV4_HEADER_LEN..];
    t[0..2].copy_from_slice(&5001u16.to_be_bytes());
    t[2..4].copy_from_slice(&40000u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&77u32.to_be_bytes()); // ack
    t[12] = ((TCP_TIMESTAMPS_LEN / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes()); // window
    // NOP, NOP, timestamps (RFC 7323 §3): kind 8, length 10, TSval 1, TSecr 2.
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    t[32..].fill(fill);
    let acc = pseudo_header(&p[12..20], PROTO_TCP, (total - IPV4_HEADER_LEN) as u32);
    let c = finish(sum(acc, &p[IPV4_HEADER_LEN..]));
    p[IPV4_HEADER_LEN + 16..IPV4_HEADER_LEN + 18].copy_from_slice(&c.to_be_bytes());
    p
}

/// Fill every slot of `batch` with a `len`-byte IPv4/UDP packet from `src` to `dst`, at
/// `HEADROOM`, as a TUN read would.
pub fn fill_from_tun(batch: &mut Batch, src: Ipv4Addr, dst: Ipv4Addr, len: usize) {
    for slot in &mut batch.slots {
        let start = tandem_engine::HEADROOM;
        slot.len = write_ipv4_udp(&mut slot.buf[start..], src, dst, len);
        slot.start = start;
        slot.dest = SlotDest::None;
    }
    batch.filled = batch.slots.len();
}

/// "The wire": copy every datagram tagged for a socket in `from` into `to` at `HEADROOM`, as
/// `recvmmsg` would, with `src` as the sender. Returns how many were moved.
pub fn wire(from: &mut Batch, to: &mut Batch, src: SocketAddr) -> usize {
    let head = tandem_engine::HEADROOM;
    let mut n = 0;
    for i in 0..from.filled {
        let s = &from.slots[i];
        if let SlotDest::Socket(_) = s.dest {
            let d = &mut to.slots[n];
            d.buf[head..head + s.len].copy_from_slice(&s.buf[s.start..s.start + s.len]);
            d.start = head;
            d.len = s.len;
            d.addr = src;
            d.dest = SlotDest::None;
            n += 1;
        }
    }
    from.filled = 0;
    to.filled = n;
    n
}
