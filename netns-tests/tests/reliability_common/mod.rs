//! Shared by the reliability suite (`tests/reliability_*.rs`): sockets opened inside a lab
//! namespace from a test thread (`setns`, so packets can come from anywhere in the lab), the
//! metrics endpoint, a daemon pair with metrics and extra config lines, real handshake messages
//! built with `tandem-crypto`, and a paced flood of hostile datagrams.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand_chacha::ChaCha20Rng;
use tandem_crypto::handshake::MAX_MESSAGE_LEN;
use tandem_crypto::rand_core::{Rng, SeedableRng};
use tandem_crypto::{Initiator, Psk, PublicKey, Spi, StaticSecret, Tai64N};
use tandem_netns_tests::netns::Netns;
use tandem_netns_tests::tandem::{Daemon, Side, TandemOpts, TandemPair, TandemSetup};
use tandem_netns_tests::topo::Lab;

/// Where each daemon serves its metrics, inside its own namespace.
pub const METRICS_PORT: u16 = 9810;

/// Runs `f` on a new thread that has joined `ns`'s network namespace; sockets it opens live there.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
}

/// [`spawn_in_netns`] and wait.
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().unwrap()
}

/// The Prometheus text of the daemon running in `ns`.
pub fn metrics(ns: &Netns) -> String {
    in_netns(ns, || {
        let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(out)
    })
}

/// Sum of the samples of `name` whose label set contains every string of `labels`. Panics when
/// no sample matches or a value does not parse: a renamed metric or label must fail the test, not
/// read as 0 (which would make every "nothing happened" assertion pass).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .collect();
    assert!(
        !samples.is_empty(),
        "no sample of {name} with labels {labels:?} in the metrics:\n{text}"
    );
    samples
        .iter()
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample {l:?}"))
        })
        .sum()
}

/// `tandem_dropped_packets_total` by reason. Panics when there is no sample at all or a value
/// does not parse (the daemon exports every reason, zeros included).
pub fn drops(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("tandem_dropped_packets_total{reason=\"") {
            let (reason, v) = rest
                .split_once("\"} ")
                .unwrap_or_else(|| panic!("unparsable drop sample {l:?}"));
            let v = v
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("unparsable drop count {l:?}"));
            m.insert(reason.to_string(), v);
        }
    }
    assert!(
        !m.is_empty(),
        "no tandem_dropped_packets_total in the metrics:\n{text}"
    );
    m
}

/// `after - before` for every reason (zeros kept). Panics when a reason is in one scrape only or
/// a counter went backwards (a restarted daemon: the delta would be meaningless).
pub fn drop_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the drop reasons changed between two scrapes"
    );
    after
        .iter()
        .map(|(k, v)| {
            let b = before[k];
            assert!(*v >= b, "drop counter {k} went backwards: {b} -> {v}");
            (k.clone(), v - b)
        })
        .collect()
}

/// The count for `reason` in a [`drops`] or [`drop_delta`] map; panics when the daemon does not
/// export that reason (a renamed label must not read as "no drops").
pub fn drop_count(d: &BTreeMap<String, u64>, reason: &str) -> u64 {
    *d.get(reason)
        .unwrap_or_else(|| panic!("no drop reason {reason:?} among {d:?}"))
}

/// The non-zero entries of a drop map, for messages.
pub fn nonzero(d: &BTreeMap<String, u64>) -> BTreeMap<&str, u64> {
    d.iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| (k.as_str(), *v))
        .collect()
}

/// Starts both daemons with metrics on [`METRICS_PORT`] and `conn_extra` (TOML lines) added to
/// the connection, and waits until both tunnels are Up on both sides.
pub fn start_pair(lab: &Lab, opts: TandemOpts, conn_extra: &str) -> TandemPair {
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    // The library's pair, restarted on the edited configs (so this keeps working however the
    // pair grows).
    let mut pair = TandemPair::start(lab, opts).unwrap();
    pair.cgw.stop();
    pair.vpcgw.stop();
    for side in [Side::Cgw, Side::Vpcgw] {
        pair.setup
            .edit_config(side, |t| {
                t.replacen(
                    "[control]\n",
                    &format!("[control]\nmetrics_listen = \"127.0.0.1:{METRICS_PORT}\"\n"),
                    1,
                )
                .replacen("mss_clamp = ", &format!("{conn_extra}mss_clamp = "), 1)
            })
            .unwrap();
    }
    pair.vpcgw = Daemon::start(&pair.setup, Side::Vpcgw, &lab.vpcgw).unwrap();
    pair.cgw = Daemon::start(&pair.setup, Side::Cgw, &lab.cgw).unwrap();
    pair.wait_both_up(Duration::from_secs(10)).unwrap();
    pair
}

