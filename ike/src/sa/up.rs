//! An established IKE SA: INFORMATIONAL and CREATE_CHILD_SA (RFC 7296 §1.3, §1.4, §2.8).
//!
//! ```text
//! liveness      -- HDR, SK{} ------------------------------------>   answered always
//!               <- HDR, SK{} -------------------------------------
//! Child rekey   -- HDR, SK{N(REKEY_SA, old SPI), SA, Ni, KEi, TSi, TSr} -->
//!               <- HDR, SK{SA, Nr, KEr, TSi, TSr} ------------------    new Child SA (PFS)
//!               -- HDR, SK{D(ESP, old SPI)} --> <- HDR, SK{D(ESP, peer's old SPI)} --
//! IKE rekey     -- HDR, SK{SA(new SPIi), Ni, KEi} --> <- HDR, SK{SA(new SPIr), Nr, KEr} --
//!               the rekey's initiator is the new SA's initiator (§2.18); it deletes the
//!               old SA with D(IKE) on the old SPIs
//! delete        -- HDR, SK{D(IKE)} --> <- HDR, SK{} --                  Event::Closed
//! ```
//!
//! One request of ours is in flight at a time (window size 1, §2.3); later ones wait in a queue.
//! Requests from the peer are taken in message-ID order, each answered once and the answer
//! cached for a retransmission.
//!
//! Make-before-break: a rekeyed Child SA is reported (`Event::ChildRekeyed`) before the old one
//! is deleted (`Event::ChildDeleted`), so the driver installs the new one first and keeps
//! receiving on the old until it is gone.
//!
//! Simultaneous Child SA rekeys (§2.8.1): when both ends rekey the same Child SA at once, each
//! answers the other's request, so two new Child SAs exist. The one made by the exchange with
//! the lowest of the four nonces is redundant; its creator deletes it, and the other end
//! deletes the old one. A peer's IKE SA rekey that meets a rekey of ours (or the reverse) is
//! answered TEMPORARY_FAILURE (§2.25): the peer tries again later.

use std::collections::VecDeque;
use std::time::Instant;

use rand_core::CryptoRng;
use tandem_crypto::SaKeys;
use tracing::{debug, warn};

use super::{
    ChildSa, Dropped, Event, Failure, IkeSa, Role, State, first_error, ke_of, nonce_of, nonce_ok,
    random_esp_spi, random_ike_spi, random_nonce, sa_of,
};
use crate::keys::{DhGroup, IkeKeys, KeyShare, derive_child_keys, derive_rekeyed_ike_keys};
use crate::proposal::{
    EspProposal, IkeProposal, RekeySelect, match_esp_create_child_response, match_ike_response,
    select_esp_create_child, select_ike_rekey,
};
use crate::ts;
use crate::wire::{
    Delete, ExchangeType, Header, Message, Notify, NotifyType, Payload, ProtocolId, find_notify,
    open_sk, seal_message,
};

/// How many INVALID_KE_PAYLOAD answers one CREATE_CHILD_SA may get before the rekey is given up.
const MAX_KE_RETRIES: u32 = 2;

/// The established state.
pub(super) struct Up {
    keys: IkeKeys,
    proposal: IkeProposal,
    children: Vec<ChildSa>,
    /// Message ID of our next request.
    next_request: u32,
    /// Message ID of the peer's next request.
    peer_next: u32,
    /// What our request in flight is (its bytes and timer are `IkeSa::pending`).
    outstanding: Option<Request>,
    queue: VecDeque<Request>,
    /// The peer's rekey of a Child SA we are rekeying too: (old inbound SPI, the new Child SA's
    /// inbound SPI, the lower nonce of the peer's exchange).
    peer_rekey: Option<(u32, u32, Vec<u8>)>,
    /// The IKE SA this one replaced, until its Delete exchange is over.
    old: Option<OldIke>,
}

/// A replaced IKE SA: enough to send or answer its Delete.
struct OldIke {
    spi_i: u64,
    spi_r: u64,
    role: Role,
    keys: IkeKeys,
    /// The cached response to the rekey request (the peer may retransmit it).
    rekey_request: Vec<u8>,
    rekey_response: Vec<Vec<u8>>,
    rekey_message_id: u32,
}

