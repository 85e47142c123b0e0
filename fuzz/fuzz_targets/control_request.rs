//! Control-socket requests as the daemon reads them (`serde_json::from_slice::<Request>` on the
//! bytes of one connection, `tandem::run`), and the CLI's renderers of what the daemon answers
//! (`render_status`, `render_status_view` with colours, ages and rates, `render_drill`) and the `tandem events` line renderer (`render_event`), on
//! arbitrary bytes.
//! Invariants: no panic; an accepted request serialises and parses back to the same request;
//! rendering any JSON document or event line does not panic.
//!
//! The wire types live in the `tandem-admin` crate (std, serde and thiserror only), so this
//! target fuzzes the real types without building the daemon's runtime dependencies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_admin::{
    EventRecord, Reply, Request, View, render_drill, render_event, render_status,
    render_status_view,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        let text = serde_json::to_vec(&req).expect("a request serialises");
        let back: Request = serde_json::from_slice(&text).expect("and parses back");
        assert_eq!(back, req, "request does not round-trip");
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(data) {
        let _ = serde_json::to_vec(&reply).expect("a reply serialises");
    }
    if let Ok(rec) = serde_json::from_slice::<EventRecord>(data) {
        let _ = render_event(&rec);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = render_status(&v);
        // The document against an empty previous sample and against itself (rates of 0 and "-").
        let empty = serde_json::Value::Null;
        for previous in [&empty, &v] {
            let view = View {
                colour: true,
                now_unix: Some(u64::MAX),
                rates: true,
                previous: Some((previous, std::time::Duration::from_millis(1))),
            };
            let _ = render_status_view(&v, &view);
        }
        let _ = render_drill(&v);
    }
});
