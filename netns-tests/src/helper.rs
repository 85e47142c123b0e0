//! The helper programs the lab runs inside namespaces — the probe sender, the probe reflector and
//! the WAN emulator — live in this library and are reached through one executable: the `probe`
//! binary (`probe send|reflect|wanem …`) or the `lab` binary's hidden `helper` subcommand. Tests
//! point the lab at `CARGO_BIN_EXE_probe`; the `lab` binary points it at itself.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::netns::Netns;

/// How to start a helper: an executable plus arguments that come before the helper's own.
#[derive(Debug, Clone)]
pub struct HelperExe {
    /// The executable.
    pub exe: PathBuf,
    /// Arguments placed before the helper subcommand (`["helper"]` for the `lab` binary).
    pub prefix_args: Vec<OsString>,
}

static HELPER: OnceLock<HelperExe> = OnceLock::new();

/// Sets the helper executable for this process (first call wins).
pub fn set_helper(exe: impl Into<PathBuf>, prefix_args: &[&str]) {
    let _ = HELPER.set(HelperExe {
        exe: exe.into(),
        prefix_args: prefix_args.iter().map(OsString::from).collect(),
    });
}

/// The helper executable: the one set with [`set_helper`], else a `probe` binary next to the
/// current executable or one directory up (test executables live in `target/<profile>/deps`).
pub fn helper() -> HelperExe {
    if let Some(h) = HELPER.get() {
        return h.clone();
    }
    let mut exe = PathBuf::from("probe");
    if let Ok(cur) = std::env::current_exe() {
        if let Some(dir) = cur.parent() {
            for cand in [dir.join("probe"), dir.join("../probe")] {
                if cand.exists() {
                    exe = cand;
                    break;
                }
            }
        }
    }
    HelperExe {
        exe,
        prefix_args: Vec::new(),
    }
}

/// A command that runs helper `sub` inside `ns`.
pub fn helper_command(ns: &Netns, sub: &str) -> Command {
    let h = helper();
    let mut cmd = ns.command(&h.exe);
    cmd.args(&h.prefix_args).arg(sub);
    cmd
}

/// Entry point of the helper executable: dispatches `send`, `reflect` and `wanem`.
pub fn helper_main(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("send") => crate::probe::sender_main(&args[1..]),
        Some("reflect") => crate::probe::reflector_main(&args[1..]),
        Some("wanem") => crate::wanem::wanem_main(&args[1..]),
        _ => Err("usage: probe send|reflect|wanem [options]".to_string()),
    }
}

/// Parses `--key value` pairs; a flag without a value is an error.
pub(crate) fn parse_opts(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {k}"))?;
        let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        out.push((key.to_string(), v.clone()));
    }
    Ok(out)
}
