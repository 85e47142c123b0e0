//! The `tandem` binary: CLI, data plane, control socket, metrics and systemd integration — the
//! imperative shell that drives `tandem-engine`.

fn main() {}
