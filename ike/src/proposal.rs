//! Proposals: what tandem offers and accepts, in the strongSwan-style names the config uses
//! (`aes256gcm16-prfsha384-ecp384` for IKE, `aes256gcm16-ecp384` for ESP where the group is the
//! PFS group of rekeys), and how a responder picks one of the peer's offers.
//!
//! Policy: the responder walks the initiator's proposals in the initiator's order (RFC 7296
//! §2.7: they are listed by preference) and takes the first that matches one of ours. A peer
//! proposal matches when every transform type it contains has a transform we accept, and it
//! has every type we need; AEAD proposals carry no integrity transform, or only NONE
//! (RFC 5282 §8). Nothing weaker than our list is ever accepted: the selection can only pick
//! one of our configured proposals.

use std::fmt;
use std::str::FromStr;

use crate::keys::{DhGroup, Prf};
use crate::wire::{ATTR_KEY_LENGTH, Attribute, Proposal, ProtocolId, Transform, transform_type};

/// ENCR_AES_GCM_16 (RFC 5282 §8: transform ID 20).
pub const ENCR_AES_GCM_16: u16 = 20;
/// The only key size we negotiate (bits).
pub const AES_256: u16 = 256;
/// ESN transform "no extended sequence numbers" (RFC 7296 §3.3.2).
pub const ESN_NONE: u16 = 0;
/// ESN transform "extended sequence numbers".
pub const ESN_YES: u16 = 1;
/// Integrity transform NONE (RFC 7296 §3.3.2).
pub const INTEG_NONE: u16 = 0;

/// An IKE SA proposal: AES-256-GCM-16 with a PRF and a DH group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeProposal {
    /// The PRF.
    pub prf: Prf,
    /// The DH group.
    pub group: DhGroup,
}

/// An ESP proposal: AES-256-GCM-16 without ESN, and the PFS group for CREATE_CHILD_SA
/// (not used in IKE_AUTH, whose Child SA has no KE: RFC 7296 §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspProposal {
    /// The PFS group of rekeys, if any.
    pub pfs: Option<DhGroup>,
}

/// The IKE proposals offered when the config names none (the defaults, documented in
/// `docs/configuration.md` when the config gains the key).
pub const DEFAULT_IKE_PROPOSALS: [IkeProposal; 3] = [
    IkeProposal {
        prf: Prf::HmacSha384,
        group: DhGroup::Ecp384,
    },
    IkeProposal {
        prf: Prf::HmacSha256,
        group: DhGroup::Ecp256,
    },
    IkeProposal {
        prf: Prf::HmacSha256,
        group: DhGroup::Curve25519,
    },
];

/// The ESP proposals offered when the config names none.
pub const DEFAULT_ESP_PROPOSALS: [EspProposal; 3] = [
    EspProposal {
        pfs: Some(DhGroup::Ecp384),
    },
    EspProposal {
        pfs: Some(DhGroup::Ecp256),
    },
    EspProposal {
        pfs: Some(DhGroup::Curve25519),
    },
];

/// A proposal name that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported proposal {name:?}: {reason}")]
pub struct ProposalNameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn prf_name(p: Prf) -> &'static str {
    match p {
        Prf::HmacSha256 => "prfsha256",
        Prf::HmacSha384 => "prfsha384",
        Prf::HmacSha512 => "prfsha512",
    }
}

fn group_name(g: DhGroup) -> &'static str {
    match g {
        DhGroup::Ecp256 => "ecp256",
        DhGroup::Ecp384 => "ecp384",
        DhGroup::Curve25519 => "x25519",
    }
}

fn parse_group(s: &str) -> Option<DhGroup> {
    Some(match s {
        "ecp256" => DhGroup::Ecp256,
        "ecp384" => DhGroup::Ecp384,
        "x25519" | "curve25519" => DhGroup::Curve25519,
        _ => return None,
    })
}

impl fmt::Display for IkeProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aes256gcm16-{}-{}",
            prf_name(self.prf),
            group_name(self.group)
        )
    }
}

impl fmt::Display for EspProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pfs {
            Some(g) => write!(f, "aes256gcm16-{}", group_name(g)),
            None => f.write_str("aes256gcm16"),
        }
    }
}

