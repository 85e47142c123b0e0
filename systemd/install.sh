#!/bin/sh
# Install tandem: the binary, the systemd units, the service user, /etc/tandem (0700) with an
# example config, and the operations guide. See docs/operations.md.
#
#   cargo build --release -p tandem && sudo systemd/install.sh
#
# Variables (environment):
#   DESTDIR   stage into this root instead of / (packaging, tests): no user is created, nothing is
#             chowned, systemd is not reloaded. Modes are set exactly as in a real install.
#   PREFIX    default /usr/local: binary in $PREFIX/bin, units in $PREFIX/lib/systemd/system,
#             sysusers.d in $PREFIX/lib/sysusers.d, docs in $PREFIX/share/doc/tandem.
#             The units' ExecStart=/ExecReload= are rewritten to $PREFIX/bin/tandem.
#   BINARY    the tandem binary to install (default target/release/tandem).
#   SYSCONFDIR default /etc: the config directory is $SYSCONFDIR/tandem.
# Never overwrites an existing config or key; never enables or starts the service.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
BINARY=${BINARY:-$top/target/release/tandem}

bindir=$PREFIX/bin
unitdir=$PREFIX/lib/systemd/system
sysusersdir=$PREFIX/lib/sysusers.d
docdir=$PREFIX/share/doc/tandem
confdir=$SYSCONFDIR/tandem

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

[ -x "$BINARY" ] || die "no tandem binary at $BINARY (build it: cargo build --release -p tandem, or set BINARY=)"
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or set DESTDIR= to stage into a directory)"
fi

# Binary and docs: world-readable, root-owned.
install -d -m 0755 "$DESTDIR$bindir" "$DESTDIR$unitdir" "$DESTDIR$sysusersdir" "$DESTDIR$docdir"
install -m 0755 "$BINARY" "$DESTDIR$bindir/tandem"
say "binary      $DESTDIR$bindir/tandem"

# Units, with the binary and config paths of this install.
for unit in tandem.service tandem@.service; do
    sed -e "s#/usr/local/bin/tandem#$bindir/tandem#g" \
        -e "s#/usr/local/share/doc/tandem#$docdir#g" \
        -e "s#/etc/tandem/#$confdir/#g" \
        "$here/$unit" > "$DESTDIR$unitdir/$unit.tmp"
    chmod 0644 "$DESTDIR$unitdir/$unit.tmp"
    mv -f "$DESTDIR$unitdir/$unit.tmp" "$DESTDIR$unitdir/$unit"
    say "unit        $DESTDIR$unitdir/$unit"
done
install -m 0644 "$here/tandem.sysusers" "$DESTDIR$sysusersdir/tandem.conf"
say "sysusers    $DESTDIR$sysusersdir/tandem.conf"
if [ -f "$top/docs/operations.md" ]; then
    install -m 0644 "$top/docs/operations.md" "$DESTDIR$docdir/operations.md"
fi

# The config directory: keys live here, so only the service user may enter it.
install -d -m 0700 "$DESTDIR$confdir"
example=""
for candidate in "$top/config/examples/tandem.toml" "$top"/config/examples/*.toml; do
    if [ -f "$candidate" ]; then example=$candidate; break; fi
done
if [ -n "$example" ]; then
    # An example only: the live file is tandem.toml (or NAME.toml for tandem@NAME), written by the
    # operator. Replaced on upgrade, since it is documentation.
    install -m 0600 "$example" "$DESTDIR$confdir/tandem.toml.example"
    say "example     $DESTDIR$confdir/tandem.toml.example (from ${example#"$top"/})"
else
    say "no example config found under config/examples/: skipped"
fi
say "config dir  $DESTDIR$confdir (0700)"

if [ -n "$DESTDIR" ]; then
    say "staged into $DESTDIR: create the user 'tandem' and chown $confdir to it on the target"
    exit 0
fi

# The service user, then hand it the config directory (keys must be 0600, owned by it).
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$sysusersdir/tandem.conf"
elif ! id tandem >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin \
        --comment "tandem VPN gateway" tandem
fi
chown -R tandem:tandem "$confdir"
chmod 0700 "$confdir"
say "user        tandem ($(id tandem))"

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "systemd reloaded; next: write $confdir/tandem.toml and keys, 'tandem check -c $confdir/tandem.toml',"
    say "then 'systemctl enable --now tandem' (or tandem@NAME for $confdir/NAME.toml)"
fi
