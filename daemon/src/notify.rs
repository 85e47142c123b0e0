//! systemd readiness, status and watchdog notifications (`sd_notify`).
