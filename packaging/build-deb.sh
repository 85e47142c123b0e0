#!/usr/bin/env bash
# Build the Debian package of tandem with dpkg-deb: one command, no debian/ source tree.
#
#   bash packaging/build-deb.sh                     # cargo build --release, then the package
#   bash packaging/build-deb.sh --profile dev       # package the debug build (tests, CI)
#   bash packaging/build-deb.sh --binary PATH       # package a binary built elsewhere
#   bash packaging/build-deb.sh --out DIR           # where the .deb goes (default target/debian)
#   bash packaging/build-deb.sh --version V ...     # package upstream version V instead of
#                                                   # Cargo.toml's: the binary must say `tandem V`
#                                                   # (built with TANDEM_BUILD_VERSION=V; build-deb.sh
#                                                   # sets it when it builds; test-deb.sh's upgrade test)
#
# Writes DIR/tandem_<version>_amd64.deb, where <version> is the workspace version from
# Cargo.toml plus the Debian revision below, and prints its path on the last line.
#
# What goes where (docs/operations.md#installing-the-debian-package):
#   /usr/sbin/tandem                              the daemon and CLI (stripped)
#   /usr/lib/systemd/system/tandem{,@}.service    systemd/ units, ExecStart= on /usr/sbin/tandem
#   /usr/lib/sysusers.d/tandem.conf               the `tandem` system user
#   /usr/lib/tmpfiles.d/tandem.conf               /run/tandem (0700 tandem)
#   /etc/tandem/ (0700, tandem via dpkg-statoverride)  *.toml.example conffiles
#   /usr/share/man/man8/                          tandem(8), tandem-COMMAND(8) from docs/man/
#   /usr/share/bash-completion/completions/tandem, /usr/share/zsh/vendor-completions/_tandem,
#   /usr/share/fish/vendor_completions.d/tandem.fish   from `tandem completions SHELL`
#   /usr/share/doc/tandem/                        copyright, changelog.Debian.gz, the guides,
#                                                 examples/ (the configs and gen-keys.sh)
#   /usr/share/tandem/prometheus/, grafana/       alert rules (+ their tests) and the dashboard
#   /usr/share/tandem/tshark/keylog-to-tshark.sh  the key log -> tshark/Wireshark settings
#
# Needs dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip (binutils), gzip. Runs as any user: the
# archive's owners are set with --root-owner-group, not by chown.
# The time stamps (changelog date, file mtimes) come from SOURCE_DATE_EPOCH, by default the time
# of the last commit, so two builds of one commit give the same package.
set -euo pipefail

# Debian revision of this packaging (bump when only the packaging changes).
DEBIAN_REVISION=1
ARCH=amd64

top=$(cd "$(dirname "$0")/.." && pwd)
profile=release
binary=
upstream=
out=$top/target/debian

die() { printf 'build-deb.sh: error: %s\n' "$*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=${2:?--profile needs a cargo profile}; shift 2 ;;
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --version) upstream=${2:?--version needs a version}; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install dpkg-dev binutils gzip)"
done
[ "$(dpkg --print-architecture)" = "$ARCH" ] || die "builds $ARCH packages only"

cd "$top"
cargo_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$cargo_version" ] || die "no [workspace.package] version in Cargo.toml"
stamp=
if [ -n "$upstream" ] && [ "$upstream" != "$cargo_version" ]; then
    stamp=$upstream
fi
upstream=${upstream:-$cargo_version}
version=$upstream-$DEBIAN_REVISION

if [ -z "$binary" ]; then
    if [ -n "$stamp" ]; then
        export TANDEM_BUILD_VERSION=$stamp
    else
        unset TANDEM_BUILD_VERSION
    fi
    cargo build --locked --profile "$profile" -p tandem
    dir=$profile
    [ "$profile" = dev ] && dir=debug
    binary=${CARGO_TARGET_DIR:-$top/target}/$dir/tandem
fi
[ -x "$binary" ] || die "no tandem binary at $binary"
"$binary" --version | grep -qx "tandem $upstream" ||
    die "$binary says '$("$binary" --version)', the package would say $upstream: stale build?"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
maintainer=${DEB_MAINTAINER:-}
if [ -z "$maintainer" ]; then
    maintainer=$(git -C "$top" log -1 --format='%an <%ae>' 2>/dev/null) ||
        die "set DEB_MAINTAINER='Name <email>'"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants a source tree: debian/control, the package staged in debian/tandem.
mkdir -p "$work/debian"
printf 'Source: tandem\n\nPackage: tandem\nArchitecture: any\n' > "$work/debian/control"
root=$work/debian/tandem
umask 022

# --- files ---------------------------------------------------------------------------------
install -d "$root/usr/sbin"
# As dh_strip does: no symbols, no .comment/.note sections (the build id stays).
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    -o "$root/usr/sbin/tandem" "$binary"
chmod 0755 "$root/usr/sbin/tandem"

# The units: systemd/install.sh's own rewriting, for PREFIX=/usr and the binary in sbin.
install -d "$root/usr/lib/systemd/system"
for unit in tandem.service tandem@.service; do
    sed -e 's#/usr/local/bin/tandem#/usr/sbin/tandem#g' \
        -e 's#/usr/local/share/doc/tandem#/usr/share/doc/tandem#g' \
        -e "s#Installed by systemd/install.sh#Installed by the tandem package $version#" \
        "systemd/$unit" > "$root/usr/lib/systemd/system/$unit"
    ! grep -n /usr/local "$root/usr/lib/systemd/system/$unit" || die "$unit still names /usr/local"