impl FromStr for IkeProposal {
    type Err = ProposalNameError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let err = |reason| ProposalNameError {
            name: name.to_owned(),
            reason,
        };
        let mut parts = name.split('-');
        if parts.next() != Some("aes256gcm16") {
            return Err(err("the cipher must be aes256gcm16"));
        }
        let prf = match parts.next() {
            Some("prfsha256") => Prf::HmacSha256,
            Some("prfsha384") => Prf::HmacSha384,
            Some("prfsha512") => Prf::HmacSha512,
            _ => return Err(err("the PRF must be prfsha256, prfsha384 or prfsha512")),
        };
        let group = parts
            .next()
            .and_then(parse_group)
            .ok_or_else(|| err("the DH group must be ecp256, ecp384 or x25519"))?;
        if parts.next().is_some() {
            return Err(err("expected cipher-prf-group"));
        }
        Ok(Self { prf, group })
    }
}

impl FromStr for EspProposal {
    type Err = ProposalNameError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let err = |reason| ProposalNameError {
            name: name.to_owned(),
            reason,
        };
        let mut parts = name.split('-');
        if parts.next() != Some("aes256gcm16") {
            return Err(err("the cipher must be aes256gcm16"));
        }
        let pfs = match parts.next() {
            None => None,
            Some(g) => Some(
                parse_group(g)
                    .ok_or_else(|| err("the PFS group must be ecp256, ecp384 or x25519"))?,
            ),
        };
        if parts.next().is_some() {
            return Err(err("expected cipher[-group]"));
        }
        Ok(Self { pfs })
    }
}

fn aes256gcm16() -> Transform {
    Transform {
        ty: transform_type::ENCR,
        id: ENCR_AES_GCM_16,
        attributes: vec![Attribute::Tv {
            ty: ATTR_KEY_LENGTH,
            value: AES_256,
        }],
    }
}

impl IkeProposal {
    /// The wire form, numbered `number`, without SPI (IKE_SA_INIT).
    pub fn to_wire(&self, number: u8) -> Proposal {
        Proposal {
            number,
            protocol: ProtocolId::Ike,
            spi: Vec::new(),
            transforms: vec![
                aes256gcm16(),
                Transform::new(transform_type::PRF, self.prf.id()),
                Transform::new(transform_type::DH, self.group.id()),
            ],
        }
    }
}

impl IkeProposal {
    /// The wire form for an IKE SA rekey in CREATE_CHILD_SA (RFC 7296 §1.3.2): with the new
    /// SA's 8-byte SPI.
    pub fn to_wire_rekey(&self, number: u8, spi: u64) -> Proposal {
        let mut p = self.to_wire(number);
        p.spi = spi.to_be_bytes().to_vec();
        p
    }
}

impl EspProposal {
    /// The wire form for CREATE_CHILD_SA (RFC 7296 §1.3.1): like IKE_AUTH's, plus the PFS group
    /// as a DH transform when there is one.
    pub fn to_wire_create_child(&self, number: u8, spi: u32) -> Proposal {
        let mut p = self.to_wire_ike_auth(number, spi);
        if let Some(g) = self.pfs {
            p.transforms
                .insert(1, Transform::new(transform_type::DH, g.id()));
        }
        p
    }

    /// The wire form for IKE_AUTH (no DH transform: RFC 7296 §1.2), numbered `number`, with our
    /// inbound SPI.
    pub fn to_wire_ike_auth(&self, number: u8, spi: u32) -> Proposal {
        Proposal {
            number,
            protocol: ProtocolId::Esp,
            spi: spi.to_be_bytes().to_vec(),
            transforms: vec![aes256gcm16(), Transform::new(transform_type::ESN, ESN_NONE)],
        }
    }
}

fn has_aes256gcm16(p: &Proposal) -> bool {
    p.transforms.iter().any(|t| {
        t.ty == transform_type::ENCR
            && t.id == ENCR_AES_GCM_16
            && t.key_length() == Some(AES_256)
            && t.attributes.len() == 1
    })
}

fn integ_ok(p: &Proposal) -> bool {
    let mut integ = p
        .transforms
        .iter()
        .filter(|t| t.ty == transform_type::INTEG)
        .peekable();
    integ.peek().is_none()
        || p.transforms
            .iter()
            .any(|t| t.ty == transform_type::INTEG && t.id == INTEG_NONE)
}

