//! tandem's TOML configuration: schema, defaults, validation with `FILE:LINE:COL` errors, and
//! key/PSK file loading with permission checks.
#![forbid(unsafe_code)]