enum Request {
    Liveness,
    DeleteChild(u32),
    DeleteIke,
    RekeyChild(Box<ChildRekey>),
    RekeyIke(Box<IkeRekey>),
}

struct ChildRekey {
    old_inbound: u32,
    spi: u32,
    ni: Vec<u8>,
    ke: Option<KeyShare>,
    retries: u32,
}

struct IkeRekey {
    spi: u64,
    ni: Vec<u8>,
    ke: KeyShare,
    retries: u32,
}

impl Up {
    pub(super) fn new(keys: IkeKeys, proposal: IkeProposal, children: Vec<ChildSa>) -> Self {
        Self {
            keys,
            proposal,
            children,
            next_request: 0,
            peer_next: 0,
            outstanding: None,
            queue: VecDeque::new(),
            peer_rekey: None,
            old: None,
        }
    }

    /// The message ID the peer's next request must carry.
    pub(super) fn peer_next(&self) -> u32 {
        self.peer_next
    }

    /// The key the peer's messages are sealed with.
    pub(super) fn peer_key(&self, role: Role) -> SaKeys {
        match role {
            Role::Initiator => self.keys.sk_er.clone(),
            Role::Responder => self.keys.sk_ei.clone(),
        }
    }
}

fn ts_of(
    payloads: &[Payload],
) -> (
    Option<&[crate::TrafficSelector]>,
    Option<&[crate::TrafficSelector]>,
) {
    let tsi = payloads.iter().find_map(|p| match p {
        Payload::TsI(t) => Some(t.as_slice()),
        _ => None,
    });
    let tsr = payloads.iter().find_map(|p| match p {
        Payload::TsR(t) => Some(t.as_slice()),
        _ => None,
    });
    (tsi, tsr)
}

fn notify(ty: NotifyType) -> Payload {
    Payload::Notify(Notify::new(ty, Vec::new()))
}

fn lower<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    if a <= b { a } else { b }
}

impl IkeSa {
    /// Message IDs after IKE_AUTH: the initiator has used 0 and 1.
    pub(super) fn set_ids_after_auth(&mut self) {
        if let State::Established(up) = &mut self.state {
            match self.role {
                Role::Initiator => up.next_request = 2,
                Role::Responder => up.peer_next = 2,
            }
        }
    }

    /// The Child SAs of this IKE SA (the first, and those made by rekeys, until deleted).
    pub fn children(&self) -> &[ChildSa] {
        match &self.state {
            State::Established(up) => &up.children,
            _ => &[],
        }
    }

    /// Sends a liveness probe: an empty INFORMATIONAL request (RFC 7296 §2.4). Its answer is
    /// [`Event::Alive`]; no answer after the retransmissions is [`Failure::Timeout`].
    pub fn send_liveness(&mut self, now: Instant) {
        self.request(now, Request::Liveness);
    }

    /// Deletes the Child SA whose inbound SPI is `inbound_spi`.
    pub fn delete_child(&mut self, now: Instant, inbound_spi: u32) {
        self.request(now, Request::DeleteChild(inbound_spi));
    }

    /// Deletes the IKE SA and with it every Child SA (the "closing" notice).
    pub fn close(&mut self, now: Instant) {
        self.request(now, Request::DeleteIke);
    }

