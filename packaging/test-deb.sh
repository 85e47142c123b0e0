#!/usr/bin/env bash
# Build the Debian package, lint it, and install / check / upgrade / remove / purge it in a
# throwaway root.
#
#   bash packaging/test-deb.sh                   # package the debug build (what `cargo test` built)
#   bash packaging/test-deb.sh --profile release # or any build-deb.sh arguments but --binary
#
# The upgrade test needs a version N+1: build-deb.sh builds it from the same tree with the patch
# version bumped (`--version`, the binary stamped by TANDEM_BUILD_VERSION: only main.rs is
# recompiled), and this script changes one example config in it, as a new upstream example would.
# Then the binary of version N is built again, so target/ is left as it was.
#
# The throwaway root: a private mount namespace (unshare) in which an overlay puts a tmpfs over
# this host's root file system, and a chroot into it. dpkg, the maintainer scripts,
# systemd-sysusers and everything they write (/usr/sbin, /etc/passwd, the dpkg database) land in
# the tmpfs and vanish when the namespace does; the host's own /usr and /var/lib/dpkg are never
# written. Checked afterwards. Needs root (CI runs as root), unshare and overlayfs; lintian.
#
# Fails on: any lintian error, a file missing from the package, `tandem --version` or
# `tandem check` failing on the installed example configs, bash not completing `tandem sta` with
# the installed completion, a conffile overwritten by a reinstall or by the upgrade to N+1, a key
# touched by the upgrade, units or binary not updated by it, a maintainer script restarting or
# stopping a running gateway on upgrade, keys gone after `dpkg -r`, anything left in /etc/tandem
# after `dpkg --purge`.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'test-deb.sh: %s\n' "$*"; }
die() { printf 'test-deb.sh: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (a mount namespace and a chroot)"
for tool in lintian unshare chroot dpkg-deb; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install lintian util-linux dpkg-dev)"
done
[ $# -gt 0 ] || set -- --profile dev
case " $* " in *" --binary "*) die "the upgrade test builds version N+1 from source: no --binary" ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Version N+1 first (the same tree, the patch version bumped), then N: target/ ends up holding N.
cargo_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$top/Cargo.toml")
next=$(awk -F. -v OFS=. '{ $3 = $3 + 1; print }' <<<"$cargo_version")
next_deb=$(bash "$top/packaging/build-deb.sh" "$@" --version "$next" --out "$work/next" | tail -n 1)
[ -f "$next_deb" ] || die "build-deb.sh made no package of version $next"
# A new upstream example config in N+1: dpkg must then keep the operator's edited copy and put
# the new one beside it (.dpkg-dist), not ask, in a non-interactive upgrade.
dpkg-deb -R "$next_deb" "$work/next/tree"
echo "# A line new in tandem $next." >> "$work/next/tree/etc/tandem/vpcgw.toml.example"
(cd "$work/next/tree" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) > "$work/next/tree/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz --build "$work/next/tree" "$next_deb" >/dev/null
say "built $next_deb (version N+1, with a changed vpcgw.toml.example)"

