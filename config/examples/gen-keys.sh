#!/bin/sh
# Generates the key files that cgw.toml, vpcgw.toml and hub.toml name, into DIR (default: this
# script's directory): cgw.key, vpcgw.key (private, 0600), cgw.pub, vpcgw.pub (public), tunnel1.psk,
# tunnel2.psk (shared by both sides, 0600), and for hub.toml branchN.key/.pub and one PSK per
# branch tunnel (branchN-isp1.psk, branchN-isp2.psk). Existing private keys and PSKs are kept, so running it
# again does not break a running lab; the public keys are always re-derived.
#
#   sh config/examples/gen-keys.sh [DIR]
#
# Uses $TANDEM if set, else `tandem` on PATH, else target/debug/tandem of this checkout.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here}
if [ -n "${TANDEM:-}" ]; then
  tandem=$TANDEM
elif command -v tandem >/dev/null 2>&1; then
  tandem=tandem
else
  tandem=$here/../../target/debug/tandem
fi
umask 077
mkdir -p "$dir"
for side in cgw vpcgw; do
  [ -s "$dir/$side.key" ] || "$tandem" genkey > "$dir/$side.key"
  "$tandem" pubkey < "$dir/$side.key" > "$dir/$side.pub"
  chmod 644 "$dir/$side.pub"
done
for t in tunnel1 tunnel2; do
  [ -s "$dir/$t.psk" ] || "$tandem" genpsk > "$dir/$t.psk"
done
# hub.toml: the branches' public keys and one PSK per branch tunnel.
for b in branch1 branch2 branch3; do
  [ -s "$dir/$b.key" ] || "$tandem" genkey > "$dir/$b.key"
  "$tandem" pubkey < "$dir/$b.key" > "$dir/$b.pub"
  chmod 644 "$dir/$b.pub"
  for t in isp1 isp2; do
    [ -s "$dir/$b-$t.psk" ] || "$tandem" genpsk > "$dir/$b-$t.psk"
  done
done
echo "keys in $dir: cgw.key vpcgw.key cgw.pub vpcgw.pub tunnel1.psk tunnel2.psk, branch1..3 keys and PSKs"
