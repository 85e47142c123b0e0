#![allow(clippy::unwrap_used)]
//! `tandem genkey`, `pubkey`, `genpsk` and `--help` as real processes.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(TANDEM)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn is_44_base64_chars_and_newline(s: &str) -> bool {
    s.len() == 45
        && s.ends_with("=\n")
        && s[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[test]
fn genkey_and_genpsk_print_44_base64_characters_and_differ_each_time() {
    for cmd in ["genkey", "genpsk"] {
        let a = run(&[cmd], "");
        let b = run(&[cmd], "");
        assert_eq!(a.status.code(), Some(0));
        assert!(
            is_44_base64_chars_and_newline(&stdout(&a)),
            "{:?}",
            stdout(&a)
        );
        assert_ne!(stdout(&a), stdout(&b), "{cmd} repeated itself");
    }
}

#[test]
fn pubkey_derives_the_same_public_key_as_x25519() {
    let private = stdout(&run(&["genkey"], ""));
    let out = run(&["pubkey"], &private);
    assert_eq!(out.status.code(), Some(0));
    let public = stdout(&out);
    assert!(is_44_base64_chars_and_newline(&public));
    let k = tandem_config::parse_key_base64(&private).unwrap();
    let expected = tandem_config::parse_key_base64(&public).unwrap();
    assert_eq!(
        x25519_dalek::x25519(*k, x25519_dalek::X25519_BASEPOINT_BYTES),
        *expected
    );
}

#[test]
fn pubkey_rejects_bad_input_with_exit_1() {
    for input in ["", "hello\n", "AQEBAQEBAQEBAQEBAQEBAQ==\n"] {
        let out = run(&["pubkey"], input);
        assert_eq!(out.status.code(), Some(1), "input {input:?}");
        assert_eq!(stdout(&out), "");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.starts_with("tandem: invalid private key on standard input: "),
            "{err}"
        );
    }
}

#[test]
fn every_command_has_help_with_examples() {
    for cmd in [
        "genkey", "pubkey", "genpsk", "check", "run", "status", "reload", "failover", "drill",
    ] {
        let out = run(&[cmd, "--help"], "");
        assert_eq!(out.status.code(), Some(0), "{cmd} --help");
        let help = stdout(&out);
        assert!(
            help.contains("Examples:\n  "),
            "{cmd} --help has no examples:\n{help}"
        );
        assert!(
            help.contains(&format!("tandem {cmd}")),
            "{cmd} --help shows no use of it"
        );
    }
    let top = stdout(&run(&["--help"], ""));
    assert!(top.contains("Exit status: 0 success, 1 user error"));
}

#[test]
fn usage_errors_exit_1_not_2_which_means_daemon_unreachable() {
    for args in [
        &["bogus"][..],
        &["check"],
        &["failover"],
        &["drill", "x", "--duration", "soon"],
    ] {
        let out = run(args, "");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
}
