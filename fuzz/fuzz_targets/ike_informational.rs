//! INFORMATIONAL processing on an established responder: the input is the inner payload chain
//! of a request (liveness, Delete of Child or IKE SA, notifies), sealed with the real SK_ei as
//! message ID 2, delivered twice (the second is a retransmission); or raw bytes.
//! Invariants: no panic; what the responder sends parses; a retransmission gets the same
//! answer and changes nothing.
#![no_main]

#[path = "ike_common.rs"]
mod ike_common;

use libfuzzer_sys::fuzz_target;
use tandem_ike::wire::ExchangeType;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut peer = ike_common::Peer::established();
    if mode & 1 == 0 {
        peer.deliver(rest);
        return;
    }
    let Some((&first, plain)) = rest.split_first() else {
        return;
    };
    let d = peer.seal(ExchangeType::Informational, 2, first, plain);
    let _ = peer.sa.handle_datagram(peer.now, &d, &mut peer.rng);
    let first_answer: Vec<Vec<u8>> = std::iter::from_fn(|| peer.sa.poll_transmit()).collect();
    let state = peer.sa.state_name();
    peer.drain();
    let _ = peer.sa.handle_datagram(peer.now, &d, &mut peer.rng);
    let again: Vec<Vec<u8>> = std::iter::from_fn(|| peer.sa.poll_transmit()).collect();
    if !first_answer.is_empty() && state == "established" {
        assert_eq!(
            again, first_answer,
            "a retransmission gets the cached answer"
        );
    }
    assert_eq!(
        peer.sa.state_name(),
        state,
        "a retransmission changes nothing"
    );
    peer.drain();
});
