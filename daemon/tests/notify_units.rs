//! CI checks for the systemd units and the install recipe (docs/operations.md):
//! - `systemd-analyze verify` accepts `tandem.service` and `tandem@.service` with no warning;
//! - `systemd-analyze security --offline=yes` scores both at 2.0 or lower;
//! - every directive of the `[Service]` section carries a comment saying why;
//! - the template differs from the plain unit only on lines marked `instance:`;
//! - `systemd/install.sh` with `DESTDIR=` stages the binary, the units, the sysusers file and a
//!   0700 `/etc/tandem` with the right modes, and the staged units verify too.
//!
//! `verify` insists that `ExecStart=`'s binary exists, and `/usr/local/bin/tandem` does not on a
//! CI machine. So the checks verify a copy of each unit whose `/usr/local/bin/tandem` is rewritten
//! to the binary cargo just built (`CARGO_BIN_EXE_tandem`), exactly the rewrite `install.sh` does
//! for a non-default `PREFIX`; everything else in the copy is byte-identical. The security score
//! does not look at the binary and runs on the pristine files.
#![allow(clippy::unwrap_used)]
#![allow(clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MAX_EXPOSURE: f64 = 2.0;
const UNITS: [&str; 2] = ["tandem.service", "tandem@.service"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unit_path(name: &str) -> PathBuf {
    repo().join("systemd").join(name)
}

/// `true` when `systemd-analyze` can run; skipping loudly is allowed only outside CI.
fn have_systemd_analyze() -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing in CI (apt package systemd)"
        );
        eprintln!("SKIPPING: systemd-analyze not installed (apt-get install systemd)");
    }
    ok
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tandem-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `systemd-analyze verify` on `unit` and fails on a non-zero exit or any diagnostic: verify
/// exits 0 on unknown keys and bad values, which it only prints.
fn verify(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify {} failed: {stderr}{stdout}",
        unit.display()
    );
    assert!(
        stderr.trim().is_empty() && stdout.trim().is_empty(),
        "verify {} complained:\n{stderr}{stdout}",
        unit.display()
    );
}

/// Copies `src` into `dir` (same file name), replacing the default binary path with `binary`.
fn copy_with_binary(src: &Path, dir: &Path, binary: &Path) -> PathBuf {
    let text = std::fs::read_to_string(src).unwrap();
    assert!(
        text.contains("/usr/local/bin/tandem"),
        "{} does not run /usr/local/bin/tandem",
        src.display()
    );
    let rewritten = text.replace("/usr/local/bin/tandem", binary.to_str().unwrap());
    let dst = dir.join(src.file_name().unwrap());
    std::fs::write(&dst, rewritten).unwrap();
    dst
}

fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // "→ Overall exposure level for tandem.service: 1.7 OK 🙂"
    let after = line.rsplit_once(": ").unwrap().1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn both_units_pass_systemd_analyze_verify_with_the_built_binary() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = TempDir::new("verify");
    let binary = Path::new(env!("CARGO_BIN_EXE_tandem"));
    for name in UNITS {
        let copy = copy_with_binary(&unit_path(name), &dir.0, binary);
        verify(&copy);
    }
    // A concrete instance of the template resolves %i everywhere.
    let template = std::fs::read_to_string(dir.0.join("tandem@.service")).unwrap();
    std::fs::write(dir.0.join("tandem@lab.service"), template).unwrap();
    verify(&dir.0.join("tandem@lab.service"));
}

#[test]
fn verify_catches_a_bad_unit_so_the_check_can_fail() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = TempDir::new("verify-bad");
    let binary = Path::new(env!("CARGO_BIN_EXE_tandem"));
    let good = copy_with_binary(&unit_path("tandem.service"), &dir.0, binary);
    let broken = std::fs::read_to_string(&good)
        .unwrap()
        .replace("Type=notify", "Type=notifyy");
    std::fs::write(&good, broken).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        !out.stderr.is_empty(),
        "verify accepted Type=notifyy silently"
    );
}

#[test]
fn both_units_score_two_or_lower_in_offline_security_analysis() {
    if !have_systemd_analyze() {
        return;
    }
    for name in UNITS {
        let score = exposure(&unit_path(name));
        eprintln!("{name}: overall exposure {score}");
        assert!(
            score <= MAX_EXPOSURE,
            "{name} scores {score} > {MAX_EXPOSURE}"
        );
    }
}

