//! One IKE SA as a sans-IO state machine: IKE_SA_INIT and IKE_AUTH with a pre-shared key
//! (RFC 7296 §1.2, §2.15), as initiator or responder, ending in an established IKE SA and its
//! first Child SA.
//!
//! ```text
//! initiator                                         responder
//! InitSent   -- HDR, SAi1, KEi, Ni -------------->  AwaitInit
//!            <- HDR, SAr1, KEr, Nr --------------   AwaitAuth   (or N(INVALID_KE_PAYLOAD):
//!                                                                 the initiator retries with
//!                                                                 the group asked for)
//! AuthSent   -- HDR, SK{IDi, IDr, AUTH, SAi2, TSi, TSr, N(INITIAL_CONTACT)} -->
//!            <- HDR, SK{IDr, AUTH, SAr2, TSi, TSr} --------------  Established
//! Established
//! ```
//!
//! The driver vocabulary is the workspace's: [`IkeSa::handle_datagram`] takes a received IKE
//! message (the UDP payload without a non-ESP marker) and `now`; [`IkeSa::poll_transmit`] and
//! [`IkeSa::poll_event`] drain what to send and what happened; [`IkeSa::poll_timeout`] gives the
//! next deadline and [`IkeSa::handle_timeout`] acts on it. Randomness (SPIs, nonces, DH private
//! values) comes from the caller's RNG.
//!
//! Reliability (RFC 7296 §2.1): only the initiator of an exchange retransmits, the same bytes,
//! on a doubling timer; a responder answers a retransmitted request (the same message ID and the
//! same bytes) with its cached response and processes nothing twice.
//!
//! After IKE_AUTH, INFORMATIONAL (liveness, DELETE) and CREATE_CHILD_SA (Child SA and IKE SA
//! rekeys) are in the `up` module.
//!
//! Unauthenticated input never destroys state: a datagram that fails to parse, has the wrong
//! SPIs or message ID, or does not decrypt is dropped with a [`Dropped`] reason and the exchange
//! goes on. Error notifies answering IKE_SA_INIT are the exception the RFC makes (they cannot be
//! authenticated), and they end the attempt.

mod up;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use tandem_crypto::SaKeys;
use tracing::{debug, warn};

use crate::frag::{self, Added, Fragmentation, Reassembly};
use crate::keys::{
    AUTH_METHOD_PSK, DhGroup, IkeKeys, KeyShare, Psk, auth_eq, derive_child_keys, derive_ike_keys,
    psk_auth,
};
use crate::nat::{self, NatT};
use crate::proposal::{
    self, EspProposal, IkeProposal, IkeSelectError, match_esp_response, match_ike_response,
    select_esp_ike_auth, select_ike,
};
use crate::ts;
use crate::wire::{
    ExchangeType, FLAG_INITIATOR, FLAG_RESPONSE, Header, Identity, Message, Notify, NotifyType,
    ParseError, Payload, TrafficSelector, find_notify, open_sk, parse_chain, seal_message,
};
use up::Up;

/// Our nonce length: 32 bytes, at least half the key size of every PRF we negotiate
/// (RFC 7296 §2.10).
pub const NONCE_LEN: usize = 32;
/// The shortest nonce a peer may send (RFC 7296 §3.9).
pub const MIN_PEER_NONCE: usize = 16;
/// The longest nonce a peer may send (RFC 7296 §3.9).
pub const MAX_PEER_NONCE: usize = 256;
/// The longest COOKIE we echo (RFC 7296 §2.6: 1..64 bytes).
pub const MAX_COOKIE_LEN: usize = 64;

/// First retransmission of a request without a response (RFC 7296 §2.1 leaves the schedule to
/// the implementation). Tuning: 1 s is several WAN round trips, and the wait doubles after.
pub const RETRANSMIT_INITIAL: Duration = Duration::from_secs(1);
/// Retransmissions before the exchange is given up: sends at 0, 1, 3, 7, 15, 31 s, failure at
/// 63 s. Tuning: a tunnel's liveness decides failover long before this; this only bounds a
/// dead handshake.
pub const RETRANSMIT_TRIES: u32 = 5;
/// How long a responder keeps a half-open IKE SA (IKE_SA_INIT answered, no IKE_AUTH yet).
/// Tuning: longer than an initiator's retransmission of IKE_AUTH needs to get through
/// (a few seconds), short enough that a flood of IKE_SA_INIT does not pile up state.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many INVALID_KE_PAYLOAD or COOKIE answers one IKE_SA_INIT may get before we give up
/// (each can be sent by anyone on the path; a loop would never end).
pub const MAX_INIT_RETRIES: u32 = 4;

/// What one end of an IKE SA needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The pre-shared key of this tunnel.
    pub psk: Psk,
    /// Our identity (IDi as initiator, IDr as responder).
    pub local_id: Identity,
    /// The identity the peer must prove.
    pub remote_id: Identity,
    /// IKE proposals in order of preference.
    pub ike_proposals: Vec<IkeProposal>,
    /// ESP proposals in order of preference.
    pub esp_proposals: Vec<EspProposal>,
    /// Our side's traffic (TSi as initiator, TSr as responder).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side's traffic.
    pub remote_ts: Vec<TrafficSelector>,
    /// NAT traversal (RFC 7296 §2.23): NAT-D notifies in IKE_SA_INIT, and whether to force
    /// UDP encapsulation. `None`: no NAT-D is sent and IKE stays on port 500.
    pub nat_t: Option<NatT>,
}

/// Settings of an IKE SA beyond its [`Config`], with defaults ([`IkeSa::initiate_with`],
/// [`IkeSa::respond_with`]; [`IkeSa::initiate`] and [`IkeSa::respond`] use the defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// IKE fragmentation (RFC 7383): on by default with
    /// [`frag::DEFAULT_FRAGMENT_SIZE`]-byte datagrams.
    pub fragmentation: Fragmentation,
}

/// Which end of the IKE SA we are (the original initiator keeps its role through rekeys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent IKE_SA_INIT.
    Initiator,
    /// We answered it.
    Responder,
}

/// An ESP Child SA ready to install.
#[derive(Debug, Clone)]
pub struct ChildSa {
    /// Our SPI: the peer writes it in the packets it sends us.
    pub inbound_spi: u32,
    /// The peer's SPI: we write it in the packets we send.
    pub outbound_spi: u32,
    /// Keys that open the peer's packets.
    pub inbound: SaKeys,
    /// Keys that seal ours.
    pub outbound: SaKeys,
    /// The negotiated ESP proposal (its PFS group is the one rekeys use).
    pub proposal: EspProposal,
    /// Our side's traffic, narrowed.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side's traffic, narrowed.
    pub remote_ts: Vec<TrafficSelector>,
}

