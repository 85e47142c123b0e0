//! The `tandem` daemon as a library: the binary in `main.rs` is a thin CLI over these modules, and
//! tests (the counting-allocator test, the notify tests) drive them directly.

pub mod admin;
pub mod caps;
pub mod check;
pub mod cli;
pub mod dataplane;
pub mod hooks;
pub mod import;
pub mod keylog;
pub mod keys;
pub mod notify;
pub mod run;