/// The `[Service]` directives, each with the comment block right above it (empty if none).
fn service_directives(text: &str) -> Vec<(String, Vec<String>)> {
    let mut in_service = false;
    let mut comments = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            comments.clear();
        } else if let Some(c) = line.strip_prefix('#') {
            comments.push(c.trim().to_string());
        } else if line.is_empty() {
            comments.clear();
        } else if in_service {
            out.push((line.to_string(), std::mem::take(&mut comments)));
        }
    }
    out
}

#[test]
fn every_service_directive_has_a_comment_saying_why() {
    for name in UNITS {
        let text = std::fs::read_to_string(unit_path(name)).unwrap();
        let directives = service_directives(&text);
        assert!(
            directives.len() > 30,
            "{name}: too few directives parsed: {}",
            directives.len()
        );
        let bare: Vec<_> = directives
            .iter()
            .filter(|(_, comments)| !comments.iter().any(|c| c.split_whitespace().count() >= 3))
            .map(|(d, _)| d.as_str())
            .collect();
        assert!(
            bare.is_empty(),
            "{name}: directives without a comment saying why: {bare:?}"
        );
        for key in [
            "Type=notify",
            "NotifyAccess=main",
            "Restart=on-failure",
            "AmbientCapabilities=CAP_NET_ADMIN",
            "CapabilityBoundingSet=CAP_NET_ADMIN",
            "DeviceAllow=/dev/net/tun rw",
        ] {
            assert!(
                directives.iter().any(|(d, _)| d == key),
                "{name}: missing {key}"
            );
        }
        for prefix in ["WatchdogSec=", "ExecReload=", "RuntimeDirectory=tandem"] {
            assert!(
                directives.iter().any(|(d, _)| d.starts_with(prefix)),
                "{name}: missing {prefix}"
            );
        }
    }
}