/// The first Child SA of an IKE_AUTH: created, or refused while the IKE SA itself was
/// authenticated (RFC 7296 §1.2: the IKE SA survives a refused Child SA).
#[derive(Debug, Clone)]
pub enum FirstChild {
    /// Installed on both ends.
    Created(ChildSa),
    /// Refused with this notify (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, ...).
    Refused(NotifyType),
}

/// An IKE SA that completed IKE_AUTH.
#[derive(Debug, Clone)]
pub struct Established {
    /// Our role.
    pub role: Role,
    /// The initiator's IKE SPI.
    pub spi_i: u64,
    /// The responder's IKE SPI.
    pub spi_r: u64,
    /// The negotiated IKE proposal.
    pub proposal: IkeProposal,
    /// The IKE SA keys (SK_ei/SK_er for the key log).
    pub keys: IkeKeys,
    /// The first Child SA.
    pub child: FirstChild,
}

/// Why an IKE SA attempt ended without being established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// As responder: nothing the peer offered is acceptable; `offered` names what it offered.
    NoProposalChosen {
        /// A readable description of the peer's offer ([`proposal::describe`]).
        offered: String,
    },
    /// The peer answered with this error notify (NO_PROPOSAL_CHOSEN, AUTHENTICATION_FAILED, ...).
    PeerNotify(NotifyType),
    /// The peer did not prove the PSK, or proved another identity than the configured one.
    AuthenticationFailed {
        /// Which check failed.
        reason: &'static str,
    },
    /// No response after all retransmissions.
    Timeout,
    /// As responder: IKE_AUTH never came.
    HalfOpenExpired,
    /// The peer broke the protocol in an authenticated or unrecoverable way.
    Protocol(&'static str),
}

/// What an IKE SA reports to its driver.
#[derive(Debug, Clone)]
pub enum Event {
    /// IKE_AUTH completed.
    Established(Box<Established>),
    /// The attempt ended, or the established SA failed (no answer after the retransmissions,
    /// the peer refused our AUTH); the SA is spent.
    Failed(Failure),
    /// The peer answered our liveness request (an authenticated, empty INFORMATIONAL).
    Alive,
    /// A Child SA was rekeyed: install `new`; the old one (`old_inbound_spi`) keeps receiving
    /// until [`Event::ChildDeleted`].
    ChildRekeyed {
        /// The inbound SPI of the Child SA it replaces.
        old_inbound_spi: u32,
        /// The new Child SA.
        new: Box<ChildSa>,
    },
    /// A Child SA is deleted (by either end): remove it.
    ChildDeleted {
        /// Its inbound SPI.
        inbound_spi: u32,
    },
    /// The IKE SA was rekeyed (RFC 7296 §2.18): new SPIs and keys; the Child SAs carry over.
    IkeRekeyed {
        /// The new initiator SPI.
        spi_i: u64,
        /// The new responder SPI.
        spi_r: u64,
        /// The new SA's proposal.
        proposal: IkeProposal,
        /// The new SA's keys (for the key log).
        keys: Box<IkeKeys>,
    },
    /// The IKE SA was deleted, by the peer or by [`IkeSa::close`]: every Child SA is gone.
    Closed,
}

/// Why a datagram was dropped without effect. A `Copy` enum: it can double as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// It does not parse.
    #[error("malformed: {0}")]
    Malformed(ParseError),
    /// Its SPIs are not this IKE SA's.
    #[error("wrong IKE SPI")]
    WrongSpi,
    /// A response for which no request is outstanding, or with another message ID.
    #[error("unexpected response")]
    UnexpectedResponse,
    /// A request this state does not take (wrong exchange, message ID or flags).
    #[error("unexpected request")]
    UnexpectedRequest,
    /// The SK payload does not authenticate.
    #[error("encrypted payload does not authenticate")]
    DecryptFailed,
    /// A required payload is missing or invalid (named).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

struct Pending {
    message_id: u32,
    exchange: ExchangeType,
    /// The request's datagrams: one, or its fragments.
    datagrams: Vec<Vec<u8>>,
    deadline: Instant,
    retransmits: u32,
}

struct CachedResponse {
    message_id: u32,
    /// The request as received (its first fragment if it was fragmented).
    request: Vec<u8>,
    /// The response's datagrams: one, or its fragments.
    response: Vec<Vec<u8>>,
}

struct InitSent {
    ke: KeyShare,
    ni: Vec<u8>,
    cookie: Option<Vec<u8>>,
    retries: u32,
    /// The IKE_SA_INIT request as last sent: the "RealMessage1" our AUTH signs.
    request: Vec<u8>,
}

struct AuthSent {
    keys: IkeKeys,
    proposal: IkeProposal,
    ni: Vec<u8>,
    nr: Vec<u8>,
    child_spi: u32,
    /// The IKE_SA_INIT response: the "RealMessage2" the responder's AUTH signs.
    init_response: Vec<u8>,
}

struct AwaitAuth {
    keys: IkeKeys,
    proposal: IkeProposal,
    ni: Vec<u8>,
    nr: Vec<u8>,
    init_request: Vec<u8>,
    init_response: Vec<u8>,
}

enum State {
    InitSent(Box<InitSent>),
    AuthSent(Box<AuthSent>),
    AwaitInit,
    AwaitAuth(Box<AwaitAuth>),
    Established(Box<Up>),
    /// Deleted by either end (an INFORMATIONAL with Delete(IKE)).
    Closed,
    Failed,
}

/// One IKE SA. See the module documentation for the flow.
pub struct IkeSa {
    role: Role,
    config: Config,
    options: Options,
    /// Both ends announced IKEV2_FRAGMENTATION_SUPPORTED and ours is on: encrypted messages
    /// larger than the fragment size go out in fragments (RFC 7383 §2.3).
    fragmenting: bool,
    /// The peer's fragmented request and fragmented response being reassembled.
    reassembly_request: Option<Reassembly>,
    reassembly_response: Option<Reassembly>,
    /// The inner payloads of a message just reassembled from fragments (each fragment already
    /// authenticated with the peer's key of the current state): what the handler's
    /// [`IkeSa::open_peer`] returns instead of opening an SK payload.
    reassembled: Option<Vec<Payload>>,
    /// Messages of the peer authenticated and processed for the first time (see
    /// [`IkeSa::fresh_peer_messages`]).
    fresh_from_peer: u64,
    spi_i: u64,
    spi_r: u64,
    state: State,
    pending: Option<Pending>,
    cached: Option<CachedResponse>,
    expires: Option<Instant>,
    /// Whether NAT-D showed a NAT (or we or the peer forced one): IKE moves to the NAT-T port
    /// after IKE_SA_INIT and ESP goes in UDP.
    encapsulate: bool,
    /// Counter for the explicit IV of our SK payloads: unique per key (RFC 5282 §3.1).
    next_iv: u64,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for IkeSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeSa")
            .field("role", &self.role)
            .field("spi_i", &format_args!("{:016x}", self.spi_i))
            .field("spi_r", &format_args!("{:016x}", self.spi_r))
            .field("state", &self.state_name())
            .finish_non_exhaustive()
    }
}

