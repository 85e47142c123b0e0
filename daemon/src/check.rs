//! `tandem check -c FILE`: validate a config and the key files it names.
//!
//! The same [`tandem_config::load`] that `tandem run` uses, so what `check` accepts is exactly
//! what `run` will start with. On success a one-line summary is returned for stdout; on failure
//! the error prints one `FILE:LINE:COL: path: message` line per problem.

use std::path::Path;

use tandem_config::{Config, ConfigError};

/// Loads and validates `path`; the summary line on success.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    let config = tandem_config::load(path)?;
    Ok(summary(path, &config))
}

fn summary(path: &Path, c: &Config) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}: OK ({}, {}; tun {} mtu {})",
        path.display(),
        plural(c.connections.len(), "connection"),
        plural(c.tunnel_count(), "tunnel"),
        c.gateway.tun_name,
        c.gateway.mtu
    )
}
