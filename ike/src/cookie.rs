//! Stateless COOKIEs for a responder under load (RFC 7296 §2.6).
//!
//! ```text
//! initiator                                   responder (half-open SAs >= threshold)
//!   -- HDR(SPIi, 0), SAi1, KEi, Ni -------->  no state kept: answers with
//!   <- HDR(SPIi, 0), N(COOKIE) -------------  cookie = version | HMAC(secret_v, Ni | IPi | SPIi)
//!   -- HDR(SPIi, 0), N(COOKIE), SAi1, KEi, Ni -->  the cookie verifies: admitted, the driver
//!                                                  makes an IkeSa for it as usual
//! ```
//!
//! The flow the driver follows for every IKE_SA_INIT request that does not belong to an IKE SA
//! it already has: [`CookieJar::admit`] with the request, its source address and how many
//! half-open IKE SAs (IKE_SA_INIT answered, IKE_AUTH not yet done) it holds. Below
//! [`AdmissionPolicy::threshold`] every request is admitted. At or above it, only a request that
//! echoes a valid cookie is; the others get the COOKIE answer to send back and leave no state,
//! so a flood from spoofed addresses (which never see the cookie) costs one HMAC per datagram and
//! no DH. At [`AdmissionPolicy::max_half_open`] nothing is admitted at all: even initiators that
//! can receive cookies (real addresses) cannot grow the half-open table past it.
//!
//! The secret rotates every [`SECRET_LIFETIME`]; a cookie names the secret's version in its
//! first byte and the previous secret is still accepted, so a rotation between the COOKIE answer
//! and the retry costs nothing, and a cookie is never valid longer than two lifetimes. Secrets
//! are zeroized on drop and never logged.
//!
//! The initiator's side (retrying with the cookie the responder sent, keeping its SPIi and Ni)
//! is in [`crate::sa`].

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use ring::hmac;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::wire::{
    ExchangeType, FLAG_RESPONSE, Header, Message, Notify, NotifyType, Payload, find_notify,
    parse_header,
};

/// Length of the MAC in a cookie: HMAC-SHA256 cut to 128 bits. A forger must guess it for a
/// given (Ni, IPi, SPIi) within two secret lifetimes; 2^-128 per try is far beyond reach.
pub const COOKIE_MAC_LEN: usize = 16;
/// A cookie: one version byte, then the MAC (RFC 7296 §2.6 allows 1..64 bytes).
pub const COOKIE_LEN: usize = 1 + COOKIE_MAC_LEN;
/// How long one secret signs new cookies. Tuning: a cookie needs one round trip to come back
/// (well under a second); rotating every minute keeps a leaked cookie useful for at most two
/// minutes (current + previous secret).
pub const SECRET_LIFETIME: Duration = Duration::from_secs(60);
/// Half-open IKE SAs before cookies are demanded. Tuning: a gateway's peers rarely have more
/// than a handful of IKE_SA_INITs open at once (a hub restarting many branches at once pays one
/// extra round trip, nothing more); strongSwan's default is of the same order (30).
pub const DEFAULT_HALF_OPEN_THRESHOLD: usize = 32;
/// Half-open IKE SAs past which nothing is admitted, cookie or not. Tuning: a half-open SA holds
/// its keys, nonces and both IKE_SA_INIT messages (about 2 KiB), so the cap bounds that state
/// to a few MiB; it expires after [`crate::sa::HALF_OPEN_TIMEOUT`].
pub const DEFAULT_MAX_HALF_OPEN: usize = 1024;

/// When cookies are demanded and when nothing is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// Half-open IKE SAs at which cookies are demanded (0: always).
    pub threshold: usize,
    /// Half-open IKE SAs at which nothing more is admitted.
    pub max_half_open: usize,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_HALF_OPEN_THRESHOLD,
            max_half_open: DEFAULT_MAX_HALF_OPEN,
        }
    }
}

/// What to do with an IKE_SA_INIT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Make a responder for it ([`crate::IkeSa::respond`]) and hand it the datagram.
    Admit,
    /// Send these bytes back to the source (a COOKIE notify) and keep nothing.
    Cookie(Vec<u8>),
    /// Drop it: the half-open table is full, or the datagram is not an IKE_SA_INIT request.
    Drop(Refused),
}

/// Why [`CookieJar::admit`] refused a datagram. A `Copy` enum: it can double as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The half-open table is at [`AdmissionPolicy::max_half_open`].
    #[error("too many half-open IKE SAs")]
    Full,
    /// Not an IKE_SA_INIT request with message ID 0 and a zero SPIr, or it has no nonce.
    #[error("not an IKE_SA_INIT request")]
    NotInit,
}

struct Secret {
    version: u8,
    key: Zeroizing<[u8; 32]>,
}