fn has(p: &Proposal, ty: u8, id: u16) -> bool {
    p.transforms.iter().any(|t| t.ty == ty && t.id == id)
}

fn only_types(p: &Proposal, allowed: &[u8]) -> bool {
    p.transforms.iter().all(|t| allowed.contains(&t.ty))
}

/// Why the responder cannot accept an IKE SA offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IkeSelectError {
    /// No offer matches any of ours.
    NoProposalChosen,
    /// An offer matches, but the KE payload is for another group: ask for this one
    /// (RFC 7296 §1.2, INVALID_KE_PAYLOAD).
    InvalidKe(DhGroup),
}

/// Picks an IKE proposal from `offered` for a KE payload of group `ke_group`; returns the
/// offer's number and our matching proposal.
pub fn select_ike(
    ours: &[IkeProposal],
    offered: &[Proposal],
    ke_group: u16,
) -> Result<(u8, IkeProposal), IkeSelectError> {
    let mut fallback = None;
    for p in offered {
        if p.protocol != ProtocolId::Ike
            || !p.spi.is_empty()
            || !has_aes256gcm16(p)
            || !integ_ok(p)
            || !only_types(
                p,
                &[
                    transform_type::ENCR,
                    transform_type::PRF,
                    transform_type::INTEG,
                    transform_type::DH,
                ],
            )
        {
            continue;
        }
        for o in ours {
            if has(p, transform_type::PRF, o.prf.id()) && has(p, transform_type::DH, o.group.id()) {
                if o.group.id() == ke_group {
                    return Ok((p.number, *o));
                }
                fallback.get_or_insert(o.group);
            }
        }
    }
    Err(match fallback {
        Some(g) => IkeSelectError::InvalidKe(g),
        None => IkeSelectError::NoProposalChosen,
    })
}

/// Picks an ESP proposal for the IKE_AUTH Child SA from `offered`; returns the offer's number,
/// the peer's SPI and our matching proposal. DH transforms in the offer are ignored (IKE_AUTH
/// has no KE, RFC 7296 §1.2); ESN must be offerable as "none".
pub fn select_esp_ike_auth(
    ours: &[EspProposal],
    offered: &[Proposal],
) -> Option<(u8, u32, EspProposal)> {
    let first = ours.first()?;
    for p in offered {
        if p.protocol != ProtocolId::Esp
            || !has_aes256gcm16(p)
            || !integ_ok(p)
            || !has(p, transform_type::ESN, ESN_NONE)
            || !only_types(
                p,
                &[
                    transform_type::ENCR,
                    transform_type::INTEG,
                    transform_type::DH,
                    transform_type::ESN,
                ],
            )
        {
            continue;
        }
        let Ok(spi) = <[u8; 4]>::try_from(p.spi.as_slice()) else {
            continue;
        };
        let spi = u32::from_be_bytes(spi);
        if spi < 256 {
            continue; // 1..=255 are reserved (RFC 4303 §2.1)
        }
        return Some((p.number, spi, *first));
    }
    None
}

