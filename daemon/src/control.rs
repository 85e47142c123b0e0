//! The control socket: `status`, `reload`, `failover`, `drill` requests from the CLI to the running daemon.
