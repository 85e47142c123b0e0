//! nftables impairments: silent blackholes and random loss (netns-tests/README.md).
//!
//! A blackhole is the realistic failure: the link stays up, packets vanish. Each impairment is its
//! own `inet` table with a `prerouting` chain at priority -300 (ingress: before routing, for
//! forwarded and local traffic alike) and a `postrouting` chain at priority 300 (egress: after
//! everything else, for forwarded and locally generated traffic). Dropping the value deletes the
//! table, which heals the link.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::Error;
use crate::netns::Netns;

static NEXT_TABLE: AtomicU32 = AtomicU32::new(0);

/// Which direction(s) of an interface an impairment applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
    /// Both.
    Both,
}

/// An nftables drop rule set in a namespace; removed on drop.
#[derive(Debug)]
pub struct NftImpairment<'a> {
    ns: &'a Netns,
    table: String,
    healed: bool,
}

impl<'a> NftImpairment<'a> {
    /// Drops every packet on `iface` in `dir`: a silent blackhole.
    pub fn blackhole(ns: &'a Netns, iface: &str, dir: Direction) -> Result<Self, Error> {
        Self::install(ns, iface, dir, "drop")
    }

    /// Drops `pct` percent of the packets on `iface` in `dir`, at random.
    pub fn random_loss(ns: &'a Netns, iface: &str, dir: Direction, pct: u8) -> Result<Self, Error> {
        Self::install(
            ns,
            iface,
            dir,
            &format!("numgen random mod 100 < {} drop", pct.min(100)),
        )
    }

    fn install(ns: &'a Netns, iface: &str, dir: Direction, verdict: &str) -> Result<Self, Error> {
        let table = format!("tdm_imp_{}", NEXT_TABLE.fetch_add(1, Ordering::Relaxed));
        let mut chains = String::new();
        if matches!(dir, Direction::Ingress | Direction::Both) {
            chains += &format!(
                "  chain ingress {{ type filter hook prerouting priority -300; policy accept; iifname \"{iface}\" {verdict}; }}\n"
            );
        }
        if matches!(dir, Direction::Egress | Direction::Both) {
            chains += &format!(
                "  chain egress {{ type filter hook postrouting priority 300; policy accept; oifname \"{iface}\" {verdict}; }}\n"
            );
        }
        ns.nft(&format!("table inet {table} {{\n{chains}}}\n"))?;
        Ok(NftImpairment {
            ns,
            table,
            healed: false,
        })
    }

    /// Removes the rule now (same as dropping it), reporting errors.
    pub fn heal(mut self) -> Result<(), Error> {
        self.healed = true;
        self.ns
            .run("nft", ["delete", "table", "inet", &self.table])
            .map(|_| ())
    }
}

impl Drop for NftImpairment<'_> {
    fn drop(&mut self) {
        if self.healed {
            return;
        }
        let _ = self.ns.run("nft", ["delete", "table", "inet", &self.table]);
    }
}