fn random_nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rng.fill_bytes(&mut n);
    n
}

fn random_ike_spi<R: CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

fn random_esp_spi<R: CryptoRng + ?Sized>(rng: &mut R) -> u32 {
    tandem_crypto::Spi::random(rng).get()
}

fn ke_of(payloads: &[Payload]) -> Option<(u16, &[u8])> {
    payloads.iter().find_map(|p| match p {
        Payload::Ke { group, data } => Some((*group, data.as_slice())),
        _ => None,
    })
}

fn nonce_of(payloads: &[Payload]) -> Option<&[u8]> {
    payloads.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.as_slice()),
        _ => None,
    })
}

fn sa_of(payloads: &[Payload]) -> Option<&[crate::wire::Proposal]> {
    payloads.iter().find_map(|p| match p {
        Payload::Sa(s) => Some(s.as_slice()),
        _ => None,
    })
}

fn auth_of(payloads: &[Payload]) -> Option<(u8, &[u8])> {
    payloads.iter().find_map(|p| match p {
        Payload::Auth { method, data } => Some((*method, data.as_slice())),
        _ => None,
    })
}

fn first_error(payloads: &[Payload]) -> Option<NotifyType> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty.is_error() => Some(n.ty),
        _ => None,
    })
}

/// The peer's NAT_DETECTION_SOURCE_IP hashes (there may be several) and its
/// NAT_DETECTION_DESTINATION_IP hash.
fn nat_d_of(payloads: &[Payload]) -> (Vec<&[u8]>, Option<&[u8]>) {
    let sources = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Notify(n) if n.ty == NotifyType::NAT_DETECTION_SOURCE_IP => {
                Some(n.data.as_slice())
            }
            _ => None,
        })
        .collect();
    let destination =
        find_notify(payloads, NotifyType::NAT_DETECTION_DESTINATION_IP).map(|n| n.data.as_slice());
    (sources, destination)
}

/// Our NAT-D notifies for the given SPIs (RFC 7296 §2.23).
fn nat_d_payloads(nat: &NatT, spi_i: u64, spi_r: u64) -> [Payload; 2] {
    [
        Payload::Notify(Notify::new(
            NotifyType::NAT_DETECTION_SOURCE_IP,
            nat::source_hash(nat, spi_i, spi_r).to_vec(),
        )),
        Payload::Notify(Notify::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            nat::nat_hash(spi_i, spi_r, nat.remote).to_vec(),
        )),
    ]
}

fn nonce_ok(n: &[u8]) -> bool {
    (MIN_PEER_NONCE..=MAX_PEER_NONCE).contains(&n.len())
}

impl IkeSa {
    /// Starts an IKE SA as initiator: IKE_SA_INIT with the first IKE proposal's group in KE,
    /// ready in [`IkeSa::poll_transmit`]. `config.ike_proposals` must not be empty.
    pub fn initiate<R: CryptoRng + ?Sized>(config: Config, now: Instant, rng: &mut R) -> Self {
        Self::initiate_with(config, Options::default(), now, rng)
    }

    /// [`IkeSa::initiate`] with [`Options`].
    pub fn initiate_with<R: CryptoRng + ?Sized>(
        config: Config,
        options: Options,
        now: Instant,
        rng: &mut R,
    ) -> Self {
        let group = config
            .ike_proposals
            .first()
            .map_or(DhGroup::Ecp384, |p| p.group);
        let spi_i = random_ike_spi(rng);
        let mut sa = Self::new(Role::Initiator, config, options, spi_i);
        let init = InitSent {
            ke: KeyShare::generate(group, rng),
            ni: random_nonce(rng),
            cookie: None,
            retries: 0,
            request: Vec::new(),
        };
        sa.send_init(init, now);
        sa
    }

    /// An IKE SA that waits for a peer's IKE_SA_INIT (the driver creates one per new initiator
    /// SPI).
    pub fn respond(config: Config) -> Self {
        Self::respond_with(config, Options::default())
    }

    /// [`IkeSa::respond`] with [`Options`].
    pub fn respond_with(config: Config, options: Options) -> Self {
        let mut sa = Self::new(Role::Responder, config, options, 0);
        sa.state = State::AwaitInit;
        sa
    }

    fn new(role: Role, config: Config, options: Options, spi_i: u64) -> Self {
        Self {
            role,
            config,
            options,
            fragmenting: false,
            reassembly_request: None,
            reassembly_response: None,
            reassembled: None,
            fresh_from_peer: 0,
            spi_i,
            spi_r: 0,
            state: State::Failed,
            pending: None,
            cached: None,
            expires: None,
            encapsulate: false,
            next_iv: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The initiator's SPI (zero on a responder before IKE_SA_INIT arrived).
    pub fn spi_i(&self) -> u64 {
        self.spi_i
    }

    /// The responder's SPI (zero until IKE_SA_INIT completed).
    pub fn spi_r(&self) -> u64 {
        self.spi_r
    }

    /// The state for status output.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::InitSent(_) => "ike-sa-init-sent",
            State::AuthSent(_) => "ike-auth-sent",
            State::AwaitInit => "awaiting-ike-sa-init",
            State::AwaitAuth(_) => "awaiting-ike-auth",
            State::Established(_) => "established",
            State::Closed => "closed",
            State::Failed => "failed",
        }
    }

    /// Whether IKE messages after IKE_SA_INIT go to the NAT-T port (with the non-ESP marker)
    /// and ESP is carried in UDP: NAT-D showed a NAT, or one end forced it (RFC 7296 §2.23).
    pub fn udp_encapsulation(&self) -> bool {
        self.encapsulate
    }

    /// The transport for a datagram this SA gave [`IkeSa::poll_transmit`]: the NAT-T port
    /// after IKE_SA_INIT when [`IkeSa::udp_encapsulation`] holds, else as `start` (see
    /// [`nat::transport_for`]).
    pub fn transport_for(&self, datagram: &[u8], start: nat::Transport) -> nat::Transport {
        nat::transport_for(datagram, start, self.encapsulate)
    }