/// The registry name of a transform, for log lines naming what a peer offered.
fn transform_name(t: &Transform) -> String {
    use transform_type as tt;
    let base = match (t.ty, t.id) {
        (tt::ENCR, 3) => "3DES".into(),
        (tt::ENCR, 12) => "AES_CBC".into(),
        (tt::ENCR, 13) => "AES_CTR".into(),
        (tt::ENCR, 18) => "AES_GCM_8".into(),
        (tt::ENCR, 19) => "AES_GCM_12".into(),
        (tt::ENCR, 20) => "AES_GCM_16".into(),
        (tt::ENCR, 28) => "CHACHA20_POLY1305".into(),
        (tt::PRF, 1) => "PRF_HMAC_MD5".into(),
        (tt::PRF, 2) => "PRF_HMAC_SHA1".into(),
        (tt::PRF, 5) => "PRF_HMAC_SHA2_256".into(),
        (tt::PRF, 6) => "PRF_HMAC_SHA2_384".into(),
        (tt::PRF, 7) => "PRF_HMAC_SHA2_512".into(),
        (tt::INTEG, 0) => "INTEG_NONE".into(),
        (tt::INTEG, 1) => "HMAC_MD5_96".into(),
        (tt::INTEG, 2) => "HMAC_SHA1_96".into(),
        (tt::INTEG, 12) => "HMAC_SHA2_256_128".into(),
        (tt::INTEG, 13) => "HMAC_SHA2_384_192".into(),
        (tt::INTEG, 14) => "HMAC_SHA2_512_256".into(),
        (tt::DH, 0) => "DH_NONE".into(),
        (tt::DH, 1) => "MODP_768".into(),
        (tt::DH, 2) => "MODP_1024".into(),
        (tt::DH, 5) => "MODP_1536".into(),
        (tt::DH, 14) => "MODP_2048".into(),
        (tt::DH, 19) => "ECP_256".into(),
        (tt::DH, 20) => "ECP_384".into(),
        (tt::DH, 21) => "ECP_521".into(),
        (tt::DH, 31) => "CURVE25519".into(),
        (tt::ESN, 0) => "NO_ESN".into(),
        (tt::ESN, 1) => "ESN".into(),
        (ty, id) => format!("T{ty}:{id}"),
    };
    match t.key_length() {
        Some(k) => format!("{base}_{k}"),
        None => base,
    }
}

