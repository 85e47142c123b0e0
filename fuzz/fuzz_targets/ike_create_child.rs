//! CREATE_CHILD_SA processing on an established responder: the input is the inner payload
//! chain of a request (Child SA rekey, IKE SA rekey, or anything else), sealed with the real
//! SK_ei as message ID 2, then a second request (ID 3) with the same chain, as after a
//! successful IKE SA rekey the IDs restart; or raw bytes. Invariants: no panic; what the
//! responder sends parses; a liveness request still gets its answer afterwards.
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
    let d = peer.seal(ExchangeType::CreateChildSa, 2, first, plain);
    peer.deliver(&d);
    peer.deliver(&d);
    let d = peer.seal(ExchangeType::CreateChildSa, 3, first, plain);
    peer.deliver(&d);
});
