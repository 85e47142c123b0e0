//! A responder's IKE_AUTH processing: a responder that answered our IKE_SA_INIT gets an
//! IKE_AUTH request whose inner payload chain is the input, sealed with the real SK_ei so it
//! reaches the identity, AUTH, proposal and traffic-selector checks; or raw bytes.
//! Invariants: no panic; what the responder sends parses; it is never established by a
//! message without our PSK's AUTH (the input cannot compute it).
#![no_main]

#[path = "ike_common.rs"]
mod ike_common;

use libfuzzer_sys::fuzz_target;
use tandem_ike::wire::ExchangeType;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut peer = ike_common::Peer::awaiting_auth();
    if mode & 1 == 0 {
        peer.deliver(rest);
    } else {
        let Some((&first, plain)) = rest.split_first() else {
            return;
        };
        let d = peer.seal(ExchangeType::IkeAuth, 1, first, plain);
        peer.deliver(&d);
        // A retransmission is answered from the cache, never processed twice.
        peer.deliver(&d);
    }
    assert!(!peer.sa.is_established(), "established without the PSK");
});