#[test]
fn template_differs_from_the_plain_unit_only_on_instance_lines() {
    let plain = std::fs::read_to_string(unit_path("tandem.service")).unwrap();
    let template = std::fs::read_to_string(unit_path("tandem@.service")).unwrap();
    let plain: Vec<_> = service_directives(&plain)
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let template = service_directives(&template);
    let shared: Vec<_> = template
        .iter()
        .filter(|(_, c)| !c.iter().any(|c| c.starts_with("instance:")))
        .map(|(d, _)| d.clone())
        .collect();
    let instance: Vec<_> = template
        .iter()
        .filter(|(_, c)| c.iter().any(|c| c.starts_with("instance:")))
        .map(|(d, _)| d.as_str())
        .collect();
    for d in &instance {
        assert!(d.contains("%i"), "instance line without %i: {d}");
    }
    assert!(
        instance.contains(&"ExecStart=/usr/local/bin/tandem run -c /etc/tandem/%i.toml"),
        "{instance:?}"
    );
    let plain_shared: Vec<_> = plain
        .iter()
        .filter(|d| {
            !["ExecStart=", "ExecReload=", "RuntimeDirectory="]
                .iter()
                .any(|p| d.starts_with(p))
        })
        .cloned()
        .collect();
    assert_eq!(
        shared, plain_shared,
        "hardening drifted between tandem.service and tandem@.service"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_script_stages_binary_units_and_a_private_config_dir_under_destdir() {
    let root = TempDir::new("install");
    let binary = env!("CARGO_BIN_EXE_tandem");
    let out = Command::new("sh")
        .arg(repo().join("systemd/install.sh"))
        .env("DESTDIR", &root.0)
        .env("BINARY", binary)
        .env_remove("PREFIX")
        .env_remove("SYSCONFDIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &root.0;
    assert_eq!(mode(&r.join("usr/local/bin/tandem")), 0o755);
    assert_eq!(
        std::fs::read(r.join("usr/local/bin/tandem")).unwrap(),
        std::fs::read(binary).unwrap()
    );
    for unit in UNITS {
        let staged = r.join("usr/local/lib/systemd/system").join(unit);
        assert_eq!(mode(&staged), 0o644, "{unit}");
        // Default PREFIX: the staged unit is the repository's, byte for byte.
        assert_eq!(
            std::fs::read(&staged).unwrap(),
            std::fs::read(unit_path(unit)).unwrap(),
            "{unit}"
        );
    }
    assert_eq!(mode(&r.join("usr/local/lib/sysusers.d/tandem.conf")), 0o644);
    assert_eq!(mode(&r.join("etc/tandem")), 0o700);
    let example = r.join("etc/tandem/tandem.toml.example");
    if repo().join("config/examples").is_dir() {
        assert_eq!(mode(&example), 0o600);
    }
    assert!(
        !r.join("etc/tandem/tandem.toml").exists(),
        "install must never write a live config"
    );

    if have_systemd_analyze() {
        let dir = TempDir::new("install-verify");
        for unit in UNITS {
            let staged = r.join("usr/local/lib/systemd/system").join(unit);
            verify(&copy_with_binary(
                &staged,
                &dir.0,
                &r.join("usr/local/bin/tandem"),
            ));
        }
    }
}

#[test]
fn install_script_rewrites_paths_for_another_prefix() {
    let root = TempDir::new("install-prefix");
    let out = Command::new("sh")
        .arg(repo().join("systemd/install.sh"))
        .env("DESTDIR", &root.0)
        .env("PREFIX", "/opt/tandem")
        .env("BINARY", env!("CARGO_BIN_EXE_tandem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(root.0.join("opt/tandem/lib/systemd/system/tandem.service"))
        .unwrap();
    assert!(
        unit.contains("ExecStart=/opt/tandem/bin/tandem run -c /etc/tandem/tandem.toml"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecReload=/opt/tandem/bin/tandem reload -c /etc/tandem/tandem.toml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
}

#[test]
fn install_script_refuses_a_missing_binary() {
    let root = TempDir::new("install-nobin");
    let out = Command::new("sh")
        .arg(repo().join("systemd/install.sh"))
        .env("DESTDIR", &root.0)
        .env("BINARY", root.0.join("no-such-tandem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tandem binary"));
}

#[test]
fn operations_guide_covers_what_an_operator_needs() {
    let guide = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let headings: Vec<&str> = guide.lines().filter(|l| l.starts_with("## ")).collect();
    for topic in [
        "Install",
        "Keys",
        "Enable",
        "Reload",
        "drills",
        "Metrics",
        "Logs",
        "Upgrading",
    ] {
        assert!(
            headings.iter().any(|h| h.contains(topic)),
            "docs/operations.md has no section on {topic}: {headings:?}"
        );
    }
    for command in [
        "systemd/install.sh",
        "systemctl enable --now tandem",
        "systemctl reload tandem",
        "tandem drill",
        "journalctl -u tandem",
        "tandem genkey",
    ] {
        assert!(
            guide.contains(command),
            "docs/operations.md never shows `{command}`"
        );
    }
}

#[test]
fn real_install_creates_the_user_and_a_private_config_dir_it_owns() {
    // The non-DESTDIR path (user creation, chown) needs root and would change the host: run it in
    // a mount namespace where /etc is an overlay and /usr/local a scratch dir, both discarded.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        eprintln!("SKIPPING: the real-install test needs root");
        return;
    }
    let t = TempDir::new("install-real");
    for d in ["upper", "work", "local"] {
        std::fs::create_dir(t.0.join(d)).unwrap();
    }
    let script = r#"set -e
        T="$0"; mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/upper,workdir=$T/work" /etc
        mount --bind "$T/local" /usr/local
        sh "$1" > "$T/install.out" 2>&1
        stat -c '%a %U:%G' /etc/tandem /etc/tandem/tandem.toml.example /usr/local/bin/tandem
        getent passwd tandem | cut -d: -f1,6,7
        for u in tandem.service tandem@.service; do
            systemd-analyze verify "/usr/local/lib/systemd/system/$u" >> "$T/verify.out" 2>&1
        done"#;
    let out = Command::new("unshare")
        .args(["--mount", "--", "sh", "-c", script])
        .arg(&t.0)
        .arg(repo().join("systemd/install.sh"))
        .env("BINARY", env!("CARGO_BIN_EXE_tandem"))
        .env_remove("DESTDIR")
        .env_remove("PREFIX")
        .env_remove("SYSCONFDIR")
        .output()
        .unwrap();
    let install_log = std::fs::read_to_string(t.0.join("install.out")).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "real install failed:\n{install_log}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "700 tandem:tandem",
            "600 tandem:tandem",
            "755 root:root",
            "tandem:/:/usr/sbin/nologin"
        ],
        "{install_log}"
    );
    let verify = std::fs::read_to_string(t.0.join("verify.out")).unwrap_or_default();
    assert!(
        verify.trim().is_empty(),
        "installed units do not verify:\n{verify}"
    );
}