    /// Whether both ends negotiated IKE fragmentation (RFC 7383) and ours is on.
    pub fn fragmentation_negotiated(&self) -> bool {
        self.fragmenting
    }

    /// How many of the peer's messages this SA has authenticated and processed for the first
    /// time: IKE_AUTH and every later exchange, never IKE_SA_INIT (not authenticated), a
    /// retransmitted request answered from the cache, or a response to no request of ours.
    /// Each is fresh proof that the peer sends from where that message came: a host that is
    /// not behind a NAT follows the peer there (RFC 7296 §2.23), and a replayed or forged
    /// message cannot move it.
    pub fn fresh_peer_messages(&self) -> u64 {
        self.fresh_from_peer
    }

    /// Whether IKE_AUTH completed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// The next datagram to send to the peer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`IkeSa::handle_timeout`] must next be called: a retransmission or an expiry.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.pending.as_ref().map(|p| p.deadline),
            self.expires,
            self.reassembly_request.as_ref().map(Reassembly::expires),
            self.reassembly_response.as_ref().map(Reassembly::expires),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Retransmits the outstanding request, or gives up, when its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in [&mut self.reassembly_request, &mut self.reassembly_response] {
            if slot.as_ref().is_some_and(|r| now >= r.expires()) {
                debug!("dropping an incomplete fragmented message");
                *slot = None;
            }
        }
        if self.expires.is_some_and(|t| now >= t) {
            self.fail(Failure::HalfOpenExpired);
            return;
        }
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if now < p.deadline {
            return;
        }
        if p.retransmits >= RETRANSMIT_TRIES {
            debug!(exchange = ?p.exchange, "no response after {} retransmissions", p.retransmits);
            self.fail(Failure::Timeout);
            return;
        }
        p.retransmits += 1;
        p.deadline = now + RETRANSMIT_INITIAL * (1 << p.retransmits);
        self.transmit.extend(p.datagrams.iter().cloned());
    }

    /// Whether a request of ours waits for its response (retransmitted on its timer).
    pub fn request_in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// Sends the request in flight again now, the same bytes (RFC 7296 §2.1), without counting a
    /// retransmission or moving its timer: a driver whose liveness checks run faster than this
    /// SA's retransmission schedule probes a silent path with it, and the peer answers a
    /// duplicate from its response cache. Returns false when no request is in flight.
    pub fn resend_request(&mut self) -> bool {
        match &self.pending {
            Some(p) => {
                self.transmit.extend(p.datagrams.iter().cloned());
                true
            }
            None => false,
        }
    }

    fn fail(&mut self, failure: Failure) {
        self.state = State::Failed;
        self.pending = None;
        self.expires = None;
        self.events.push_back(Event::Failed(failure));
    }

    fn header(&self, exchange: ExchangeType, message_id: u32, response: bool) -> Header {
        let mut flags = 0;
        if self.role == Role::Initiator {
            flags |= FLAG_INITIATOR;
        }
        if response {
            flags |= FLAG_RESPONSE;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            exchange,
            flags,
            message_id,
        }
    }

    fn take_iv(&mut self) -> u64 {
        let iv = self.next_iv;
        self.next_iv += 1;
        iv
    }

    /// The largest IKE message we send whole, when fragmentation was negotiated.
    fn fragment_limit(&self) -> Option<usize> {
        let Fragmentation::On { max_datagram } = self.options.fragmentation else {
            return None;
        };
        if !self.fragmenting {
            return None;
        }
        let peer = self
            .config
            .nat_t
            .map(|n| n.remote.ip())
            .or(match &self.config.remote_id {
                Identity::Ipv4(a) => Some((*a).into()),
                Identity::Ipv6(a) => Some((*a).into()),
                _ => None,
            });
        Some(frag::max_message_len(max_datagram, peer))
    }

    /// Seals an encrypted message with a fresh IV: one datagram, or its fragments when
    /// fragmentation was negotiated and the whole message is larger than the fragment size
    /// (RFC 7383 §2.5; never IKE_SA_INIT, which is not encrypted anyway).
    fn seal(&mut self, header: &Header, inner: &[Payload], key: &SaKeys) -> Vec<Vec<u8>> {
        let iv = self.take_iv();
        let whole = seal_message(header, inner, key, iv);
        match self.fragment_limit() {
            Some(max) if whole.len() > max => {
                frag::seal_fragments(header, inner, key, &mut self.next_iv, max)
            }
            _ => vec![whole],
        }
    }

    /// The peer's SK key in the current state (what its encrypted messages open with).
    fn peer_key(&self) -> Option<SaKeys> {
        match &self.state {
            State::AwaitAuth(a) => Some(a.keys.sk_ei.clone()),
            State::AuthSent(a) => Some(a.keys.sk_er.clone()),
            State::Established(up) => Some(up.peer_key(self.role)),
            _ => None,
        }
    }

    /// Opens the peer's encrypted message: the payloads reassembled from fragments if the
    /// message came in fragments (already authenticated with this state's peer key), else the
    /// SK payload of `datagram`.
    fn open_peer(
        &mut self,
        datagram: &[u8],
        msg: &Message,
        key: &SaKeys,
    ) -> Result<Vec<Payload>, ParseError> {
        // Every caller has checked the message ID against the request it expects or the
        // response it waits for: what opens here is fresh.
        let inner = match self.reassembled.take() {
            Some(inner) => Ok(inner),
            None => open_sk(datagram, msg, key),
        };
        if inner.is_ok() {
            self.fresh_from_peer += 1;
        }
        inner
    }

    fn send_request(
        &mut self,
        exchange: ExchangeType,
        message_id: u32,
        datagrams: Vec<Vec<u8>>,
        now: Instant,
    ) {
        self.transmit.extend(datagrams.iter().cloned());
        self.pending = Some(Pending {
            message_id,
            exchange,
            datagrams,
            deadline: now + RETRANSMIT_INITIAL,
            retransmits: 0,
        });
    }

    fn send_response(&mut self, message_id: u32, request: &[u8], response: Vec<Vec<u8>>) {
        self.transmit.extend(response.iter().cloned());
        self.cached = Some(CachedResponse {
            message_id,
            request: request.to_vec(),
            response,
        });
    }

    /// RFC 7296 §2.21.2: an initiator that does not accept the responder's AUTH says so in a
    /// separate INFORMATIONAL request (message ID 2). Sent once: the SA is over either way, and
    /// the responder's own checks expire its SA if this is lost.
    fn send_auth_failed(&mut self, sk_ei: &SaKeys) {
        let header = self.header(ExchangeType::Informational, 2, false);
        let iv = self.take_iv();
        let bytes = seal_message(
            &header,
            &[Payload::Notify(Notify::new(
                NotifyType::AUTHENTICATION_FAILED,
                Vec::new(),
            ))],
            sk_ei,
            iv,
        );
        self.transmit.push_back(bytes);
    }

    fn send_init(&mut self, mut init: InitSent, now: Instant) {
        let mut payloads = Vec::new();
        if let Some(c) = &init.cookie {
            // The COOKIE notify goes first (RFC 7296 §2.6).
            payloads.push(Payload::Notify(Notify::new(NotifyType::COOKIE, c.clone())));
        }
        let proposals = self
            .config
            .ike_proposals
            .iter()
            .zip(1u8..)
            .map(|(p, n)| p.to_wire(n))
            .collect();
        payloads.push(Payload::Sa(proposals));
        payloads.push(Payload::Ke {
            group: init.ke.group().id(),
            data: init.ke.public().to_vec(),
        });
        payloads.push(Payload::Nonce(init.ni.clone()));
        if let Some(nat) = &self.config.nat_t {
            payloads.extend(nat_d_payloads(nat, self.spi_i, 0));
        }
        if self.options.fragmentation != Fragmentation::Off {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                Vec::new(),
            )));
        }
        let msg = Message {
            header: self.header(ExchangeType::IkeSaInit, 0, false),
            payloads,
        };
        init.request = msg.to_bytes();
        self.send_request(ExchangeType::IkeSaInit, 0, vec![init.request.clone()], now);
        self.state = State::InitSent(Box::new(init));
    }

    /// Takes one received IKE message (the UDP payload, without the non-ESP marker on 4500).
    pub fn handle_datagram<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        rng: &mut R,
    ) -> Result<(), Dropped> {
        if frag::is_fragment(datagram) {
            return self.handle_fragment(now, datagram, rng);
        }
        let msg = Message::parse(datagram).map_err(Dropped::Malformed)?;
        let h = msg.header;
        if self.is_old_sa(&h) {
            return self.handle_old_sa(datagram, &msg);
        }
        if h.is_response() {
            self.handle_response(now, datagram, msg, rng)
        } else {
            self.handle_request(now, datagram, msg, rng)
        }
    }

    fn handle_response<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        msg: Message,
        rng: &mut R,
    ) -> Result<(), Dropped> {
        let h = msg.header;
        // A response comes from the other end: its Initiator flag is the opposite of our role.
        let from_initiator = self.role == Role::Responder;
        if h.spi_i != self.spi_i || h.from_initiator() != from_initiator {
            return Err(Dropped::WrongSpi);
        }
        let Some(p) = &self.pending else {
            return Err(Dropped::UnexpectedResponse);
        };
        if p.message_id != h.message_id || p.exchange != h.exchange {
            return Err(Dropped::UnexpectedResponse);
        }
        match std::mem::replace(&mut self.state, State::Failed) {
            State::InitSent(init) => self.on_init_response(now, datagram, msg, *init, rng),
            State::AuthSent(auth) => {
                if h.spi_r != self.spi_r {
                    self.state = State::AuthSent(auth);
                    return Err(Dropped::WrongSpi);
                }
                self.on_auth_response(datagram, &msg, auth)
            }
            State::Established(up) if h.spi_r == self.spi_r => {
                self.on_up_response(now, datagram, &msg, up, rng)
            }
            other => {
                self.state = other;
                Err(Dropped::UnexpectedResponse)
            }
        }
    }

    fn on_init_response<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        msg: Message,
        mut init: InitSent,
        rng: &mut R,
    ) -> Result<(), Dropped> {
        let payloads = &msg.payloads;
        if let Some(n) = find_notify(payloads, NotifyType::INVALID_KE_PAYLOAD) {
            let wanted = <[u8; 2]>::try_from(n.data.as_slice())
                .ok()
                .map(u16::from_be_bytes)
                .and_then(DhGroup::from_id)
                .filter(|g| self.config.ike_proposals.iter().any(|p| p.group == *g));
            match wanted {
                Some(g) if g != init.ke.group() && init.retries < MAX_INIT_RETRIES => {
                    debug!(group = g.id(), "INVALID_KE_PAYLOAD: retrying IKE_SA_INIT");
                    init.ke = KeyShare::generate(g, rng);
                    init.retries += 1;
                    self.send_init(init, now);
                }
                _ => self.fail(Failure::PeerNotify(NotifyType::INVALID_KE_PAYLOAD)),
            }
            return Ok(());
        }
        if let Some(n) = find_notify(payloads, NotifyType::COOKIE) {
            if n.data.is_empty()
                || n.data.len() > MAX_COOKIE_LEN
                || init.retries >= MAX_INIT_RETRIES
            {
                self.fail(Failure::PeerNotify(NotifyType::COOKIE));
            } else {
                init.cookie = Some(n.data.clone());
                init.retries += 1;
                self.send_init(init, now);
            }
            return Ok(());
        }
        if let Some(ty) = first_error(payloads) {
            self.fail(Failure::PeerNotify(ty));
            return Ok(());
        }
        let (Some(sa), Some((group, ke)), Some(nr)) =
            (sa_of(payloads), ke_of(payloads), nonce_of(payloads))
        else {
            self.state = State::InitSent(Box::new(init));
            return Err(Dropped::Invalid(
                "IKE_SA_INIT response without SA, KE or Nr",
            ));
        };
        if msg.header.spi_r == 0 || !nonce_ok(nr) {
            self.state = State::InitSent(Box::new(init));
            return Err(Dropped::Invalid(
                "IKE_SA_INIT response: zero SPIr or bad nonce length",
            ));
        }
        let chosen = match sa {
            [one] => match_ike_response(&self.config.ike_proposals, one),
            _ => None,
        };
        let Some(chosen) = chosen else {
            self.fail(Failure::Protocol(
                "responder chose an IKE proposal we did not offer",
            ));
            return Ok(());
        };
        if chosen.group != init.ke.group() || group != chosen.group.id() {
            self.fail(Failure::Protocol(
                "responder's KE group differs from the chosen proposal",
            ));
            return Ok(());
        }
        let Ok(g_ir) = init.ke.agree(ke) else {
            self.fail(Failure::Protocol(
                "responder's KE is not a valid public value",
            ));
            return Ok(());
        };
        self.spi_r = msg.header.spi_r;
        if let Some(nat) = &self.config.nat_t {
            let (sources, destination) = nat_d_of(payloads);
            self.encapsulate =
                nat::detect(nat, self.spi_i, self.spi_r, &sources, destination).unwrap_or(false);
        }
        self.fragmenting = self.options.fragmentation != Fragmentation::Off
            && find_notify(payloads, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
        let keys = derive_ike_keys(
            chosen.prf,
            &init.ni,
            nr,
            g_ir.as_bytes(),
            self.spi_i,
            self.spi_r,
        );
        let child_spi = random_esp_spi(rng);
        let id_body = self.config.local_id.body();
        let auth = psk_auth(
            keys.prf,
            &self.config.psk,
            &init.request,
            nr,
            &keys.sk_pi,
            &id_body,
        );
        let esp = self
            .config
            .esp_proposals
            .iter()
            .zip(1u8..)
            .map(|(p, n)| p.to_wire_ike_auth(n, child_spi))
            .collect();
        let inner = vec![
            Payload::IdI(self.config.local_id.clone()),
            Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, Vec::new())),
            Payload::IdR(self.config.remote_id.clone()),
            Payload::Auth {
                method: AUTH_METHOD_PSK,
                data: auth,
            },
            Payload::Sa(esp),
            Payload::TsI(self.config.local_ts.clone()),
            Payload::TsR(self.config.remote_ts.clone()),
        ];
        let header = self.header(ExchangeType::IkeAuth, 1, false);
        let datagrams = self.seal(&header, &inner, &keys.sk_ei);
        self.send_request(ExchangeType::IkeAuth, 1, datagrams, now);
        self.state = State::AuthSent(Box::new(AuthSent {
            keys,
            proposal: chosen,
            ni: init.ni,
            nr: nr.to_vec(),
            child_spi,
            init_response: datagram.to_vec(),
        }));
        Ok(())
    }

    fn on_auth_response(
        &mut self,
        datagram: &[u8],
        msg: &Message,
        auth: Box<AuthSent>,
    ) -> Result<(), Dropped> {
        let inner = match self.open_peer(datagram, msg, &auth.keys.sk_er) {
            Ok(p) => p,
            Err(_) => {
                self.state = State::AuthSent(auth);
                return Err(Dropped::DecryptFailed);
            }
        };
        let idr = inner.iter().find_map(|p| match p {
            Payload::IdR(id) => Some(id),
            _ => None,
        });
        let (Some(idr), Some((method, data))) = (idr, auth_of(&inner)) else {
            let failure = match first_error(&inner) {
                Some(ty) => Failure::PeerNotify(ty),
                None => Failure::Protocol("IKE_AUTH response without IDr/AUTH"),
            };
            self.fail(failure);
            return Ok(());
        };
        if *idr != self.config.remote_id {
            warn!(got = %idr, want = %self.config.remote_id, "IKE_AUTH: peer identity is not the configured one");
            self.send_auth_failed(&auth.keys.sk_ei);
            self.fail(Failure::AuthenticationFailed {
                reason: "the responder's identity is not the configured remote_id",
            });
            return Ok(());
        }
        let k = &auth.keys;
        let expected = psk_auth(
            k.prf,
            &self.config.psk,
            &auth.init_response,
            &auth.ni,
            &k.sk_pr,
            &idr.body(),
        );
        if method != AUTH_METHOD_PSK || !auth_eq(&expected, data) {
            warn!("IKE_AUTH: the responder's AUTH does not verify (PSK mismatch?)");
            let sk_ei = k.sk_ei.clone();
            self.send_auth_failed(&sk_ei);
            self.fail(Failure::AuthenticationFailed {
                reason: "the responder's AUTH does not verify with our PSK",
            });
            return Ok(());
        }
        let child = match sa_of(&inner) {
            None => {
                FirstChild::Refused(first_error(&inner).unwrap_or(NotifyType::NO_PROPOSAL_CHOSEN))
            }
            Some(sa) => {
                let spi = match sa {
                    [one] => match_esp_response(one),
                    _ => None,
                };
                let tsi = inner.iter().find_map(|p| match p {
                    Payload::TsI(t) => Some(t.clone()),
                    _ => None,
                });
                let tsr = inner.iter().find_map(|p| match p {
                    Payload::TsR(t) => Some(t.clone()),
                    _ => None,
                });
                let (Some(spi), Some(tsi), Some(tsr)) = (spi, tsi, tsr) else {
                    self.fail(Failure::Protocol(
                        "responder's Child SA is not one we offered",
                    ));
                    return Ok(());
                };
                if !ts::within(&tsi, &self.config.local_ts)
                    || !ts::within(&tsr, &self.config.remote_ts)
                {
                    self.fail(Failure::Protocol(
                        "responder's traffic selectors are wider than ours",
                    ));
                    return Ok(());
                }
                let (i2r, r2i) = derive_child_keys(k.prf, &k.sk_d, None, &auth.ni, &auth.nr);
                FirstChild::Created(ChildSa {
                    inbound_spi: auth.child_spi,
                    outbound_spi: spi,
                    inbound: r2i,
                    outbound: i2r,
                    proposal: self
                        .config
                        .esp_proposals
                        .first()
                        .copied()
                        .unwrap_or(EspProposal { pfs: None }),
                    local_ts: tsi,
                    remote_ts: tsr,
                })
            }
        };
        self.pending = None;
        let auth = *auth;
        let children = match &child {
            FirstChild::Created(c) => vec![c.clone()],
            FirstChild::Refused(_) => Vec::new(),
        };
        self.events
            .push_back(Event::Established(Box::new(Established {
                role: self.role,
                spi_i: self.spi_i,
                spi_r: self.spi_r,
                proposal: auth.proposal,
                keys: auth.keys.clone(),
                child,
            })));
        self.state = State::Established(Box::new(Up::new(auth.keys, auth.proposal, children)));
        self.set_ids_after_auth();
        Ok(())
    }

    fn handle_request<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        msg: Message,
        rng: &mut R,
    ) -> Result<(), Dropped> {
        let h = msg.header;
        let from_initiator = self.role == Role::Responder;
        if h.from_initiator() != from_initiator {
            return Err(Dropped::UnexpectedRequest);
        }
        if self.spi_i != 0 && h.spi_i != self.spi_i {
            return Err(Dropped::WrongSpi);
        }
        // A retransmitted request gets the cached response, byte for byte (RFC 7296 §2.1).
        if let Some(c) = &self.cached
            && c.message_id == h.message_id
            && c.request == datagram
        {
            self.transmit.extend(c.response.iter().cloned());
            return Ok(());
        }
        match std::mem::replace(&mut self.state, State::Failed) {
            State::AwaitInit
                if h.exchange == ExchangeType::IkeSaInit && h.message_id == 0 && h.spi_r == 0 =>
            {
                self.on_init_request(now, datagram, &msg, rng)
            }
            State::AwaitAuth(a)
                if h.exchange == ExchangeType::IkeAuth
                    && h.message_id == 1
                    && h.spi_r == self.spi_r =>
            {
                self.on_auth_request(datagram, &msg, a, rng)
            }
            State::Established(up) if h.spi_r == self.spi_r => {
                self.on_up_request(now, datagram, &msg, up, rng)
            }
            other => {
                self.state = other;
                Err(Dropped::UnexpectedRequest)
            }
        }
    }

    fn on_init_request<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        msg: &Message,
        rng: &mut R,
    ) -> Result<(), Dropped> {
        self.state = State::AwaitInit;
        let payloads = &msg.payloads;
        let (Some(sa), Some((group, ke)), Some(ni)) =
            (sa_of(payloads), ke_of(payloads), nonce_of(payloads))
        else {
            return Err(Dropped::Invalid("IKE_SA_INIT request without SA, KE or Ni"));
        };
        if !nonce_ok(ni) {
            return Err(Dropped::Invalid("IKE_SA_INIT request: bad nonce length"));
        }
        self.spi_i = msg.header.spi_i;
        let reply_notify = |sa: &Self, ty: NotifyType, data: Vec<u8>| {
            let mut header = sa.header(ExchangeType::IkeSaInit, 0, true);
            header.spi_r = 0;
            Message {
                header,
                payloads: vec![Payload::Notify(Notify::new(ty, data))],
            }
            .to_bytes()
        };
        let chosen = match select_ike(&self.config.ike_proposals, sa, group) {
            Ok(c) => c,
            Err(IkeSelectError::InvalidKe(g)) => {
                debug!(
                    offered = group,
                    wanted = g.id(),
                    "IKE_SA_INIT: asking for another KE group"
                );
                // Stateless (RFC 7296 §1.2): the retry comes with the same SPIi and message ID 0.
                let reply = reply_notify(
                    self,
                    NotifyType::INVALID_KE_PAYLOAD,
                    g.id().to_be_bytes().to_vec(),
                );
                self.transmit.push_back(reply);
                return Ok(());
            }
            Err(IkeSelectError::NoProposalChosen) => {
                let offered = proposal::describe(sa);
                warn!(%offered, "IKE_SA_INIT: no acceptable proposal, answering NO_PROPOSAL_CHOSEN");
                let reply = reply_notify(self, NotifyType::NO_PROPOSAL_CHOSEN, Vec::new());
                self.send_response(0, datagram, vec![reply]);
                self.fail(Failure::NoProposalChosen { offered });
                return Ok(());
            }
        };
        let (number, proposal) = chosen;
        let share = KeyShare::generate(proposal.group, rng);
        let Ok(g_ir) = share.agree(ke) else {
            return Err(Dropped::Invalid(
                "IKE_SA_INIT request: KE is not a valid public value",
            ));
        };
        self.spi_r = random_ike_spi(rng);
        let nr = random_nonce(rng);
        let mut out = vec![
            Payload::Sa(vec![proposal.to_wire(number)]),
            Payload::Ke {
                group: proposal.group.id(),
                data: share.public().to_vec(),
            },
            Payload::Nonce(nr.clone()),
        ];
        if let Some(nat) = &self.config.nat_t {
            // The request's hashes were made with SPIr = 0; ours carry both SPIs.
            let (sources, destination) = nat_d_of(payloads);
            if let Some(found) = nat::detect(nat, self.spi_i, 0, &sources, destination) {
                self.encapsulate = found;
                out.extend(nat_d_payloads(nat, self.spi_i, self.spi_r));
            }
        }
        if self.options.fragmentation != Fragmentation::Off
            && find_notify(payloads, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_some()
        {
            self.fragmenting = true;
            out.push(Payload::Notify(Notify::new(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                Vec::new(),
            )));
        }
        let response = Message {
            header: self.header(ExchangeType::IkeSaInit, 0, true),
            payloads: out,
        }
        .to_bytes();
        let keys = derive_ike_keys(
            proposal.prf,
            ni,
            &nr,
            g_ir.as_bytes(),
            self.spi_i,
            self.spi_r,
        );
        self.send_response(0, datagram, vec![response.clone()]);
        self.expires = Some(now + HALF_OPEN_TIMEOUT);
        self.state = State::AwaitAuth(Box::new(AwaitAuth {
            keys,
            proposal,
            ni: ni.to_vec(),
            nr,
            init_request: datagram.to_vec(),
            init_response: response,
        }));
        Ok(())
    }

    fn on_auth_request<R: CryptoRng + ?Sized>(
        &mut self,
        datagram: &[u8],
        msg: &Message,
        a: Box<AwaitAuth>,
        rng: &mut R,
    ) -> Result<(), Dropped> {
        let inner = match self.open_peer(datagram, msg, &a.keys.sk_ei) {
            Ok(p) => p,
            Err(_) => {
                self.state = State::AwaitAuth(a);
                return Err(Dropped::DecryptFailed);
            }
        };
        let idi = inner.iter().find_map(|p| match p {
            Payload::IdI(id) => Some(id),
            _ => None,
        });
        let idr = inner.iter().find_map(|p| match p {
            Payload::IdR(id) => Some(id),
            _ => None,
        });
        let (Some(idi), Some((method, data))) = (idi, auth_of(&inner)) else {
            self.state = State::AwaitAuth(a);
            return Err(Dropped::Invalid("IKE_AUTH request without IDi or AUTH"));
        };
        let k = &a.keys;
        let reason = if *idi != self.config.remote_id {
            warn!(got = %idi, want = %self.config.remote_id, "IKE_AUTH: initiator identity is not the configured one");
            Some("the initiator's identity is not the configured remote_id")
        } else if idr.is_some_and(|id| *id != self.config.local_id) {
            warn!("IKE_AUTH: the initiator asks for another responder identity");
            Some("the initiator asked for another identity than our local_id")
        } else {
            let expected = psk_auth(
                k.prf,
                &self.config.psk,
                &a.init_request,
                &a.nr,
                &k.sk_pi,
                &idi.body(),
            );
            if method != AUTH_METHOD_PSK || !auth_eq(&expected, data) {
                warn!("IKE_AUTH: the initiator's AUTH does not verify (PSK mismatch?)");
                Some("the initiator's AUTH does not verify with our PSK")
            } else {
                None
            }
        };
        let header = self.header(ExchangeType::IkeAuth, 1, true);
        if let Some(reason) = reason {
            // RFC 7296 §2.21.2: the response carries AUTHENTICATION_FAILED, and no SA is made.
            let reply = self.seal(
                &header,
                &[Payload::Notify(Notify::new(
                    NotifyType::AUTHENTICATION_FAILED,
                    Vec::new(),
                ))],
                &k.sk_er,
            );
            self.send_response(1, datagram, reply);
            self.fail(Failure::AuthenticationFailed { reason });
            return Ok(());
        }
        let local_body = self.config.local_id.body();
        let our_auth = psk_auth(
            k.prf,
            &self.config.psk,
            &a.init_response,
            &a.ni,
            &k.sk_pr,
            &local_body,
        );
        let mut out = vec![
            Payload::IdR(self.config.local_id.clone()),
            Payload::Auth {
                method: AUTH_METHOD_PSK,
                data: our_auth,
            },
        ];
        let tsi_offered = inner.iter().find_map(|p| match p {
            Payload::TsI(t) => Some(t.as_slice()),
            _ => None,
        });
        let tsr_offered = inner.iter().find_map(|p| match p {
            Payload::TsR(t) => Some(t.as_slice()),
            _ => None,
        });
        let esp = sa_of(&inner).and_then(|sa| select_esp_ike_auth(&self.config.esp_proposals, sa));
        let child = match (esp, tsi_offered, tsr_offered) {
            (None, ..) => {
                if let Some(sa) = sa_of(&inner) {
                    warn!(offered = %proposal::describe(sa), "IKE_AUTH: no acceptable ESP proposal");
                }
                FirstChild::Refused(NotifyType::NO_PROPOSAL_CHOSEN)
            }
            (Some((number, peer_spi, esp)), Some(tsi), Some(tsr)) => {
                let tsi = ts::narrow(tsi, &self.config.remote_ts);
                let tsr = ts::narrow(tsr, &self.config.local_ts);
                if tsi.is_empty() || tsr.is_empty() {
                    warn!("IKE_AUTH: the initiator's traffic selectors do not overlap ours");
                    FirstChild::Refused(NotifyType::TS_UNACCEPTABLE)
                } else {
                    let spi = random_esp_spi(rng);
                    let (i2r, r2i) = derive_child_keys(k.prf, &k.sk_d, None, &a.ni, &a.nr);
                    out.push(Payload::Sa(vec![esp.to_wire_ike_auth(number, spi)]));
                    out.push(Payload::TsI(tsi.clone()));
                    out.push(Payload::TsR(tsr.clone()));
                    FirstChild::Created(ChildSa {
                        inbound_spi: spi,
                        outbound_spi: peer_spi,
                        inbound: i2r,
                        outbound: r2i,
                        proposal: esp,
                        local_ts: tsr,
                        remote_ts: tsi,
                    })
                }
            }
            (Some(_), ..) => FirstChild::Refused(NotifyType::TS_UNACCEPTABLE),
        };
        if let FirstChild::Refused(ty) = child {
            out.push(Payload::Notify(Notify::new(ty, Vec::new())));
        }
        let reply = self.seal(&header, &out, &k.sk_er);
        self.send_response(1, datagram, reply);
        self.expires = None;
        let a = *a;
        let children = match &child {
            FirstChild::Created(c) => vec![c.clone()],
            FirstChild::Refused(_) => Vec::new(),
        };
        self.events
            .push_back(Event::Established(Box::new(Established {
                role: self.role,
                spi_i: self.spi_i,
                spi_r: self.spi_r,
                proposal: a.proposal,
                keys: a.keys.clone(),
                child,
            })));
        self.state = State::Established(Box::new(Up::new(a.keys, a.proposal, children)));
        self.set_ids_after_auth();
        Ok(())
    }
}