done
install -D -m 0644 systemd/tandem.sysusers "$root/usr/lib/sysusers.d/tandem.conf"
install -d "$root/usr/lib/tmpfiles.d"
cat > "$root/usr/lib/tmpfiles.d/tandem.conf" <<'EOF'
# The control socket's directory (tandem.service also creates it at start as RuntimeDirectory=).
d /run/tandem 0700 tandem tandem -
EOF

# The config directory: keys live here. dpkg unpacks it as root 0700; the postinst hands it to
# the tandem user with dpkg-statoverride, which later upgrades keep.
install -d -m 0700 "$root/etc/tandem"
conffiles=()
for example in config/examples/*.toml; do
    name=$(basename "$example" .toml).toml.example
    install -m 0644 "$example" "$root/etc/tandem/$name"
    conffiles+=("/etc/tandem/$name")
done
[ ${#conffiles[@]} -gt 0 ] || die "no example configs in config/examples/"

install -d "$root/usr/share/man/man8"
for page in docs/man/*.8; do
    [ -e "$page" ] || continue
    gzip -9n < "$page" > "$root/usr/share/man/man8/$(basename "$page").gz"
done

# Shell completions, generated by the binary being packaged from its own command line.
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
"$binary" completions bash > "$root/usr/share/bash-completion/completions/tandem"
"$binary" completions zsh > "$root/usr/share/zsh/vendor-completions/_tandem"
"$binary" completions fish > "$root/usr/share/fish/vendor_completions.d/tandem.fish"
chmod 0644 "$root/usr/share/bash-completion/completions/tandem" \
    "$root/usr/share/zsh/vendor-completions/_tandem" "$root/usr/share/fish/vendor_completions.d/tandem.fish"

doc=$root/usr/share/doc/tandem
install -d "$doc/examples"
for f in README.md SECURITY.md docs/operations.md docs/cli.md docs/configuration.md docs/protocol.md; do
    install -m 0644 "$f" "$doc/$(basename "$f")"
done
install -m 0644 config/examples/*.toml config/examples/gen-keys.sh "$doc/examples/"
date_rfc2822=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
gzip -9n > "$doc/changelog.Debian.gz" <<EOF
tandem ($version) unstable; urgency=medium

  * Package built from the tandem repository by packaging/build-deb.sh.

 -- $maintainer  $date_rfc2822
EOF
year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
# The crates in the binary (normal dependencies only): name, version, license, from Cargo.lock.
crates=$(cargo tree --locked --offline -p tandem -e normal,no-proc-macro --prefix none --format '{p} {l}' |
    sed -E 's/ \((\/[^)]*|\*)\)//' | grep -v '^tandem' | sort -u) || die "cargo tree failed"
{
    cat <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tandem
Comment: /usr/sbin/tandem statically links these Rust crates, each under the
 license its authors give (name, version, license, from Cargo.lock):
 .
EOF
    printf '%s\n' "$crates" | sed 's/^/ /'
    cat <<EOF

Files: *
Copyright: $year the tandem authors
License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this software except in compliance with the License.
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can
 be found in "/usr/share/common-licenses/Apache-2.0".
EOF
} > "$doc/copyright"

install -D -m 0644 packaging/lintian-overrides "$root/usr/share/lintian/overrides/tandem"

share=$root/usr/share/tandem
install -D -m 0644 deploy/prometheus/tandem-alerts.yml "$share/prometheus/tandem-alerts.yml"
install -D -m 0644 deploy/prometheus/tandem-alerts.test.yml "$share/prometheus/tandem-alerts.test.yml"
install -D -m 0644 deploy/grafana/tandem-dashboard.json "$share/grafana/tandem-dashboard.json"
install -D -m 0755 deploy/tshark/keylog-to-tshark.sh "$share/tshark/keylog-to-tshark.sh"

# --- control -------------------------------------------------------------------------------
install -d -m 0755 "$root/DEBIAN"
depends=$(cd "$work" && dpkg-shlibdeps -O -e debian/tandem/usr/sbin/tandem 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: tandem
Version: $version
Architecture: $ARCH
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends, systemd
Section: net
Priority: optional
Description: IPsec-style VPN gateway with two redundant tunnels
 tandem connects office and lab subnets to a cloud VPC over two redundant
 AES-256-GCM tunnels carried in UDP (ESP-in-UDP, RFC 4303/3948), with
 authenticated, BFD-style keepalives and sub-second failover between the
 tunnels. The same program is the head-end on the VPC side.
 .
 This package ships the daemon, its systemd units (tandem.service and
 tandem@.service), Prometheus alert rules and a Grafana dashboard. It never
 enables or starts the service: write /etc/tandem/tandem.toml and the keys
 first (see /usr/share/doc/tandem/operations.md).
EOF
printf '%s\n' "${conffiles[@]}" > "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

# Reproducible: every mtime at SOURCE_DATE_EPOCH, and dpkg-deb clamps to it as well.
find "$root" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
deb=$out/tandem_${version}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