impl Secret {
    fn generate<R: CryptoRng + ?Sized>(version: u8, rng: &mut R) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        Self { version, key }
    }

    fn mac(&self, ni: &[u8], ip: IpAddr, spi_i: u64) -> [u8; COOKIE_MAC_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.key.as_ref());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(ni);
        match ip {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&spi_i.to_be_bytes());
        let mut out = [0u8; COOKIE_MAC_LEN];
        out.copy_from_slice(&ctx.sign().as_ref()[..COOKIE_MAC_LEN]);
        out
    }
}

/// The responder's cookie secrets and admission rule. One per listening socket (or per
/// gateway); it keeps no per-initiator state.
pub struct CookieJar {
    policy: AdmissionPolicy,
    current: Secret,
    previous: Option<Secret>,
    rotate_at: Instant,
    issued: u64,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets: only which version signs.
        f.debug_struct("CookieJar")
            .field("policy", &self.policy)
            .field("version", &self.current.version)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// A jar with a fresh secret (version 0), rotating [`SECRET_LIFETIME`] after `now`.
    pub fn new<R: CryptoRng + ?Sized>(policy: AdmissionPolicy, now: Instant, rng: &mut R) -> Self {
        Self {
            policy,
            current: Secret::generate(0, rng),
            previous: None,
            rotate_at: now + SECRET_LIFETIME,
            issued: 0,
        }
    }

    /// The admission rule.
    pub fn policy(&self) -> AdmissionPolicy {
        self.policy
    }

    /// How many COOKIE answers this jar made.
    pub fn cookies_issued(&self) -> u64 {
        self.issued
    }

    /// When the secret rotates next.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.rotate_at
    }

    /// Rotates the secret if its lifetime is over: the current one becomes the previous one
    /// (still accepted), a new one with the next version signs from now on.
    pub fn handle_timeout<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        if now < self.rotate_at {
            return;
        }
        let next = Secret::generate(self.current.version.wrapping_add(1), rng);
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.rotate_at = now + SECRET_LIFETIME;
    }

    /// The cookie for an initiator's nonce, address and SPI under the current secret.
    pub fn cookie(&self, ni: &[u8], ip: IpAddr, spi_i: u64) -> [u8; COOKIE_LEN] {
        let mut out = [0u8; COOKIE_LEN];
        out[0] = self.current.version;
        out[1..].copy_from_slice(&self.current.mac(ni, ip, spi_i));
        out
    }

    /// Whether `cookie` is one this jar made (under the current or the previous secret) for
    /// this nonce, address and SPI. Constant time in the MAC.
    pub fn verify(&self, cookie: &[u8], ni: &[u8], ip: IpAddr, spi_i: u64) -> bool {
        let Some((&version, mac)) = cookie.split_first() else {
            return false;
        };
        if mac.len() != COOKIE_MAC_LEN {
            return false;
        }
        let secret = if version == self.current.version {
            &self.current
        } else {
            match &self.previous {
                Some(p) if p.version == version => p,
                _ => return false,
            }
        };
        bool::from(secret.mac(ni, ip, spi_i).ct_eq(mac))
    }

    /// Decides what to do with a datagram that may be an IKE_SA_INIT request (the UDP payload,
    /// without a non-ESP marker), from `from`, while the driver holds `half_open` half-open
    /// IKE SAs. See the module documentation for the rule.
    pub fn admit(&mut self, datagram: &[u8], from: IpAddr, half_open: usize) -> Admission {
        // The header first: the cheap check that keeps non-INIT junk from a full parse.
        let Ok((h, _)) = parse_header(datagram) else {
            return Admission::Drop(Refused::NotInit);
        };
        if h.exchange != ExchangeType::IkeSaInit
            || h.is_response()
            || h.message_id != 0
            || h.spi_r != 0
        {
            return Admission::Drop(Refused::NotInit);
        }
        if half_open >= self.policy.max_half_open {
            return Admission::Drop(Refused::Full);
        }
        if half_open < self.policy.threshold {
            return Admission::Admit;
        }
        let Ok(msg) = Message::parse(datagram) else {
            return Admission::Drop(Refused::NotInit);
        };
        let Some(ni) = msg.payloads.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.as_slice()),
            _ => None,
        }) else {
            return Admission::Drop(Refused::NotInit);
        };
        if let Some(n) = find_notify(&msg.payloads, NotifyType::COOKIE)
            && self.verify(&n.data, ni, from, h.spi_i)
        {
            return Admission::Admit;
        }
        self.issued += 1;
        let reply = Message {
            header: Header {
                spi_i: h.spi_i,
                spi_r: 0,
                exchange: ExchangeType::IkeSaInit,
                flags: FLAG_RESPONSE,
                message_id: 0,
            },
            payloads: vec![Payload::Notify(Notify::new(
                NotifyType::COOKIE,
                self.cookie(ni, from, h.spi_i).to_vec(),
            ))],
        };
        Admission::Cookie(reply.to_bytes())
    }
}