impl IkeSa {
    /// A datagram carrying an Encrypted Fragment payload (RFC 7383 §2.6): checked against the
    /// state like a whole message (SPIs, direction, message ID), authenticated with the peer's
    /// key, stored; the completed message goes to the same handlers as a whole one.
    fn handle_fragment<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        datagram: &[u8],
        rng: &mut R,
    ) -> Result<(), Dropped> {
        let f = frag::parse_fragment(datagram).map_err(Dropped::Malformed)?;
        let h = f.header;
        let from_initiator = self.role == Role::Responder;
        if h.spi_i != self.spi_i || h.spi_r != self.spi_r || h.from_initiator() != from_initiator {
            return Err(Dropped::WrongSpi);
        }
        if h.exchange == ExchangeType::IkeSaInit {
            return Err(Dropped::Invalid("IKE_SA_INIT is never fragmented"));
        }
        if h.is_response() {
            let Some(p) = &self.pending else {
                return Err(Dropped::UnexpectedResponse);
            };
            if p.message_id != h.message_id || p.exchange != h.exchange {
                return Err(Dropped::UnexpectedResponse);
            }
        } else {
            if let Some(c) = &self.cached
                && c.message_id == h.message_id
            {
                // A retransmitted request we answered: the response goes again once per
                // retransmission, on its first fragment; the other fragments are redundant.
                if f.number == 1 && c.request == datagram {
                    self.transmit.extend(c.response.iter().cloned());
                }
                return Ok(());
            }
            let expected = match &self.state {
                State::AwaitAuth(_) => 1,
                State::Established(up) => up.peer_next(),
                _ => return Err(Dropped::UnexpectedRequest),
            };
            if h.message_id != expected {
                return Err(Dropped::UnexpectedRequest);
            }
        }
        let Some(key) = self.peer_key() else {
            return Err(Dropped::UnexpectedRequest);
        };
        let plain = f.open(&key).map_err(|_| Dropped::DecryptFailed)?;
        let slot = if h.is_response() {
            &mut self.reassembly_response
        } else {
            &mut self.reassembly_request
        };
        match Reassembly::add(slot, now, &f, plain) {
            Added::Stored | Added::Duplicate => Ok(()),
            Added::Refused(why) => Err(Dropped::Invalid(why)),
            Added::Complete {
                first_payload,
                plain,
                first_datagram,
            } => {
                let inner =
                    parse_chain(first_payload, &plain, false).map_err(Dropped::Malformed)?;
                self.reassembled = Some(inner);
                let msg = Message {
                    header: h,
                    payloads: Vec::new(),
                };
                let result = if h.is_response() {
                    self.handle_response(now, &first_datagram, msg, rng)
                } else {
                    self.handle_request(now, &first_datagram, msg, rng)
                };
                self.reassembled = None;
                result
            }
        }
    }
}