/// The 32 bytes of a base64 key or PSK file.
pub fn key_file(setup: &TandemSetup, name: &str) -> [u8; 32] {
    let text = std::fs::read_to_string(setup.dir().join(name)).unwrap();
    let v = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    v.try_into().unwrap()
}

/// The base64 text of a key or PSK file.
pub fn key_file_text(setup: &TandemSetup, name: &str) -> String {
    std::fs::read_to_string(setup.dir().join(name))
        .unwrap()
        .trim()
        .to_string()
}

/// A side's static public key.
pub fn public_key(setup: &TandemSetup, side: Side) -> PublicKey {
    StaticSecret::from_bytes(key_file(setup, &format!("{}.key", side.name()))).public_key()
}

/// TAI64N for a wall-clock time.
pub fn tai64n(t: SystemTime) -> Tai64N {
    Tai64N::from_unix_duration(t.duration_since(UNIX_EPOCH).unwrap())
}

/// A genuine initiation from `from`'s key to `to` over tunnel `psk_file`, stamped `at`.
pub fn initiation(
    setup: &TandemSetup,
    from: Side,
    to: Side,
    psk_file: &str,
    at: SystemTime,
    seed: u8,
) -> Vec<u8> {
    let me = StaticSecret::from_bytes(key_file(setup, &format!("{}.key", from.name())));
    let psk = Psk::from_bytes(key_file(setup, psk_file));
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let mut out = [0u8; MAX_MESSAGE_LEN];
    let (_, n) = Initiator::start(
        &me,
        &public_key(setup, to),
        &psk,
        Spi::random(&mut rng),
        tai64n(at),
        None,
        &mut rng,
        &mut out,
    )
    .unwrap();
    out[..n].to_vec()
}

/// `n` initiations from strangers (fresh static keys, random PSKs) to `responder`: their mac1 is
/// valid (it is keyed by the responder's public key, which is public), so each reaches the
/// responder's DH unless the responder is under load and demands a cookie.
pub fn stranger_initiations(responder: PublicKey, n: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha20Rng::from_seed([77; 32]);
    (0..n)
        .map(|i| {
            let me = StaticSecret::generate(&mut rng);
            let psk = Psk::generate(&mut rng);
            let mut out = [0u8; MAX_MESSAGE_LEN];
            let (_, len) = Initiator::start(
                &me,
                &responder,
                &psk,
                Spi::random(&mut rng),
                Tai64N::from_unix(1_700_000_000 + i as u64, 0),
                None,
                &mut rng,
                &mut out,
            )
            .unwrap();
            out[..len].to_vec()
        })
        .collect()
}

/// Offset of mac1 in an initiation (mac1 and mac2 are its last 32 bytes).
pub fn mac1_offset(msg: &[u8]) -> usize {
    msg.len() - 32
}

/// Time one X25519 DH takes in this process (an initiation does two, plus hashing): the yardstick
/// for "costs no DH".
pub fn dh_cost() -> Duration {
    let responder = StaticSecret::from_bytes([3; 32]).public_key();
    let t = Instant::now();
    let n = 200;
    let _ = stranger_initiations(responder, n);
    // Two DHs and a key generation (one more scalar multiplication) per initiation.
    t.elapsed() / (n as u32 * 3)
}

/// One kind of hostile datagram.
#[derive(Debug, Clone)]
pub enum Junk {
    /// Random bytes of random length (0..=1400).
    Random,
    /// Shorter than an ESP header + ICV (0..=35 bytes) under a live SPI.
    Truncated(u32),
    /// Well-formed length, an SPI the daemon never announced.
    UnknownSpi,
    /// A live SPI, a sequence number ahead of the window, garbage ciphertext: fails the tag.
    ForgedEsp(u32),
    /// The non-ESP marker with a random type byte and random length.
    Control,
    /// Real-looking messages (e.g. initiations), sent in turn.
    Messages(Vec<Vec<u8>>),
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Send errors (a full queue).
    pub errors: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// A UDP socket bound to `addr` even if no interface holds it (`IP_TRANSPARENT`, root): a spoofed
/// source.
pub fn bind_any(addr: SocketAddr) -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )
    .unwrap();
    if addr.is_ipv4() {
        s.set_ip_transparent_v4(true).unwrap();
    } else {
        s.set_ip_transparent_v6(true).unwrap();
    }
    s.bind(&addr.into()).unwrap();
    s.into()
}

