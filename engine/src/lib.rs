//! tandem's gateway engine, sans-IO: tunnels (handshake driving, rekey, keepalive/DPD), the
//! failover selector, the router and traffic selectors. No sockets and no clocks.
#![forbid(unsafe_code)]
