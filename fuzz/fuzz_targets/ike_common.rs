// Shared by the IKE exchange targets: a tandem-ike responder brought, deterministically, to the
// state a target fuzzes (waiting for IKE_AUTH, or established), with the keys a fuzzed message
// must be sealed with so that it gets past the AEAD to the exchange's processing.
//
// The peer side is built by hand from the codec and the key schedule (fixed X25519 private key,
// nonce and SPI), the responder runs on a seeded RNG: every run of a target sees the same SAs.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_ike::keys::{AUTH_METHOD_PSK, IkeKeys, derive_ike_keys, psk_auth};
use tandem_ike::ts::ipv4_prefix;
use tandem_ike::wire::{
    ExchangeType, FLAG_INITIATOR, Header, Message, Notify, NotifyType, Payload, seal_plaintext,
};
use tandem_ike::{
    Config, DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, DhGroup, Event, Identity, IkeProposal,
    IkeSa, KeyShare, Psk,
};

pub const SPI_I: u64 = 0x0102_0304_0506_0708;
pub const NI: [u8; 32] = [0x11; 32];
/// The ESP SPI our side offers in IKE_AUTH: the responder's first Child SA sends with it, so a
/// fuzzed rekey or delete can name it (its big-endian bytes are in the seeds).
pub const CHILD_SPI: u32 = 0x0000_1000;
const PSK: &[u8] = b"fuzz pre-shared key";
const OUR_X25519: [u8; 32] = [0x42; 32];

pub fn proposal() -> IkeProposal {
    "aes256gcm16-prfsha256-x25519"
        .parse()
        .expect("a valid proposal name")
}

pub fn our_id() -> Identity {
    Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1))
}

/// The responder's configuration (the VPC gateway of the tests).
pub fn responder_config() -> Config {
    Config {
        psk: Psk::new(PSK),
        local_id: Identity::Fqdn("vpn.example.net".into()),
        remote_id: our_id(),
        ike_proposals: DEFAULT_IKE_PROPOSALS.to_vec(),
        esp_proposals: DEFAULT_ESP_PROPOSALS.to_vec(),
        local_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 20, 0, 0), 16)],
        remote_ts: vec![ipv4_prefix(Ipv4Addr::new(10, 10, 0, 0), 16)],
        nat_t: None,
    }
}

pub fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed([7; 32])
}

fn share() -> KeyShare {
    KeyShare::from_private_bytes(DhGroup::Curve25519, &OUR_X25519).expect("32-byte X25519 key")
}

/// Our IKE_SA_INIT request: one X25519 proposal, KE, Ni, and fragmentation support.
pub fn init_request() -> Vec<u8> {
    Message {
        header: Header {
            spi_i: SPI_I,
            spi_r: 0,
            exchange: ExchangeType::IkeSaInit,
            flags: FLAG_INITIATOR,
            message_id: 0,
        },
        payloads: vec![
            Payload::Sa(vec![proposal().to_wire(1)]),
            Payload::Ke {
                group: DhGroup::Curve25519.id(),
                data: share().public().to_vec(),
            },
            Payload::Nonce(NI.to_vec()),
            Payload::Notify(Notify::new(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                Vec::new(),
            )),
        ],
    }
    .to_bytes()
}

/// A responder and what its peer (us) knows.
pub struct Peer {
    pub sa: IkeSa,
    pub rng: ChaCha20Rng,
    pub now: Instant,
    pub spi_r: u64,
    pub keys: IkeKeys,
    pub init_request: Vec<u8>,
    pub nr: Vec<u8>,
    next_iv: u64,
}

