//! The userspace WAN emulator (netns-tests/README.md): this kernel has no netem and no nfqueue, so delay,
//! jitter, reordering, duplication, corruption (and loss) are applied by a small program of ours.
//!
//! Flow: in an `isp` namespace, policy routing (`ip rule iif <link> lookup 100`, table 100:
//! `default dev emu0`) sends every packet forwarded between the gateways into a TUN device. The
//! emulator (a helper process inside that namespace) reads each packet, decides its fate from a
//! seeded xorshift RNG, and puts it into a time-ordered queue; a second thread writes each packet
//! back into the TUN when its time comes. Written-back packets arrive with `iif emu0`, which no
//! rule matches, so the main table forwards them on. Per packet:
//! - loss with probability `loss-pct`;
//! - release time = now + `delay-ms` + uniform(0, `jitter-ms`) (jitter alone reorders, as on a
//!   real path with per-packet delay variation);
//! - with probability `reorder-pct`, `reorder-extra-ms` more, so the packet lands behind later ones;
//! - with probability `dup-pct`, a second copy released with it;
//! - with probability `corrupt-pct`, one bit flipped past the IP + transport headers (the
//!   transport checksum catches it at the receiver: `InCsumErrors`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::Error;
use crate::helper::{helper_command, parse_opts};
use crate::netns::Netns;
use crate::process::Bg;

/// Routing table used for the policy route into the emulator.
pub const EMU_TABLE: &str = "100";
/// Name of the emulator's TUN device.
pub const EMU_DEV: &str = "emu0";

/// Impairment settings (all percentages 0..=100).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impair {
    /// Fixed one-way delay added to every packet.
    pub delay: Duration,
    /// Uniform random extra delay, 0..=jitter.
    pub jitter: Duration,
    /// Percentage of packets held back by `reorder_extra`.
    pub reorder_pct: u8,
    /// Extra delay of a reordered packet.
    pub reorder_extra: Duration,
    /// Percentage of packets duplicated.
    pub dup_pct: u8,
    /// Percentage of packets with one bit flipped.
    pub corrupt_pct: u8,
    /// Percentage of packets dropped.
    pub loss_pct: u8,
}

impl Impair {
    fn to_args(self) -> Vec<String> {
        vec![
            "--delay-us".into(),
            self.delay.as_micros().to_string(),
            "--jitter-us".into(),
            self.jitter.as_micros().to_string(),
            "--reorder-pct".into(),
            self.reorder_pct.to_string(),
            "--reorder-extra-us".into(),
            self.reorder_extra.as_micros().to_string(),
            "--dup-pct".into(),
            self.dup_pct.to_string(),
            "--corrupt-pct".into(),
            self.corrupt_pct.to_string(),
            "--loss-pct".into(),
            self.loss_pct.to_string(),
        ]
    }
}

/// xorshift64*: small, seeded, good enough for impairment decisions.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pct(&mut self, p: u8) -> bool {
        p > 0 && self.next() % 100 < u64::from(p)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % (n + 1) }
    }
}

