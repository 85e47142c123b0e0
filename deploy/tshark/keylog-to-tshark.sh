#!/bin/sh
# keylog-to-tshark.sh: turns a tandem key log (TANDEM_KEYLOG, docs/protocol.md) into what
# tshark/Wireshark need to decrypt a capture of the tunnels (docs/operations.md, "Decrypting a
# capture"):
#   - each ESP line (<secs> <conn> <tunnel> <in|out> <src> <dst> 0x<SPI> aes256gcm16 <key><salt>)
#     becomes one entry of the ESP SA table (uat esp_sa), AES-GCM with a 16-octet ICV (RFC 4106),
#     key and salt together as Wireshark wants them;
#   - each IKE line (<secs> <conn> <tunnel> ike <SPIi> <SPIr> aes256gcm16 <SK_ei><salt> <SK_er><salt>)
#     becomes one entry of the IKEv2 decryption table (uat ikev2_decryption_table), AES-GCM-256
#     with a 16-octet ICV (RFC 5282), no integrity key (GCM is an AEAD).
#
# Usage:
#   keylog-to-tshark.sh KEYLOG             one tshark argument per line, for
#                                          mapfile -t o < <(keylog-to-tshark.sh keys.log)
#                                          tshark -r capture.pcap "${o[@]}" ...
#   keylog-to-tshark.sh --dir DIR KEYLOG   writes DIR/esp_sa, DIR/ikev2_decryption_table and
#                                          DIR/preferences: a Wireshark configuration directory
#                                          (WIRESHARK_CONFIG_DIR=DIR wireshark -r capture.pcap)
#
# A line that is neither of the two shapes is an error (exit 1, naming the line): a key log that
# was cut or edited would otherwise decrypt nothing without saying why. The output holds the keys:
# keep it as private as the key log itself.
set -eu

usage() {
    echo "usage: $0 [--dir DIR] KEYLOG" >&2
    exit 2
}

dir=""
if [ "${1:-}" = "--dir" ]; then
    [ $# -ge 2 ] || usage
    dir=$2
    shift 2
fi
[ $# -eq 1 ] || usage
keylog=$1
[ -r "$keylog" ] || { echo "$0: cannot read the key log \"$keylog\"" >&2; exit 1; }

# Each output line: "esp<TAB>entry" or "ike<TAB>entry" (the UAT record as Wireshark writes it).
entries=$(awk -v file="$keylog" '
function bad(why) {
    printf "%s:%d: %s: %s\n", file, NR, why, $0 > "/dev/stderr"
    failed = 1
    exit 1
}
function hex(s, n) { return length(s) == n && s ~ /^[0-9a-fA-F]+$/ }
/^[ \t]*$/ || /^#/ { next }
$4 == "ike" {
    if (NF != 9) bad("an IKE line has 9 fields")
    if (!hex($5, 16) || !hex($6, 16)) bad("IKE SPIs are 16 hex digits")
    if ($7 != "aes256gcm16") bad("unknown IKE algorithm " $7)
    if (!hex($8, 72) || !hex($9, 72)) bad("SK_ei and SK_er are 64 hex key + 8 hex salt")
    # Byte fields of this table are bare hex; the algorithm names are quoted strings.
    printf "ike\t%s,%s,%s,%s,\"AES-GCM-256 with 16 octet ICV [RFC5282]\",,,\"NONE [RFC4306]\"\n", $5, $6, $8, $9
    next
}
$4 == "in" || $4 == "out" {
    if (NF != 9) bad("an ESP line has 9 fields")
    if (substr($7, 1, 2) != "0x" || !hex(substr($7, 3), 8)) bad("the SPI is 0x and 8 hex digits")
    if ($8 != "aes256gcm16") bad("unknown ESP algorithm " $8)
    if (!hex($9, 72)) bad("the key is 64 hex key + 8 hex salt")
    family = ($5 ~ /:/) ? "IPv6" : "IPv4"
    printf "esp\t\"%s\",\"%s\",\"%s\",\"%s\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"0x%s\",\"NULL\",\"\"\n", family, $5, $6, $7, $9
    next
}
{ bad("neither an ESP nor an IKE key line") }
' "$keylog")

if [ -z "$dir" ]; then
    echo "-o"
    echo "esp.enable_encryption_decode:TRUE"
    printf '%s\n' "$entries" | while IFS="$(printf '\t')" read -r kind entry; do
        [ -n "$kind" ] || continue
        echo "-o"
        case $kind in
            esp) echo "uat:esp_sa:$entry" ;;
            ike) echo "uat:ikev2_decryption_table:$entry" ;;
        esac
    done
else
    umask 077
    mkdir -p "$dir"
    printf '%s\n' "$entries" | awk -F '\t' '$1 == "esp" { print $2 }' >"$dir/esp_sa"
    printf '%s\n' "$entries" | awk -F '\t' '$1 == "ike" { print $2 }' >"$dir/ikev2_decryption_table"
    echo "esp.enable_encryption_decode: TRUE" >"$dir/preferences"
fi