    /// Rekeys the Child SA whose inbound SPI is `inbound_spi`, with PFS in the group of its
    /// proposal. Returns false if there is no such Child SA.
    pub fn rekey_child<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        inbound_spi: u32,
        rng: &mut R,
    ) -> bool {
        let State::Established(up) = &self.state else {
            return false;
        };
        let Some(child) = up.children.iter().find(|c| c.inbound_spi == inbound_spi) else {
            return false;
        };
        let ke = child.proposal.pfs.map(|g| KeyShare::generate(g, rng));
        let rekey = ChildRekey {
            old_inbound: inbound_spi,
            spi: random_esp_spi(rng),
            ni: random_nonce(rng),
            ke,
            retries: 0,
        };
        self.request(now, Request::RekeyChild(Box::new(rekey)));
        true
    }

    /// Rekeys the IKE SA (RFC 7296 §2.18) with the group of its proposal.
    pub fn rekey_ike<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        let State::Established(up) = &self.state else {
            return;
        };
        let rekey = IkeRekey {
            spi: random_ike_spi(rng),
            ni: random_nonce(rng),
            ke: KeyShare::generate(up.proposal.group, rng),
            retries: 0,
        };
        self.request(now, Request::RekeyIke(Box::new(rekey)));
    }

    fn request(&mut self, now: Instant, req: Request) {
        let State::Established(up) = &mut self.state else {
            return;
        };
        if up.outstanding.is_some() {
            up.queue.push_back(req);
            return;
        }
        self.send_up_request(now, req);
    }

    /// Sends the next queued request, if the window is free.
    fn next_request(&mut self, now: Instant) {
        let State::Established(up) = &mut self.state else {
            return;
        };
        if up.outstanding.is_none()
            && let Some(req) = up.queue.pop_front()
        {
            self.send_up_request(now, req);
        }
    }

    fn send_up_request(&mut self, now: Instant, req: Request) {
        let State::Established(up) = &mut self.state else {
            return;
        };
        let (exchange, payloads) = match &req {
            Request::Liveness => (ExchangeType::Informational, Vec::new()),
            Request::DeleteChild(spi) => (
                ExchangeType::Informational,
                vec![Payload::Delete(Delete {
                    protocol: ProtocolId::Esp,
                    spis: vec![spi.to_be_bytes().to_vec()],
                })],
            ),
            Request::DeleteIke => (
                ExchangeType::Informational,
                vec![Payload::Delete(Delete {
                    protocol: ProtocolId::Ike,
                    spis: Vec::new(),
                })],
            ),
            Request::RekeyChild(r) => {
                let Some(child) = up.children.iter().find(|c| c.inbound_spi == r.old_inbound)
                else {
                    // Deleted meanwhile: nothing to rekey.
                    return;
                };
                let mut n = Notify::new(NotifyType::REKEY_SA, Vec::new());
                n.protocol = ProtocolId::Esp as u8;
                n.spi = r.old_inbound.to_be_bytes().to_vec();
                let proposal = EspProposal {
                    pfs: r.ke.as_ref().map(KeyShare::group),
                };
                let mut p = vec![
                    Payload::Notify(n),
                    Payload::Sa(vec![proposal.to_wire_create_child(1, r.spi)]),
                    Payload::Nonce(r.ni.clone()),
                ];
                if let Some(ke) = &r.ke {
                    p.push(Payload::Ke {
                        group: ke.group().id(),
                        data: ke.public().to_vec(),
                    });
                }
                p.push(Payload::TsI(child.local_ts.clone()));
                p.push(Payload::TsR(child.remote_ts.clone()));
                (ExchangeType::CreateChildSa, p)
            }
            Request::RekeyIke(r) => (
                ExchangeType::CreateChildSa,
                vec![
                    Payload::Sa(vec![up.proposal.to_wire_rekey(1, r.spi)]),
                    Payload::Nonce(r.ni.clone()),
                    Payload::Ke {
                        group: r.ke.group().id(),
                        data: r.ke.public().to_vec(),
                    },
                ],
            ),
        };
        let id = up.next_request;
        up.next_request = id.wrapping_add(1);
        up.outstanding = Some(req);
        let key = match self.role {
            Role::Initiator => up.keys.sk_ei.clone(),
            Role::Responder => up.keys.sk_er.clone(),
        };
        let header = self.header(exchange, id, false);
        let datagrams = self.seal(&header, &payloads, &key);
        self.send_request(exchange, id, datagrams, now);
    }

    /// Whether `h` belongs to the IKE SA this one replaced.
    pub(super) fn is_old_sa(&self, h: &Header) -> bool {
        matches!(&self.state, State::Established(up)
            if up.old.as_ref().is_some_and(|o| o.spi_i == h.spi_i && o.spi_r == h.spi_r))
    }

    /// A datagram for the replaced IKE SA: the peer's Delete of it (answered), the answer to
    /// ours, or a retransmitted rekey request (answered from the cache).
    pub(super) fn handle_old_sa(&mut self, datagram: &[u8], msg: &Message) -> Result<(), Dropped> {
        let State::Established(up) = &mut self.state else {
            return Err(Dropped::WrongSpi);
        };
        let Some(old) = up.old.as_ref() else {
            return Err(Dropped::WrongSpi);
        };
        let h = msg.header;
        if !h.is_response() && h.message_id == old.rekey_message_id && datagram == old.rekey_request
        {
            self.transmit.extend(old.rekey_response.iter().cloned());
            return Ok(());
        }
        let peer_key = match old.role {
            Role::Initiator => &old.keys.sk_er,
            Role::Responder => &old.keys.sk_ei,
        };
        let inner = open_sk(datagram, msg, peer_key).map_err(|_| Dropped::DecryptFailed)?;
        if h.is_response() {
            debug!("the replaced IKE SA is deleted");
            up.old = None;
            return Ok(());
        }
        if h.exchange != ExchangeType::Informational {
            return Err(Dropped::UnexpectedRequest);
        }
        let our_key = match old.role {
            Role::Initiator => old.keys.sk_ei.clone(),
            Role::Responder => old.keys.sk_er.clone(),
        };
        let mut flags = crate::wire::FLAG_RESPONSE;
        if old.role == Role::Initiator {
            flags |= crate::wire::FLAG_INITIATOR;
        }
        let header = Header {
            spi_i: old.spi_i,
            spi_r: old.spi_r,
            exchange: ExchangeType::Informational,
            flags,
            message_id: h.message_id,
        };
        let deletes_ike = inner
            .iter()
            .any(|p| matches!(p, Payload::Delete(d) if d.protocol == ProtocolId::Ike));
        if deletes_ike {
            up.old = None;
        }
        let iv = self.take_iv();
        self.transmit
            .push_back(seal_message(&header, &[], &our_key, iv));
        Ok(())
    }

    /// A request on the established SA with the expected message ID.
    pub(super) fn on_up_request<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        msg: &Message,
        mut up: Box<Up>,
        rng: &mut R,
    ) -> Result<(), Dropped> {
        let h = msg.header;
        if h.message_id != up.peer_next {
            self.state = State::Established(up);
            return Err(Dropped::UnexpectedRequest);
        }
        let peer_key = match self.role {
            Role::Initiator => up.keys.sk_er.clone(),
            Role::Responder => up.keys.sk_ei.clone(),
        };
        let inner = match self.open_peer(datagram, msg, &peer_key) {
            Ok(p) => p,
            Err(_) => {
                self.state = State::Established(up);
                return Err(Dropped::DecryptFailed);
            }
        };
        up.peer_next = up.peer_next.wrapping_add(1);
        let (reply, after) = match h.exchange {
            ExchangeType::Informational => self.informational_request(&mut up, &inner),
            ExchangeType::CreateChildSa => self.create_child_request(&mut up, &inner, rng),
            _ => (vec![notify(NotifyType::INVALID_SYNTAX)], After::Keep),
        };
        let our_key = match self.role {
            Role::Initiator => up.keys.sk_ei.clone(),
            Role::Responder => up.keys.sk_er.clone(),
        };
        let header = self.header(h.exchange, h.message_id, true);
        let response = self.seal(&header, &reply, &our_key);
        self.send_response(h.message_id, datagram, response.clone());
        match after {
            After::Keep => self.state = State::Established(up),
            After::Close(failure) => {
                self.state = State::Closed;
                self.pending = None;
                self.events.push_back(match failure {
                    Some(f) => Event::Failed(f),
                    None => Event::Closed,
                });
            }
            After::SwitchIke(new) => {
                let old = OldIke {
                    spi_i: self.spi_i,
                    spi_r: self.spi_r,
                    role: self.role,
                    keys: up.keys.clone(),
                    rekey_request: datagram.to_vec(),
                    rekey_response: response,
                    rekey_message_id: h.message_id,
                };
                self.switch_ike(up, *new, old, Role::Responder);
            }
        }
        self.next_request(now);
        Ok(())
    }

    fn informational_request(&mut self, up: &mut Up, inner: &[Payload]) -> (Vec<Payload>, After) {
        let mut reply = Vec::new();
        let mut after = After::Keep;
        for p in inner {
            match p {
                Payload::Delete(d) if d.protocol == ProtocolId::Ike => {
                    debug!("the peer deletes the IKE SA");
                    after = After::Close(None);
                }
                Payload::Delete(d) if d.protocol == ProtocolId::Esp => {
                    let mut ours = Vec::new();
                    for spi in &d.spis {
                        let Ok(b) = <[u8; 4]>::try_from(spi.as_slice()) else {
                            continue;
                        };
                        let outbound = u32::from_be_bytes(b);
                        if let Some(i) = up.children.iter().position(|c| c.outbound_spi == outbound)
                        {
                            let c = up.children.remove(i);
                            ours.push(c.inbound_spi.to_be_bytes().to_vec());
                            self.events.push_back(Event::ChildDeleted {
                                inbound_spi: c.inbound_spi,
                            });
                        }
                    }
                    if !ours.is_empty() {
                        reply.push(Payload::Delete(Delete {
                            protocol: ProtocolId::Esp,
                            spis: ours,
                        }));
                    }
                }
                Payload::Notify(n) if n.ty == NotifyType::AUTHENTICATION_FAILED => {
                    // RFC 7296 §2.21.2: the initiator did not accept our AUTH.
                    warn!("the peer refused our AUTH (AUTHENTICATION_FAILED)");
                    after =
                        After::Close(Some(Failure::PeerNotify(NotifyType::AUTHENTICATION_FAILED)));
                }
                _ => {}
            }
        }
        (reply, after)
    }

    fn create_child_request<R: CryptoRng + ?Sized>(
        &mut self,
        up: &mut Up,
        inner: &[Payload],
        rng: &mut R,
    ) -> (Vec<Payload>, After) {
        let keep = |ty| (vec![notify(ty)], After::Keep);
        let (Some(sa), Some(ni)) = (sa_of(inner), nonce_of(inner)) else {
            return keep(NotifyType::INVALID_SYNTAX);
        };
        if !nonce_ok(ni) {
            return keep(NotifyType::INVALID_SYNTAX);
        }
        let ke = ke_of(inner);
        let rekey_ike = sa.iter().any(|p| p.protocol == ProtocolId::Ike);
        if rekey_ike {
            if up.outstanding.is_some() || up.old.is_some() {
                // §2.25.2: an IKE SA rekey meets one of ours; the peer retries later.
                return keep(NotifyType::TEMPORARY_FAILURE);
            }
            let Some((group, ke)) = ke else {
                return keep(NotifyType::INVALID_SYNTAX);
            };
            let (number, peer_spi, proposal) = match select_ike_rekey(
                &self.config.ike_proposals,
                sa,
                group,
            ) {
                RekeySelect::Chosen(n, s, p) => (n, s, p),
                RekeySelect::InvalidKe(g) => {
                    return (
                        vec![Payload::Notify(Notify::new(
                            NotifyType::INVALID_KE_PAYLOAD,
                            g.id().to_be_bytes().to_vec(),
                        ))],
                        After::Keep,
                    );
                }
                RekeySelect::NoProposalChosen => {
                    warn!(offered = %crate::proposal::describe(sa), "IKE SA rekey: no acceptable proposal");
                    return keep(NotifyType::NO_PROPOSAL_CHOSEN);
                }
            };
            let share = KeyShare::generate(proposal.group, rng);
            let Ok(g_ir) = share.agree(ke) else {
                return keep(NotifyType::INVALID_SYNTAX);
            };
            let spi_r = random_ike_spi(rng);
            let nr = random_nonce(rng);
            let keys = derive_rekeyed_ike_keys(
                &up.keys,
                proposal.prf,
                g_ir.as_bytes(),
                ni,
                &nr,
                peer_spi,
                spi_r,
            );
            let reply = vec![
                Payload::Sa(vec![proposal.to_wire_rekey(number, spi_r)]),
                Payload::Nonce(nr),
                Payload::Ke {
                    group: proposal.group.id(),
                    data: share.public().to_vec(),
                },
            ];
            let new = NewIke {
                spi_i: peer_spi,
                spi_r,
                keys,
                proposal,
            };
            return (reply, After::SwitchIke(Box::new(new)));
        }
        // A Child SA: only rekeys (tandem keeps one Child SA per IKE SA).
        let Some(rekey) = find_notify(inner, NotifyType::REKEY_SA) else {
            return keep(NotifyType::NO_ADDITIONAL_SAS);
        };
        if matches!(up.outstanding, Some(Request::RekeyIke(_))) {
            return keep(NotifyType::TEMPORARY_FAILURE);
        }
        let Ok(b) = <[u8; 4]>::try_from(rekey.spi.as_slice()) else {
            return keep(NotifyType::INVALID_SYNTAX);
        };
        let old_outbound = u32::from_be_bytes(b);
        let Some(old) = up
            .children
            .iter()
            .find(|c| c.outbound_spi == old_outbound)
            .cloned()
        else {
            return keep(NotifyType::CHILD_SA_NOT_FOUND);
        };
        let (number, peer_spi, esp) = match select_esp_create_child(
            &self.config.esp_proposals,
            sa,
            ke.map(|(g, _)| g),
        ) {
            RekeySelect::Chosen(n, s, p) => (n, s as u32, p),
            RekeySelect::InvalidKe(g) => {
                return (
                    vec![Payload::Notify(Notify::new(
                        NotifyType::INVALID_KE_PAYLOAD,
                        g.id().to_be_bytes().to_vec(),
                    ))],
                    After::Keep,
                );
            }
            RekeySelect::NoProposalChosen => {
                warn!(offered = %crate::proposal::describe(sa), "Child SA rekey: no acceptable ESP proposal");
                return keep(NotifyType::NO_PROPOSAL_CHOSEN);
            }
        };
        let (Some(tsi), Some(tsr)) = ts_of(inner) else {
            return keep(NotifyType::TS_UNACCEPTABLE);
        };
        // The peer initiates this exchange: TSi is its side, TSr ours.
        let tsi = ts::narrow(tsi, &self.config.remote_ts);
        let tsr = ts::narrow(tsr, &self.config.local_ts);
        if tsi.is_empty() || tsr.is_empty() {
            return keep(NotifyType::TS_UNACCEPTABLE);
        }
        let nr = random_nonce(rng);
        let mut reply = Vec::new();
        let spi = random_esp_spi(rng);
        reply.push(Payload::Sa(vec![esp.to_wire_create_child(number, spi)]));
        reply.push(Payload::Nonce(nr.clone()));
        let g_ir = match (esp.pfs, ke) {
            (Some(g), Some((_, data))) => {
                let share = KeyShare::generate(g, rng);
                let Ok(s) = share.agree(data) else {
                    return keep(NotifyType::INVALID_SYNTAX);
                };
                reply.push(Payload::Ke {
                    group: g.id(),
                    data: share.public().to_vec(),
                });
                Some(s)
            }
            _ => None,
        };
        reply.push(Payload::TsI(tsi.clone()));
        reply.push(Payload::TsR(tsr.clone()));
        let k = &up.keys;
        let (i2r, r2i) =
            derive_child_keys(k.prf, &k.sk_d, g_ir.as_ref().map(|s| s.as_bytes()), ni, &nr);
        let child = ChildSa {
            inbound_spi: spi,
            outbound_spi: peer_spi,
            inbound: i2r,
            outbound: r2i,
            proposal: esp,
            local_ts: tsr,
            remote_ts: tsi,
        };
        if let Some(Request::RekeyChild(ours)) = &up.outstanding
            && ours.old_inbound == old.inbound_spi
        {
            up.peer_rekey = Some((old.inbound_spi, spi, lower(ni, &nr).to_vec()));
        }
        up.children.push(child.clone());
        self.events.push_back(Event::ChildRekeyed {
            old_inbound_spi: old.inbound_spi,
            new: Box::new(child),
        });
        (reply, After::Keep)
    }

    /// The response to our request in flight.
    pub(super) fn on_up_response<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        msg: &Message,
        mut up: Box<Up>,
        rng: &mut R,
    ) -> Result<(), Dropped> {
        let peer_key = match self.role {
            Role::Initiator => up.keys.sk_er.clone(),
            Role::Responder => up.keys.sk_ei.clone(),
        };
        let inner = match self.open_peer(datagram, msg, &peer_key) {
            Ok(p) => p,
            Err(_) => {
                self.state = State::Established(up);
                return Err(Dropped::DecryptFailed);
            }
        };
        self.pending = None;
        let Some(req) = up.outstanding.take() else {
            self.state = State::Established(up);
            return Err(Dropped::UnexpectedResponse);
        };
        match req {
            Request::Liveness => self.events.push_back(Event::Alive),
            Request::DeleteChild(spi) => {
                if let Some(i) = up.children.iter().position(|c| c.inbound_spi == spi) {
                    up.children.remove(i);
                }
                self.events
                    .push_back(Event::ChildDeleted { inbound_spi: spi });
            }
            Request::DeleteIke => {
                self.state = State::Closed;
                self.events.push_back(Event::Closed);
                return Ok(());
            }
            Request::RekeyChild(r) => self.child_rekey_response(&mut up, &inner, *r, rng),
            Request::RekeyIke(r) => {
                if let Some(new) = self.ike_rekey_response(now, &mut up, &inner, *r, rng) {
                    // We initiated the rekey: we delete the old SA, on the old SPIs.
                    let old_role = self.role;
                    let our_key = match old_role {
                        Role::Initiator => up.keys.sk_ei.clone(),
                        Role::Responder => up.keys.sk_er.clone(),
                    };
                    let id = up.next_request;
                    let header = self.header(ExchangeType::Informational, id, false);
                    let iv = self.take_iv();
                    let delete = seal_message(
                        &header,
                        &[Payload::Delete(Delete {
                            protocol: ProtocolId::Ike,
                            spis: Vec::new(),
                        })],
                        &our_key,
                        iv,
                    );
                    self.transmit.push_back(delete);
                    let old = OldIke {
                        spi_i: self.spi_i,
                        spi_r: self.spi_r,
                        role: old_role,
                        keys: up.keys.clone(),
                        rekey_request: Vec::new(),
                        rekey_response: Vec::new(),
                        rekey_message_id: u32::MAX,
                    };
                    self.switch_ike(up, new, old, Role::Initiator);
                    self.next_request(now);
                    return Ok(());
                }
            }
        }
        self.state = State::Established(up);
        self.next_request(now);
        Ok(())
    }

    fn child_rekey_response<R: CryptoRng + ?Sized>(
        &mut self,
        up: &mut Up,
        inner: &[Payload],
        mut r: ChildRekey,
        rng: &mut R,
    ) {
        let peer_rekey = up.peer_rekey.take();
        if let Some(n) = find_notify(inner, NotifyType::INVALID_KE_PAYLOAD) {
            let wanted = <[u8; 2]>::try_from(n.data.as_slice())
                .ok()
                .map(u16::from_be_bytes)
                .and_then(DhGroup::from_id)
                .filter(|g| self.config.esp_proposals.iter().any(|p| p.pfs == Some(*g)));
            if let Some(g) = wanted
                && r.retries < MAX_KE_RETRIES
            {
                r.ke = Some(KeyShare::generate(g, rng));
                r.retries += 1;
                r.ni = random_nonce(rng);
                up.queue.push_front(Request::RekeyChild(Box::new(r)));
            } else {
                warn!("Child SA rekey: the peer wants a KE group we do not offer");
            }
            return;
        }
        if let Some(ty) = first_error(inner) {
            // TEMPORARY_FAILURE, CHILD_SA_NOT_FOUND, NO_PROPOSAL_CHOSEN: the old Child SA stays;
            // the driver's rekey timer tries again.
            warn!(notify = %ty, "Child SA rekey refused");
            return;
        }
        let sa = sa_of(inner);
        let nr = nonce_of(inner);
        let (tsi, tsr) = ts_of(inner);
        let chosen = match sa {
            Some([one]) => match_esp_create_child_response(
                &self.config.esp_proposals,
                one,
                r.ke.as_ref().map(KeyShare::group),
            ),
            _ => None,
        };
        let (Some((peer_spi, esp)), Some(nr), Some(tsi), Some(tsr)) = (chosen, nr, tsi, tsr) else {
            warn!("Child SA rekey: the response is not one we can accept");
            return;
        };
        if !nonce_ok(nr) {
            return;
        }
        let g_ir = match (&r.ke, ke_of(inner)) {
            (Some(share), Some((g, data))) if g == share.group().id() => match share.agree(data) {
                Ok(s) => Some(s),
                Err(_) => return,
            },
            (None, None) => None,
            _ => return,
        };
        let k = &up.keys;
        let (i2r, r2i) = derive_child_keys(
            k.prf,
            &k.sk_d,
            g_ir.as_ref().map(|s| s.as_bytes()),
            &r.ni,
            nr,
        );
        let child = ChildSa {
            inbound_spi: r.spi,
            outbound_spi: peer_spi,
            inbound: r2i,
            outbound: i2r,
            proposal: esp,
            local_ts: tsi.to_vec(),
            remote_ts: tsr.to_vec(),
        };
        up.children.push(child.clone());
        self.events.push_back(Event::ChildRekeyed {
            old_inbound_spi: r.old_inbound,
            new: Box::new(child),
        });
        // §2.8.1: with a simultaneous rekey, the exchange with the lowest nonce made the
        // redundant Child SA, which its initiator deletes; the other end, whose new Child SA
        // survives, deletes the old one as after any rekey.
        let delete = match peer_rekey {
            Some((old, _, theirs))
                if old == r.old_inbound && lower(&r.ni, nr) < theirs.as_slice() =>
            {
                debug!("simultaneous Child SA rekey: ours has the lowest nonce, deleting it");
                r.spi
            }
            _ => r.old_inbound,
        };
        up.queue.push_front(Request::DeleteChild(delete));
    }

    fn ike_rekey_response<R: CryptoRng + ?Sized>(
        &mut self,
        _now: Instant,
        up: &mut Up,
        inner: &[Payload],
        mut r: IkeRekey,
        rng: &mut R,
    ) -> Option<NewIke> {
        if let Some(n) = find_notify(inner, NotifyType::INVALID_KE_PAYLOAD) {
            let wanted = <[u8; 2]>::try_from(n.data.as_slice())
                .ok()
                .map(u16::from_be_bytes)
                .and_then(DhGroup::from_id)
                .filter(|g| self.config.ike_proposals.iter().any(|p| p.group == *g));
            if let Some(g) = wanted
                && r.retries < MAX_KE_RETRIES
            {
                r.ke = KeyShare::generate(g, rng);
                r.retries += 1;
                up.queue.push_front(Request::RekeyIke(Box::new(r)));
            }
            return None;
        }
        if let Some(ty) = first_error(inner) {
            warn!(notify = %ty, "IKE SA rekey refused");
            return None;
        }
        let (Some([one]), Some(nr), Some((group, ke))) =
            (sa_of(inner), nonce_of(inner), ke_of(inner))
        else {
            warn!("IKE SA rekey: the response lacks SA, Nr or KEr");
            return None;
        };
        let mut plain = one.clone();
        plain.spi.clear();
        let proposal = match_ike_response(&self.config.ike_proposals, &plain)?;
        let spi_r = u64::from_be_bytes(<[u8; 8]>::try_from(one.spi.as_slice()).ok()?);
        if spi_r == 0
            || group != proposal.group.id()
            || proposal.group != r.ke.group()
            || !nonce_ok(nr)
        {
            return None;
        }
        let g_ir = r.ke.agree(ke).ok()?;
        let keys = derive_rekeyed_ike_keys(
            &up.keys,
            proposal.prf,
            g_ir.as_bytes(),
            &r.ni,
            nr,
            r.spi,
            spi_r,
        );
        Some(NewIke {
            spi_i: r.spi,
            spi_r,
            keys,
            proposal,
        })
    }

    /// Moves this object to the new IKE SA of a rekey: new SPIs, keys, role (the rekey's
    /// initiator is the new SA's initiator, §2.18) and message IDs; the Child SAs carry over.
    fn switch_ike(&mut self, mut up: Box<Up>, new: NewIke, old: OldIke, role: Role) {
        self.spi_i = new.spi_i;
        self.spi_r = new.spi_r;
        self.role = role;
        self.cached = None;
        self.pending = None;
        up.keys = new.keys.clone();
        up.proposal = new.proposal;
        up.next_request = 0;
        up.peer_next = 0;
        up.outstanding = None;
        up.peer_rekey = None;
        up.old = Some(old);
        // Fragments of the replaced SA's messages can never complete under the new keys.
        self.reassembly_request = None;
        self.reassembly_response = None;
        self.events.push_back(Event::IkeRekeyed {
            spi_i: new.spi_i,
            spi_r: new.spi_r,
            proposal: new.proposal,
            keys: Box::new(new.keys),
        });
        self.state = State::Established(up);
    }
}

struct NewIke {
    spi_i: u64,
    spi_r: u64,
    keys: IkeKeys,
    proposal: IkeProposal,
}

enum After {
    Keep,
    /// The SA is over: deleted by the peer (`None`) or failed.
    Close(Option<Failure>),
    SwitchIke(Box<NewIke>),
}