/// Sends `count` datagrams of the given kinds (in turn) at `rate` per second to `dst`, from
/// sockets bound to each of `sources` (in turn; port 0 = any), from inside `ns`. Returns at once.
pub fn flood(
    ns: &Netns,
    sources: Vec<SocketAddr>,
    dst: SocketAddr,
    kinds: Vec<Junk>,
    rate: u32,
    count: u64,
    seed: u8,
) -> JoinHandle<FloodReport> {
    spawn_in_netns(ns, move || {
        let socks: Vec<UdpSocket> = sources.iter().map(|&a| bind_any(a)).collect();
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let mut buf = vec![0u8; 1500];
        let mut rep = FloodReport::default();
        let start = Instant::now();
        let mut msg_i = 0usize;
        for i in 0..count {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let kind = &kinds[i as usize % kinds.len()];
            let len = match kind {
                Junk::Random => {
                    let n = (rng.next_u32() % 1401) as usize;
                    rng.fill_bytes(&mut buf[..n]);
                    n
                }
                Junk::Truncated(spi) => {
                    let n = (rng.next_u32() % 36) as usize;
                    rng.fill_bytes(&mut buf[..n]);
                    let s = spi.to_be_bytes();
                    let k = n.min(4);
                    buf[..k].copy_from_slice(&s[..k]);
                    n
                }
                Junk::UnknownSpi => {
                    let n = 36 + (rng.next_u32() % 200) as usize;
                    rng.fill_bytes(&mut buf[..n]);
                    // SPIs >= 256 that no tunnel uses (the daemon's are random: 2^-24 odds).
                    let spi = 0x0100_0000 | (rng.next_u32() & 0x00ff_ffff);
                    buf[..4].copy_from_slice(&spi.to_be_bytes());
                    n
                }
                Junk::ForgedEsp(spi) => {
                    let n = 36 + 4 * (rng.next_u32() % 50) as usize;
                    rng.fill_bytes(&mut buf[..n]);
                    buf[..4].copy_from_slice(&spi.to_be_bytes());
                    // A sequence number ahead of a young SA's window but below the 2^28 packet
                    // limit, so the replay pre-check passes and the AEAD tag is what rejects it.
                    let seq = 0x0100_0000u32 | (rng.next_u32() & 0x00ff_ffff);
                    buf[4..8].copy_from_slice(&seq.to_be_bytes());
                    buf[8..12].fill(0);
                    buf[12..16].copy_from_slice(&seq.to_be_bytes());
                    n
                }
                Junk::Control => {
                    let n = 5 + (rng.next_u32() % 200) as usize;
                    rng.fill_bytes(&mut buf[..n]);
                    buf[..4].fill(0);
                    buf[4] = [0u8, 1, 2, 3, 4, 255][(rng.next_u32() % 6) as usize];
                    n
                }
                Junk::Messages(msgs) => {
                    let m = &msgs[msg_i % msgs.len()];
                    msg_i += 1;
                    buf[..m.len()].copy_from_slice(m);
                    m.len()
                }
            };
            let sock = &socks[i as usize % socks.len()];
            match sock.send_to(&buf[..len], dst) {
                Ok(_) => rep.sent += 1,
                Err(_) => rep.errors += 1,
            }
        }
        rep.elapsed = start.elapsed();
        rep
    })
}

/// Makes `prefix` (e.g. "203.0.113.0/24") bindable in `ns`: many source addresses for one flood.
pub fn many_sources(ns: &Netns, prefix: &str, n: u8) -> Vec<SocketAddr> {
    ns.ip(["route", "add", "local", prefix, "dev", "lo"])
        .unwrap();
    let base: std::net::Ipv4Addr = prefix.split('/').next().unwrap().parse().unwrap();
    let o = base.octets();
    (1..=n)
        .map(|i| SocketAddr::new(IpAddr::from([o[0], o[1], o[2], i]), 0))
        .collect()
}