deb=$(bash "$top/packaging/build-deb.sh" "$@" | tail -n 1)
[ -f "$deb" ] || die "build-deb.sh made no package"
say "built $deb"
upstream=$(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//')
[ "$upstream" = "$cargo_version" ] || die "package N is $upstream, Cargo.toml says $cargo_version"

# --- contents --------------------------------------------------------------------------------
listing=$(dpkg-deb -c "$deb")
printf '%s\n' "$listing"
for path in ./usr/sbin/tandem ./usr/lib/systemd/system/tandem.service \
    ./usr/lib/systemd/system/tandem@.service ./usr/lib/sysusers.d/tandem.conf \
    ./usr/lib/tmpfiles.d/tandem.conf ./etc/tandem/ ./usr/share/doc/tandem/copyright \
    ./usr/share/bash-completion/completions/tandem ./usr/share/zsh/vendor-completions/_tandem \
    ./usr/share/fish/vendor_completions.d/tandem.fish \
    ./usr/share/doc/tandem/changelog.Debian.gz ./usr/share/man/man8/tandem.8.gz \
    ./usr/share/tandem/prometheus/tandem-alerts.yml ./usr/share/tandem/grafana/tandem-dashboard.json \
    ./usr/share/tandem/tshark/keylog-to-tshark.sh; do
    grep -q " $path\$" <<<"$listing" || die "$path is not in the package"
done
grep -q '^drwx------ root/root .* ./etc/tandem/$' <<<"$listing" || die "/etc/tandem is not 0700 root"
[ "$(dpkg-deb -f "$deb" Package)" = tandem ] || die "not the tandem package"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/tandem/cgw.toml.example ||
    die "the example configs are not conffiles"

# --- lintian: zero errors, warnings listed -------------------------------------------------------
say "lintian:"
lint=$(lintian --show-overrides "$deb" 2>&1 | grep -v '^running with root privileges' || true)
printf '%s\n' "${lint:-(no tags)}"
if grep -q '^E:' <<<"$lint"; then die "lintian reports errors"; fi
say "lintian: $(grep -c '^E:' <<<"$lint" || true) errors, $(grep -c '^W:' <<<"$lint" || true) warnings, $(grep -c '^O:' <<<"$lint" || true) overridden (packaging/lintian-overrides)"

# --- the throwaway root --------------------------------------------------------------------
host_sbin_before=$(ls -l /usr/sbin/tandem 2>&1 || true)
host_dpkg_before=$(dpkg-query -W -f='${Status}' tandem 2>&1 || true)

# Runs inside the chroot, as the operator would on a fresh router.
inside=$(cat <<'EOF'
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive
step() { printf '\n-- %s\n' "$*"; }
fail() { printf 'inside: FAILED: %s\n' "$*" >&2; exit 1; }
upstream=$1
next=$2

step "dpkg -i"
dpkg -i /tmp/tandem.deb
step "tandem --version"
v=$(/usr/sbin/tandem --version)
echo "$v"
[ "$v" = "tandem $upstream" ] || fail "version '$v', expected 'tandem $upstream'"
step "user, config directory, /run/tandem"
id tandem
[ "$(stat -c '%a %U:%G' /etc/tandem)" = "700 tandem:tandem" ] || fail "/etc/tandem is $(stat -c '%a %U:%G' /etc/tandem)"
[ "$(stat -c '%a %U:%G' /run/tandem)" = "700 tandem:tandem" ] || fail "/run/tandem is $(stat -c '%a %U:%G' /run/tandem)"
grep -q '^ExecStart=/usr/sbin/tandem run -c /etc/tandem/tandem.toml$' /usr/lib/systemd/system/tandem.service ||
    fail "tandem.service does not run /usr/sbin/tandem"
step "systemd-analyze verify (the units as installed)"
systemd-analyze verify /usr/lib/systemd/system/tandem.service /usr/lib/systemd/system/tandem@.service 2>&1 |
    grep -v 'Failed to .* cgroup\|Cannot find unit\|network-online.target' || true
step "keys with the shipped helper, handed to tandem, then tandem check on every example config"
# As docs/operations.md says: the keys belong to the service user, and the check runs as that
# user (the daemon's view: as root it refuses a key directory owned by another uid).
TANDEM=/usr/sbin/tandem sh /usr/share/doc/tandem/examples/gen-keys.sh /etc/tandem
chown tandem:tandem /etc/tandem/*.key /etc/tandem/*.psk /etc/tandem/*.pub
n=0
for example in /etc/tandem/*.toml.example; do
    runuser -u tandem -- /usr/sbin/tandem check -c "$example" || fail "tandem check -c $example"
    n=$((n + 1))
done
[ "$n" -ge 2 ] || fail "only $n example configs"
step "the key-log helper turns an ESP line into tshark's SA table entry"
key=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
printf '1733450000.123 aws tunnel1 out 192.0.2.1 192.0.2.2 0xc0ffee01 aes256gcm16 %s\n' "$key" > /tmp/keys.log
got=$(/usr/share/tandem/tshark/keylog-to-tshark.sh /tmp/keys.log) || fail "keylog-to-tshark.sh failed"
printf '%s\n' "$got" | grep -qx "uat:esp_sa:\"IPv4\",\"192.0.2.1\",\"192.0.2.2\",\"0xc0ffee01\",\"AES-GCM with 16 octet ICV \[RFC4106\]\",\"0x$key\",\"NULL\",\"\"" ||
    fail "keylog-to-tshark.sh wrote: $got"
echo "not a key log line" > /tmp/keys.log
/usr/share/tandem/tshark/keylog-to-tshark.sh /tmp/keys.log >/dev/null 2>&1 && fail "keylog-to-tshark.sh took a bad line"
rm -f /tmp/keys.log
step "man page"
zcat /usr/share/man/man8/tandem.8.gz | grep -q '^\.TH tandem 8' || fail "tandem.8.gz is not a man page"
step "bash completes with the installed script"
got=$(bash --norc -c '. /usr/share/bash-completion/completions/tandem
    COMP_WORDS=(tandem sta); COMP_CWORD=1; COMP_LINE="tandem sta"; COMP_POINT=10
    _tandem tandem sta tandem; printf "%s\n" "${COMPREPLY[@]}"')
[ "$got" = status ] || fail "bash completes 'tandem sta' to '$got'"
step "reinstall keeps an edited conffile"
echo "# edited by the operator" >> /etc/tandem/cgw.toml.example
dpkg -i /tmp/tandem.deb
grep -q '^# edited by the operator$' /etc/tandem/cgw.toml.example || fail "reinstall overwrote the edited conffile"
[ "$(stat -c '%a %U:%G' /etc/tandem)" = "700 tandem:tandem" ] || fail "reinstall changed /etc/tandem"
step "upgrade N -> N+1 ($upstream -> $next): conffiles kept, keys untouched, units and binary new"
echo "# edited by the operator" >> /etc/tandem/vpcgw.toml.example
# Keys: content, mode, owner, mtime. The directory: mode and owner (its mtime changes when dpkg
# writes a .dpkg-dist into it).
keys_before=$(cd /etc/tandem && md5sum ./*.key ./*.psk && stat -c '%n %a %U:%G %Y' ./*.key ./*.psk && stat -c '%n %a %U:%G' .)
# No systemd runs in this root, so stand in for it: /run/systemd/system says "booted with
# systemd" to the maintainer scripts, and systemctl / deb-systemd-invoke on PATH record their
# calls and say that a gateway is running. What the scripts do with a running gateway on upgrade
# is then checked: daemon-reload and a notice, never restart or stop.
mkdir -p /run/systemd/system /tmp/fakebin
for tool in systemctl deb-systemd-invoke; do
    printf '#!/bin/sh\necho "%s $*" >> /tmp/systemd-calls\nexit 0\n' "$tool" > "/tmp/fakebin/$tool"
    chmod 0755 "/tmp/fakebin/$tool"
done
: > /tmp/systemd-calls
upgrade_log=$(PATH=/tmp/fakebin:$PATH dpkg -i --force-confdef --force-confold /tmp/tandem-next.deb </dev/null 2>&1) ||
    fail "the upgrade failed: $upgrade_log"
printf '%s\n' "$upgrade_log"
v=$(/usr/sbin/tandem --version)
[ "$v" = "tandem $next" ] || fail "after the upgrade: '$v', expected 'tandem $next'"
[ "$(dpkg-query -W -f='${Version}' tandem)" = "$next-1" ] || fail "dpkg says $(dpkg-query -W -f='${Version}' tandem)"
for unit in tandem.service tandem@.service; do
    grep -q "^# Installed by the tandem package $next-1;" "/usr/lib/systemd/system/$unit" ||
        fail "$unit was not updated: $(grep '^# Installed' "/usr/lib/systemd/system/$unit")"
done
grep -qx '# edited by the operator' /etc/tandem/cgw.toml.example || fail "the upgrade overwrote cgw.toml.example"
grep -qx '# edited by the operator' /etc/tandem/vpcgw.toml.example ||
    fail "the upgrade overwrote vpcgw.toml.example, which the operator had edited"
grep -qx "# A line new in tandem $next." /etc/tandem/vpcgw.toml.example.dpkg-dist ||
    fail "the new vpcgw.toml.example is not beside the old one as .dpkg-dist"
[ ! -e /etc/tandem/cgw.toml.example.dpkg-dist ] || fail "a .dpkg-dist for cgw.toml.example, unchanged upstream"
keys_after=$(cd /etc/tandem && md5sum ./*.key ./*.psk && stat -c '%n %a %U:%G %Y' ./*.key ./*.psk && stat -c '%n %a %U:%G' .)
[ "$keys_before" = "$keys_after" ] || fail "the upgrade touched the keys or /etc/tandem:
$keys_before
---
$keys_after"
for example in /etc/tandem/cgw.toml.example /etc/tandem/vpcgw.toml.example; do
    runuser -u tandem -- /usr/sbin/tandem check -c "$example" >/dev/null || fail "tandem $next: check -c $example"
done
echo "systemd calls during the upgrade:"; cat /tmp/systemd-calls
grep -qx 'systemctl daemon-reload' /tmp/systemd-calls || fail "no daemon-reload after the upgrade"
if grep -E ' (restart|try-restart|reload-or-restart|stop|start) ' /tmp/systemd-calls; then
    fail "the upgrade restarted, stopped or started a gateway"
fi
grep -q "upgraded; 'systemctl restart tandem'" <<<"$upgrade_log" || fail "no restart notice for the running gateway"

step "dpkg -r: running gateways stopped first, binary gone, keys and configs stay"
: > /tmp/systemd-calls
PATH=/tmp/fakebin:$PATH dpkg -r tandem
cat /tmp/systemd-calls
grep -qx 'deb-systemd-invoke stop tandem.service tandem@\*.service' /tmp/systemd-calls ||
    fail "dpkg -r did not stop the gateways"
rm -rf /tmp/fakebin /run/systemd/system
[ ! -e /usr/sbin/tandem ] || fail "/usr/sbin/tandem survived dpkg -r"
for f in cgw.key vpcgw.key tunnel1.psk tunnel2.psk cgw.toml.example; do
    [ -f "/etc/tandem/$f" ] || fail "dpkg -r removed /etc/tandem/$f"
done
ls -la /etc/tandem
step "dpkg --purge: /etc/tandem and the keys gone, without a question"
dpkg --purge tandem </dev/null
[ ! -e /etc/tandem ] || fail "/etc/tandem survived the purge: $(ls -A /etc/tandem)"
dpkg-statoverride --list /etc/tandem >/dev/null && fail "the stat override survived the purge"
case $(dpkg-query -W -f='${db:Status-Abbrev}' tandem 2>/dev/null || true) in
    "" | "un "* | "pn "*) ;;
    *) fail "dpkg still knows tandem: $(dpkg-query -W -f='${Status}' tandem)" ;;
esac
echo "inside: all checks passed"
EOF
)

say "installing into a throwaway root (overlay on tmpfs, private mount namespace)"
cp "$deb" /tmp/tandem-test-deb.$$.deb
trap 'rm -rf "$work" /tmp/tandem-test-deb.$$.deb' EXIT
unshare --mount --propagation private bash -euo pipefail -c '
    scratch=$(mktemp -d)
    mount -t tmpfs tmpfs "$scratch"
    mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
    root=$scratch/root
    # A fresh /run and /tmp (no host sockets, no systemd: the maintainer scripts see no running
    # init, as in an image build), the host /proc and /dev for the tools.
    mount -t tmpfs tmpfs "$root/run"
    mount -t tmpfs tmpfs "$root/tmp"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    cp "$1" "$root/tmp/tandem.deb"
    cp "$4" "$root/tmp/tandem-next.deb"
    [ -x "$root/usr/bin/dpkg" ] || { echo "no dpkg in the overlay: / spans several file systems?" >&2; exit 1; }
    chroot "$root" /bin/bash -c "$2" inside "$3" "$5"
' throwaway "/tmp/tandem-test-deb.$$.deb" "$inside" "$upstream" "$next_deb" "$next"

# The host is as it was.
[ "$(ls -l /usr/sbin/tandem 2>&1 || true)" = "$host_sbin_before" ] || die "the host's /usr/sbin/tandem changed"
[ "$(dpkg-query -W -f='${Status}' tandem 2>&1 || true)" = "$host_dpkg_before" ] ||
    die "the host's dpkg database changed"
say "PASSED: $deb builds, lints without errors, installs, checks, upgrades to $next, removes and purges"