/// Offset of the first payload byte past the IP and transport headers (or the last byte).
fn payload_offset(pkt: &[u8]) -> usize {
    let ip_hdr = match pkt.first().map(|b| b >> 4) {
        Some(4) => usize::from(pkt[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => 0,
    };
    // 20 covers TCP without options and UDP (8) with room to spare.
    (ip_hdr + 20).min(pkt.len().saturating_sub(1))
}

type Queue = (Mutex<BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>>, Condvar);

/// `probe wanem [--dev emu0] [--seed N] [--delay-us …] …`: creates the TUN, prints `ready`, then
/// impairs until killed.
pub fn wanem_main(args: &[String]) -> Result<(), String> {
    let opts = parse_opts(args)?;
    let get = |k: &str| -> Result<u64, String> {
        match opts.iter().find(|(key, _)| key == k) {
            Some((_, v)) => v.parse().map_err(|_| format!("bad --{k} {v}")),
            None => Ok(0),
        }
    };
    let pct = |k: &str| -> Result<u8, String> { Ok(get(k)?.min(100) as u8) };
    let imp = Impair {
        delay: Duration::from_micros(get("delay-us")?),
        jitter: Duration::from_micros(get("jitter-us")?),
        reorder_pct: pct("reorder-pct")?,
        reorder_extra: Duration::from_micros(get("reorder-extra-us")?),
        dup_pct: pct("dup-pct")?,
        corrupt_pct: pct("corrupt-pct")?,
        loss_pct: pct("loss-pct")?,
    };
    let dev_name = opts
        .iter()
        .find(|(k, _)| k == "dev")
        .map_or(EMU_DEV.to_string(), |(_, v)| v.clone());
    let seed = get("seed")?.max(1);

    let dev = tun_rs::DeviceBuilder::new()
        .name(dev_name.clone())
        .mtu(9000)
        .build_sync()
        .map_err(|e| format!("create TUN {dev_name}: {e}"))?;
    let dev = Arc::new(dev);
    #[allow(clippy::print_stdout)]
    {
        println!("ready");
    }

    let queue: Arc<Queue> = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
    let writer = {
        let dev = dev.clone();
        let queue = queue.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let (lock, cv) = &*queue;
            let mut q = lock.lock().map_err(|_| "poisoned")?;
            loop {
                let now = Instant::now();
                match q.peek() {
                    Some(Reverse((at, _, _))) if *at <= now => {
                        if let Some(Reverse((_, _, pkt))) = q.pop() {
                            // A write error (e.g. the device going away at teardown) drops it.
                            let _ = dev.send(&pkt);
                        }
                    }
                    Some(Reverse((at, _, _))) => {
                        let wait = *at - now;
                        q = cv.wait_timeout(q, wait).map_err(|_| "poisoned")?.0;
                    }
                    None => q = cv.wait(q).map_err(|_| "poisoned")?,
                }
            }
        })
    };

    let mut rng = Rng(seed);
    let mut order: u64 = 0;
    let mut buf = vec![0u8; 65536];
    loop {
        if writer.is_finished() {
            return Err("writer thread ended".into());
        }
        let n = dev.recv(&mut buf).map_err(|e| format!("read TUN: {e}"))?;
        if rng.pct(imp.loss_pct) {
            continue;
        }
        let mut pkt = buf[..n].to_vec();
        if rng.pct(imp.corrupt_pct) && !pkt.is_empty() {
            let off = payload_offset(&pkt);
            pkt[off] ^= 1 << (rng.next() % 8);
        }
        let mut at = Instant::now()
            + imp.delay
            + Duration::from_micros(rng.below(imp.jitter.as_micros() as u64));
        if rng.pct(imp.reorder_pct) {
            at += imp.reorder_extra;
        }
        let dup = rng.pct(imp.dup_pct);
        let (lock, cv) = &*queue;
        let mut q = lock.lock().map_err(|_| "poisoned")?;
        if dup {
            q.push(Reverse((at, order, pkt.clone())));
            order += 1;
        }
        q.push(Reverse((at, order, pkt)));
        order += 1;
        cv.notify_one();
    }
}

/// A running WAN emulator in an `isp` namespace, with the policy routes that feed it. Dropping
/// it removes the rules and stops the emulator (the TUN disappears with the process).
#[derive(Debug)]
pub struct WanEmulator<'a> {
    ns: &'a Netns,
    ifaces: Vec<String>,
    bg: Bg,
}

impl<'a> WanEmulator<'a> {
    /// Starts the emulator in `ns` and routes everything that arrives on `ifaces` through it.
    pub fn start(ns: &'a Netns, ifaces: &[&str], imp: Impair) -> Result<Self, Error> {
        let mut cmd = helper_command(ns, "wanem");
        cmd.args(imp.to_args())
            .args(["--dev", EMU_DEV])
            .stdout(std::process::Stdio::null());
        let mut bg = Bg::spawn(cmd)?;
        // Wait for "ready" (the TUN exists).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if ns.ip(["link", "show", EMU_DEV]).is_ok() {
                break;
            }
            if !bg.is_running() || Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "WAN emulator in {} did not create {EMU_DEV}",
                    ns.name()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ns.ip(["link", "set", EMU_DEV, "up"])?;
        ns.sysctl(&format!("net.ipv4.conf.{EMU_DEV}.rp_filter"), "0")?;
        for fam in ["-4", "-6"] {
            ns.ip([
                fam, "route", "add", "default", "dev", EMU_DEV, "table", EMU_TABLE,
            ])?;
            for ifc in ifaces {
                ns.ip([fam, "rule", "add", "iif", ifc, "lookup", EMU_TABLE])?;
            }
        }
        Ok(WanEmulator {
            ns,
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            bg,
        })
    }

    /// The emulator process (for CPU figures).
    pub fn process(&self) -> &Bg {
        &self.bg
    }
}

impl Drop for WanEmulator<'_> {
    fn drop(&mut self) {
        for fam in ["-4", "-6"] {
            for ifc in &self.ifaces {
                let _ = self
                    .ns
                    .ip([fam, "rule", "del", "iif", ifc, "lookup", EMU_TABLE]);
            }
        }
        self.bg.kill();
    }
}