/// Both sides' status says both tunnels are Up.
pub fn both_up(pair: &TandemPair) -> bool {
    matches!((pair.cgw.status(), pair.vpcgw.status()), (Ok(a), Ok(b)) if a.both_up() && b.both_up())
}

/// Policy-routing table of the [`Corruptor`].
const CORRUPT_TABLE: &str = "101";

/// A corrupter on the path: in an `isp` namespace, IPv4 packets arriving on `iface` are routed
/// through a TUN device (as the lab's WAN emulator does) and every `every`-th ESP data packet gets
/// two 16-bit words of its ciphertext swapped. The swap keeps the UDP checksum valid (a ones'
/// complement sum does not depend on order), so the corruption gets past the kernel and only the
/// AEAD can catch it — unlike a single bit flip, which the receiver's UDP checksum drops first.
/// Counts exactly what it corrupted. Removed on drop.
pub struct Corruptor<'a> {
    ns: &'a Netns,
    iface: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    corrupted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Corruptor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Corruptor({} on {})", self.ns.name(), self.iface)
    }
}

impl<'a> Corruptor<'a> {
    /// Starts corrupting one ESP data packet in `every` arriving on `iface` in `ns`.
    pub fn start(ns: &'a Netns, iface: &str, every: u64) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let corrupted = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, corrupted, forwarded) = (stop.clone(), corrupted.clone(), forwarded.clone());
            spawn_in_netns(ns, move || {
                let dev = tun_rs::DeviceBuilder::new()
                    .name("rel0")
                    .mtu(9000)
                    .build_sync()
                    .unwrap();
                dev.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                let mut buf = vec![0u8; 65536];
                let mut esp_seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = match dev.recv(&mut buf) {
                        Ok(n) => n,
                        Err(_) => {
                            std::thread::sleep(Duration::from_micros(50));
                            continue;
                        }
                    };
                    let pkt = &mut buf[..n];
                    let ihl = usize::from(pkt[0] & 0x0f) * 4;
                    let is_udp = pkt[0] >> 4 == 4 && pkt[9] == 17 && n > ihl + 8;
                    if is_udp {
                        let p = ihl + 8; // UDP payload = ESP
                        // ESP data (not the non-ESP marker), with >= 8 bytes of ciphertext
                        // between the 16-byte header and the 16-byte ICV.
                        if pkt[p..p + 4] != [0, 0, 0, 0] && n >= p + 16 + 8 + 16 {
                            esp_seen += 1;
                            if esp_seen % every == 0 {
                                let (a, b) = (p + 16, p + 20);
                                if pkt[a..a + 2] == pkt[b..b + 2] {
                                    // Equal words: flip them in opposite directions instead
                                    // (+1 and -1 on the two words keep the sum too).
                                    let w = u16::from_be_bytes([pkt[a], pkt[a + 1]]);
                                    let up = w.wrapping_add(if w == 0xfffe { 2 } else { 1 });
                                    let down = w.wrapping_sub(if w == 0 { 2 } else { 1 });
                                    pkt[a..a + 2].copy_from_slice(&up.to_be_bytes());
                                    pkt[b..b + 2].copy_from_slice(&down.to_be_bytes());
                                } else {
                                    for i in 0..2 {
                                        pkt.swap(a + i, b + i);
                                    }
                                }
                                corrupted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    let _ = dev.send(pkt);
                    forwarded.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        ns.ip(["link", "set", "rel0", "up"]).unwrap();
        ns.sysctl("net.ipv4.conf.rel0.rp_filter", "0").unwrap();
        ns.ip([
            "-4",
            "route",
            "add",
            "default",
            "dev",
            "rel0",
            "table",
            CORRUPT_TABLE,
        ])
        .unwrap();
        ns.ip(["-4", "rule", "add", "iif", iface, "lookup", CORRUPT_TABLE])
            .unwrap();
        Corruptor {
            ns,
            iface: iface.to_string(),
            stop,
            corrupted,
            forwarded,
            thread: Some(thread),
        }
    }

    /// ESP packets corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.corrupted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Packets passed through so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Corruptor<'_> {
    fn drop(&mut self) {
        let _ = self.ns.ip([
            "-4",
            "rule",
            "del",
            "iif",
            &self.iface,
            "lookup",
            CORRUPT_TABLE,
        ]);
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
