//! Packet captures with tshark inside namespaces: the wire check (UDP 4500 decodes as ESP — the
//! RFC 3948 `udpencap` dissector does that by default for non-zero first words — and decrypts with
//! the SAs from tandem's key log) and the MSS of TCP SYNs.
//!
//! Key log (docs/protocol.md, written by `tandem run` when `TANDEM_KEYLOG=path` is set, mode 0600), one
//! line per SA as it is installed:
//! `<unix-seconds> <connection> <tunnel> <in|out> <outer-src-ip> <outer-dst-ip> 0x<SPI> aes256gcm16 <key 64 hex><salt 8 hex>`.
//! Each line becomes one entry of tshark's `esp_sa` table:
//! `"IPv4","<src>","<dst>","0x<SPI>","AES-GCM with 16 octet ICV [RFC4106]","0x<key><salt>","NULL",""`.
//! (tshark 4.0 has no ESN field; the ESN only enters the GCM tag's AAD, so decryption works.)

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::Error;
use crate::netns::{Netns, checked};
use crate::process::Bg;
use crate::tandem::{Side, TandemPair};
use crate::topo::{Family, Lab, vpc_ip};
use crate::traffic::ping;

/// A running tshark capture into a pcap file.
#[derive(Debug)]
pub struct Capture {
    bg: Bg,
    file: PathBuf,
}