impl Peer {
    /// A responder that answered our IKE_SA_INIT and waits for IKE_AUTH.
    pub fn awaiting_auth() -> Self {
        let mut rng = rng();
        let now = Instant::now();
        let mut sa = IkeSa::respond(responder_config());
        let init_request = init_request();
        sa.handle_datagram(now, &init_request, &mut rng)
            .expect("the responder takes our IKE_SA_INIT");
        let response = sa.poll_transmit().expect("an IKE_SA_INIT response");
        let m = Message::parse(&response).expect("the response parses");
        let mut nr = Vec::new();
        let mut ke = Vec::new();
        for p in m.payloads {
            match p {
                Payload::Nonce(n) => nr = n,
                Payload::Ke { data, .. } => ke = data,
                _ => {}
            }
        }
        let spi_r = m.header.spi_r;
        // The responder runs on the same seeded RNG every time, so its KE, Nr and SPIr are the
        // same in every run: our side's DH (slow under the fuzzer's instrumentation) once.
        static KEYS: OnceLock<(Vec<u8>, Vec<u8>, u64, IkeKeys)> = OnceLock::new();
        let (cached_ke, cached_nr, cached_spi, keys) = KEYS.get_or_init(|| {
            let g_ir = share().agree(&ke).expect("the responder's KE is valid");
            let keys = derive_ike_keys(proposal().prf, &NI, &nr, g_ir.as_bytes(), SPI_I, spi_r);
            (ke.clone(), nr.clone(), spi_r, keys)
        });
        assert!(
            *cached_ke == ke && *cached_nr == nr && *cached_spi == spi_r,
            "the responder is deterministic"
        );
        let keys = keys.clone();
        Peer {
            sa,
            rng,
            now,
            spi_r,
            keys,
            init_request,
            nr,
            next_iv: 0,
        }
    }

    /// A responder with an established IKE SA and its first Child SA.
    pub fn established() -> Self {
        let mut p = Self::awaiting_auth();
        let auth = psk_auth(
            p.keys.prf,
            &Psk::new(PSK),
            &p.init_request,
            &p.nr,
            &p.keys.sk_pi,
            &our_id().body(),
        );
        let inner = [
            Payload::IdI(our_id()),
            Payload::Auth {
                method: AUTH_METHOD_PSK,
                data: auth,
            },
            Payload::Sa(vec![
                DEFAULT_ESP_PROPOSALS[0].to_wire_ike_auth(1, CHILD_SPI),
            ]),
            Payload::TsI(vec![ipv4_prefix(Ipv4Addr::new(10, 10, 0, 0), 16)]),
            Payload::TsR(vec![ipv4_prefix(Ipv4Addr::new(10, 20, 0, 0), 16)]),
        ];
        let d = p.seal_payloads(ExchangeType::IkeAuth, 1, &inner);
        p.deliver(&d);
        assert!(p.sa.is_established(), "the responder accepts our IKE_AUTH");
        while p.sa.poll_event().is_some() {}
        p
    }

    pub fn header(&self, exchange: ExchangeType, message_id: u32) -> Header {
        Header {
            spi_i: SPI_I,
            spi_r: self.spi_r,
            exchange,
            flags: FLAG_INITIATOR,
            message_id,
        }
    }

    fn take_iv(&mut self) -> u64 {
        self.next_iv += 1;
        self.next_iv
    }

    /// A request from us: `plain` (an inner payload chain starting with type `first`) sealed
    /// with SK_ei, so that whatever it holds reaches the responder's exchange processing.
    pub fn seal(
        &mut self,
        exchange: ExchangeType,
        message_id: u32,
        first: u8,
        plain: &[u8],
    ) -> Vec<u8> {
        let header = self.header(exchange, message_id);
        let iv = self.take_iv();
        seal_plaintext(&header, first, plain, &self.keys.sk_ei, iv)
    }

    pub fn seal_payloads(
        &mut self,
        exchange: ExchangeType,
        message_id: u32,
        inner: &[Payload],
    ) -> Vec<u8> {
        let header = self.header(exchange, message_id);
        let iv = self.take_iv();
        tandem_ike::wire::seal_message(&header, inner, &self.keys.sk_ei, iv)
    }

    /// Hands a datagram to the responder and checks what comes out: every datagram it sends
    /// parses, every event is one an exchange may produce.
    pub fn deliver(&mut self, d: &[u8]) {
        let _ = self.sa.handle_datagram(self.now, d, &mut self.rng);
        self.drain();
    }

    pub fn drain(&mut self) {
        while let Some(out) = self.sa.poll_transmit() {
            let parsed = if tandem_ike::frag::is_fragment(&out) {
                tandem_ike::frag::parse_fragment(&out).map(|_| ())
            } else {
                Message::parse(&out).map(|_| ())
            };
            parsed.expect("what the responder sends parses");
        }
        while let Some(e) = self.sa.poll_event() {
            if let Event::Established(est) = &e {
                assert_eq!(est.spi_i, SPI_I);
            }
        }
        if let Some(t) = self.sa.poll_timeout() {
            assert!(t >= self.now, "a deadline in the past");
        }
    }
}