/// A one-line description of an SA offer, for the log line that says why a peer got
/// NO_PROPOSAL_CHOSEN, e.g. `#1 IKE: AES_CBC_128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024`.
pub fn describe(offered: &[Proposal]) -> String {
    if offered.is_empty() {
        return "no proposals".into();
    }
    offered
        .iter()
        .map(|p| {
            let proto = match p.protocol {
                ProtocolId::Ike => "IKE",
                ProtocolId::Ah => "AH",
                ProtocolId::Esp => "ESP",
            };
            let ts: Vec<String> = p.transforms.iter().map(transform_name).collect();
            format!("#{} {proto}: {}", p.number, ts.join("/"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which of our IKE proposals a responder's single chosen proposal is, if any.
pub fn match_ike_response(ours: &[IkeProposal], chosen: &Proposal) -> Option<IkeProposal> {
    if chosen.protocol != ProtocolId::Ike || !has_aes256gcm16(chosen) || !integ_ok(chosen) {
        return None;
    }
    let count = |ty| chosen.transforms.iter().filter(|t| t.ty == ty).count();
    if count(transform_type::PRF) != 1
        || count(transform_type::DH) != 1
        || count(transform_type::ENCR) != 1
    {
        return None;
    }
    ours.iter()
        .find(|o| {
            has(chosen, transform_type::PRF, o.prf.id())
                && has(chosen, transform_type::DH, o.group.id())
        })
        .copied()
}

/// Whether a responder's chosen ESP proposal is one we offered in IKE_AUTH; its SPI.
pub fn match_esp_response(chosen: &Proposal) -> Option<u32> {
    if chosen.protocol != ProtocolId::Esp
        || !has_aes256gcm16(chosen)
        || !integ_ok(chosen)
        || !has(chosen, transform_type::ESN, ESN_NONE)
    {
        return None;
    }
    if chosen
        .transforms
        .iter()
        .any(|t| t.ty == transform_type::DH && t.id != 0)
    {
        return None;
    }
    let spi = u32::from_be_bytes(<[u8; 4]>::try_from(chosen.spi.as_slice()).ok()?);
    (spi >= 256).then_some(spi)
}

/// What a CREATE_CHILD_SA responder picked, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RekeySelect<T> {
    /// The offer's number, the peer's SPI (4 bytes for ESP, 8 for IKE, as a u64) and ours.
    Chosen(u8, u64, T),
    /// An offer matches, but the KE payload is for another group: ask for this one.
    InvalidKe(DhGroup),
    /// Nothing matches.
    NoProposalChosen,
}

fn peer_spi(p: &Proposal, len: usize) -> Option<u64> {
    if p.spi.len() != len {
        return None;
    }
    let mut b = [0u8; 8];
    b[8 - len..].copy_from_slice(&p.spi);
    let v = u64::from_be_bytes(b);
    // ESP SPIs 1..=255 are reserved (RFC 4303 §2.1); an IKE SPI is never zero.
    (v >= 256 || (len == 8 && v != 0)).then_some(v)
}

/// Picks an ESP proposal for a CREATE_CHILD_SA (new or rekeyed Child SA) with a KE payload of
/// `ke_group` (`None`: no KE, so only proposals without PFS match). A DH transform in the offer
/// must be our PFS group; NONE or no DH transform matches a proposal without PFS.
pub fn select_esp_create_child(
    ours: &[EspProposal],
    offered: &[Proposal],
    ke_group: Option<u16>,
) -> RekeySelect<EspProposal> {
    let mut fallback = None;
    for p in offered {
        if p.protocol != ProtocolId::Esp
            || !has_aes256gcm16(p)
            || !integ_ok(p)
            || !has(p, transform_type::ESN, ESN_NONE)
            || !only_types(
                p,
                &[
                    transform_type::ENCR,
                    transform_type::INTEG,
                    transform_type::DH,
                    transform_type::ESN,
                ],
            )
        {
            continue;
        }
        let Some(spi) = peer_spi(p, 4) else { continue };
        let no_dh = p
            .transforms
            .iter()
            .all(|t| t.ty != transform_type::DH || t.id == 0);
        for o in ours {
            match o.pfs {
                Some(g) if has(p, transform_type::DH, g.id()) => {
                    if ke_group == Some(g.id()) {
                        return RekeySelect::Chosen(p.number, spi, *o);
                    }
                    fallback.get_or_insert(g);
                }
                None if no_dh && ke_group.is_none() => {
                    return RekeySelect::Chosen(p.number, spi, *o);
                }
                _ => {}
            }
        }
    }
    match fallback {
        Some(g) => RekeySelect::InvalidKe(g),
        None => RekeySelect::NoProposalChosen,
    }
}

/// Picks an IKE proposal for an IKE SA rekey (CREATE_CHILD_SA with an IKE proposal carrying
/// the new initiator SPI) with a KE payload of `ke_group`.
pub fn select_ike_rekey(
    ours: &[IkeProposal],
    offered: &[Proposal],
    ke_group: u16,
) -> RekeySelect<IkeProposal> {
    let mut without_spi: Vec<Proposal> = Vec::with_capacity(offered.len());
    let mut spis = Vec::with_capacity(offered.len());
    for p in offered {
        if let Some(spi) = peer_spi(p, 8) {
            let mut q = p.clone();
            q.spi.clear();
            spis.push((q.number, spi));
            without_spi.push(q);
        }
    }
    match select_ike(ours, &without_spi, ke_group) {
        Ok((number, o)) => {
            let spi = spis
                .iter()
                .find(|(n, _)| *n == number)
                .map_or(0, |(_, s)| *s);
            RekeySelect::Chosen(number, spi, o)
        }
        Err(IkeSelectError::InvalidKe(g)) => RekeySelect::InvalidKe(g),
        Err(IkeSelectError::NoProposalChosen) => RekeySelect::NoProposalChosen,
    }
}

/// Which of our ESP proposals a CREATE_CHILD_SA responder chose, and its SPI: the DH transform
/// must be the group we sent KE for (or absent when we sent none).
pub fn match_esp_create_child_response(
    ours: &[EspProposal],
    chosen: &Proposal,
    ke_group: Option<DhGroup>,
) -> Option<(u32, EspProposal)> {
    if chosen.protocol != ProtocolId::Esp
        || !has_aes256gcm16(chosen)
        || !integ_ok(chosen)
        || !has(chosen, transform_type::ESN, ESN_NONE)
    {
        return None;
    }
    let dh: Vec<u16> = chosen
        .transforms
        .iter()
        .filter(|t| t.ty == transform_type::DH && t.id != 0)
        .map(|t| t.id)
        .collect();
    let group = match dh.as_slice() {
        [] => None,
        [g] => Some(DhGroup::from_id(*g)?),
        _ => return None,
    };
    if group != ke_group {
        return None;
    }
    let spi = u32::try_from(peer_spi(chosen, 4)?).ok()?;
    let o = ours.iter().find(|o| o.pfs == group)?;
    Some((spi, *o))
}