impl Capture {
    /// Starts `tshark -i iface -f filter -w file` in `ns` and waits until it captures.
    pub fn start(ns: &Netns, iface: &str, filter: &str, file: &Path) -> Result<Self, Error> {
        let errlog = file.with_extension("err");
        let errf = std::fs::File::create(&errlog)
            .map_err(|e| Error::Io(errlog.display().to_string(), e))?;
        let mut cmd = ns.command("tshark");
        cmd.args(["-n", "-i", iface, "-f", filter, "-w"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(errf);
        let mut bg = Bg::spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let err = std::fs::read_to_string(&errlog).unwrap_or_default();
            if err.contains("Capturing on") {
                // dumpcap says so just before it starts reading; give it a moment.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(Capture {
                    bg,
                    file: file.to_path_buf(),
                });
            }
            if !bg.is_running() || Instant::now() > deadline {
                return Err(Error::Tandem(format!("tshark did not start: {err}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the capture (SIGINT, as a person would with ^C) and returns the pcap path.
    pub fn stop(mut self) -> PathBuf {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.bg.signal("INT");
        self.bg.stop(Duration::from_secs(3));
        self.file.clone()
    }
}

/// `tshark -r file args…`: the text output.
pub fn read(file: &Path, args: &[String]) -> Result<String, Error> {
    let mut cmd = std::process::Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(file).args(args);
    checked(cmd)
}

/// One SA from the key log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLogEntry {
    /// Tunnel name.
    pub tunnel: String,
    /// `in` or `out`.
    pub direction: String,
    /// Outer source address.
    pub src: IpAddr,
    /// Outer destination address.
    pub dst: IpAddr,
    /// The SPI.
    pub spi: u32,
    /// Key and salt, hex.
    pub key_salt_hex: String,
}

/// Parses a key log (docs/protocol.md format); malformed lines are errors.
pub fn parse_keylog(text: &str) -> Result<Vec<KeyLogEntry>, Error> {
    let mut v = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || Error::Parse(format!("key log line {line:?}"));
        if f.len() != 9 || f[7] != "aes256gcm16" || f[8].len() != 72 {
            return Err(bad());
        }
        let spi = u32::from_str_radix(f[6].trim_start_matches("0x"), 16).map_err(|_| bad())?;
        v.push(KeyLogEntry {
            tunnel: f[2].to_string(),
            direction: f[3].to_string(),
            src: f[4].parse().map_err(|_| bad())?,
            dst: f[5].parse().map_err(|_| bad())?,
            spi,
            key_salt_hex: f[8].to_string(),
        });
    }
    Ok(v)
}

/// The tshark options that decrypt the given SAs.
pub fn esp_decrypt_opts(sas: &[KeyLogEntry]) -> Vec<String> {
    let mut v = vec![
        "-o".to_string(),
        "esp.enable_encryption_decode:TRUE".to_string(),
    ];
    for sa in sas {
        let proto = if sa.src.is_ipv4() { "IPv4" } else { "IPv6" };
        v.push("-o".into());
        v.push(format!(
            "uat:esp_sa:\"{proto}\",\"{}\",\"{}\",\"0x{:08x}\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{}\",\"NULL\",\"\"",
            sa.src, sa.dst, sa.spi, sa.key_salt_hex
        ));
    }
    v
}

/// What the wire check saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EspCapture {
    /// Distinct SPIs of the ESP packets.
    pub spis: Vec<u32>,
    /// ESP packets captured.
    pub esp_packets: usize,
    /// ESP packets that decrypted to an ICMP echo request/reply between office and vpc.
    pub decrypted_icmp: usize,
    /// The pcap file (kept in the tandem directory until the pair is dropped).
    pub pcap: PathBuf,
}

/// Captures on isp1 (its link to cgw) while the office pings the vpc 20 times, then decodes the
/// capture as ESP and decrypts it with the cgw's key log.
pub fn capture_esp(lab: &Lab, pair: &TandemPair) -> Result<EspCapture, Error> {
    let file = pair.setup.dir().join("isp1.pcap");
    let cap = Capture::start(&lab.isp1, "cgw", "udp port 4500", &file)?;
    let r = ping(
        &lab.office,
        vpc_ip(Family::V4),
        20,
        Duration::from_millis(10),
    )?;
    let pcap = cap.stop();
    if r.received == 0 {
        return Err(Error::Tandem(format!("no ping got through: {r:?}")));
    }
    let spis_text = read(
        &pcap,
        &[
            "-Y".into(),
            "esp".into(),
            "-T".into(),
            "fields".into(),
            "-e".into(),
            "esp.spi".into(),
        ],
    )?;
    let mut spis: Vec<u32> = spis_text
        .lines()
        .filter_map(|l| u32::from_str_radix(l.trim().trim_start_matches("0x"), 16).ok())
        .collect();
    let esp_packets = spis.len();
    spis.sort_unstable();
    spis.dedup();
    let keylog_path = pair.setup.keylog_path(Side::Cgw);
    let keylog = std::fs::read_to_string(&keylog_path)
        .map_err(|e| Error::Io(keylog_path.display().to_string(), e))?;
    let sas = parse_keylog(&keylog)?;
    let mut args = esp_decrypt_opts(&sas);
    args.extend(
        ["-Y", "esp && icmp", "-T", "fields", "-e", "icmp.type"]
            .iter()
            .map(|s| s.to_string()),
    );
    let dec = read(&pcap, &args)?;
    let decrypted_icmp = dec
        .lines()
        .filter(|l| l.trim() == "8" || l.trim() == "0")
        .count();
    Ok(EspCapture {
        spis,
        esp_packets,
        decrypted_icmp,
        pcap,
    })
}

/// Captures TCP SYNs (without ACK) on `iface` in `ns` while `f` runs; returns their MSS values.
pub fn syn_mss(ns: &Netns, iface: &str, f: impl FnOnce()) -> Result<Vec<u32>, Error> {
    let dir = crate::tandem::TempDir::new("syn")?;
    let file = dir.path().join("syn.pcap");
    let cap = Capture::start(ns, iface, "tcp", &file)?;
    f();
    let pcap = cap.stop();
    let out = read(
        &pcap,
        &[
            // Reassembling a large iperf3 stream can take tshark minutes; we only read SYNs.
            "-o".into(),
            "tcp.desegment_tcp_streams:FALSE".into(),
            "-Y".into(),
            "tcp.flags.syn == 1 && tcp.flags.ack == 0".into(),
            "-T".into(),
            "fields".into(),
            "-e".into(),
            "tcp.options.mss_val".into(),
        ],
    )?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_key_log_line_becomes_a_tshark_esp_sa() {
        let key = "00".repeat(32) + "01020304";
        let line = format!(
            "1764000000 lab-vpc tunnel1 out 192.0.2.1 192.0.2.2 0x00000100 aes256gcm16 {key}\n"
        );
        let sas = parse_keylog(&line).unwrap();
        assert_eq!(sas.len(), 1);
        assert_eq!(sas[0].spi, 0x100);
        let opts = esp_decrypt_opts(&sas);
        assert_eq!(
            opts[3],
            format!(
                "uat:esp_sa:\"IPv4\",\"192.0.2.1\",\"192.0.2.2\",\"0x00000100\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{key}\",\"NULL\",\"\""
            )
        );
        assert!(parse_keylog("garbage line").is_err());
    }
}
