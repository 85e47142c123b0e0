//! The Prometheus text endpoint (SPEC §7).
