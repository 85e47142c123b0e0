#!/usr/bin/env python3
"""Writes the seed corpora of the IKE exchange fuzz targets (fuzz/corpus/ike_*/): real IKE
messages and inner payload chains as tandem-ike and strongSwan send them, in the input format of
each target (see the targets' doc comments and fuzz_targets/ike_common.rs for the constants).

    python3 fuzz/corpus/gen_ike_seeds.py

Built from RFC 7296 §3 by hand (no crypto needed: the targets seal what they are given).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

SA, KE, IDI, IDR, AUTH, NONCE, N, D, TSI, TSR, SKF = 33, 34, 35, 36, 39, 40, 41, 42, 44, 45, 53
SPI_I = 0x0102030405060708
CHILD_SPI = 0x1000  # ike_common::CHILD_SPI: the responder's first Child SA sends with it
# P-384's generator (SEC 2), x || y: a valid KE for group 20.
P384_G = bytes.fromhex(
    "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7"
    "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"
)


def chain(payloads):
    """(first type, bytes) of a payload chain [(type, body), ...]."""
    out = b""
    for i, (ty, body) in enumerate(payloads):
        nxt = payloads[i + 1][0] if i + 1 < len(payloads) else 0
        out += struct.pack(">BBH", nxt, 0, 4 + len(body)) + body
    return (payloads[0][0] if payloads else 0), out


def transform(ty, tid, last, keylen=None):
    attrs = struct.pack(">HH", 0x800E, keylen) if keylen else b""
    return struct.pack(">BBHBBH", 0 if last else 3, 0, 8 + len(attrs), ty, 0, tid) + attrs


def proposal(num, proto, spi, transforms, last=True):
    body = struct.pack(">BBBB", num, proto, len(spi), len(transforms)) + spi
    body += b"".join(transform(*t, last=(i + 1 == len(transforms))) if len(t) == 2
                     else transform(t[0], t[1], i + 1 == len(transforms), t[2])
                     for i, t in enumerate(transforms))
    return struct.pack(">BBH", 0 if last else 2, 0, 4 + len(body)) + body


def ike_proposal(spi=b""):
    # aes256gcm16-prfsha256-x25519
    return proposal(1, 1, spi, [(1, 20, 256), (2, 5), (4, 31)])


def esp_proposal(spi, pfs=None):
    t = [(1, 20, 256)] + ([(4, pfs)] if pfs else []) + [(5, 0)]
    return proposal(1, 3, struct.pack(">I", spi), t)


def ts(lo, hi):
    return struct.pack(">BBBB", 1, 0, 0, 0) + struct.pack(">BBHHH", 7, 0, 16, 0, 65535) + bytes(lo) + bytes(hi)


def notify(ty, data=b"", proto=0, spi=b""):
    return struct.pack(">BBH", proto, len(spi), ty) + spi + data


def header(exchange, flags, msg_id, next_payload, body_len, spi_r=0):
    return struct.pack(">QQBBBBII", SPI_I, spi_r, next_payload, 0x20, exchange, flags, msg_id, 28 + body_len)


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


init_first, init_chain = chain([
    (SA, ike_proposal()),
    (KE, struct.pack(">HH", 31, 0) + bytes(range(32))),
    (NONCE, b"\x11" * 32),
    (N, notify(16430)),  # IKEV2_FRAGMENTATION_SUPPORTED
])
init = header(34, 0x08, 0, init_first, len(init_chain)) + init_chain
write("ike_sa_init", "raw_request", b"\x00" + init)
write("ike_sa_init", "xor_nothing", b"\x01")
write("ike_sa_init", "chain_request", b"\x02" + bytes([init_first]) + init_chain)
write("ike_sa_init", "under_load_raw_request", b"\x80" + init)
cookie_first, cookie_chain = chain([(N, notify(16390, b"\x00" + b"\xc0" * 16))] + [
    (SA, ike_proposal()), (KE, struct.pack(">HH", 31, 0) + bytes(range(32))), (NONCE, b"\x11" * 32)])
write("ike_sa_init", "with_cookie", b"\x82" + bytes([cookie_first]) + cookie_chain)
ecp_first, ecp_chain = chain([
    (SA, proposal(1, 1, b"", [(1, 20, 256), (2, 5), (4, 20)])),
    (KE, struct.pack(">HH", 20, 0) + P384_G),
    (NONCE, b"\x22" * 32),
])
write("ike_sa_init", "ecp384_request", b"\x02" + bytes([ecp_first]) + ecp_chain)

auth_payloads = [
    (IDI, struct.pack(">BBBB", 1, 0, 0, 0) + bytes([192, 0, 2, 1])),
    (N, notify(16384)),  # INITIAL_CONTACT
    (IDR, struct.pack(">BBBB", 2, 0, 0, 0) + b"vpn.example.net"),
    (AUTH, struct.pack(">BBBB", 2, 0, 0, 0) + b"\x5a" * 32),
    (SA, esp_proposal(CHILD_SPI)),
    (TSI, ts([10, 10, 0, 0], [10, 10, 255, 255])),
    (TSR, ts([10, 20, 0, 0], [10, 20, 255, 255])),
]
auth_first, auth_chain = chain(auth_payloads)
write("ike_auth", "sealed_auth_request", b"\x01" + bytes([auth_first]) + auth_chain)
write("ike_auth", "raw_init_request", b"\x00" + init)

rekey_first, rekey_chain = chain([
    (N, notify(16393, proto=3, spi=struct.pack(">I", CHILD_SPI))),  # REKEY_SA
    (SA, esp_proposal(0x2000, pfs=20)),
    (NONCE, b"\x33" * 32),
    (KE, struct.pack(">HH", 20, 0) + P384_G),
    (TSI, ts([10, 10, 0, 0], [10, 10, 255, 255])),
    (TSR, ts([10, 20, 0, 0], [10, 20, 255, 255])),
])
write("ike_create_child", "child_rekey", b"\x01" + bytes([rekey_first]) + rekey_chain)
ike_rekey_first, ike_rekey_chain = chain([
    (SA, ike_proposal(spi=struct.pack(">Q", 0x0A0B0C0D0E0F1011))),
    (NONCE, b"\x44" * 32),
    (KE, struct.pack(">HH", 31, 0) + bytes(range(1, 33))),
])
write("ike_create_child", "ike_rekey", b"\x01" + bytes([ike_rekey_first]) + ike_rekey_chain)
new_child_first, new_child_chain = chain([
    (SA, esp_proposal(0x3000)),
    (NONCE, b"\x55" * 32),
    (TSI, ts([10, 10, 0, 0], [10, 10, 255, 255])),
    (TSR, ts([10, 20, 0, 0], [10, 20, 255, 255])),
])
write("ike_create_child", "additional_child", b"\x01" + bytes([new_child_first]) + new_child_chain)

write("ike_informational", "liveness", b"\x01\x00")
del_first, del_chain = chain([(D, struct.pack(">BBH", 3, 4, 1) + struct.pack(">I", CHILD_SPI))])
write("ike_informational", "delete_child", b"\x01" + bytes([del_first]) + del_chain)
dike_first, dike_chain = chain([(D, struct.pack(">BBH", 1, 0, 0))])
write("ike_informational", "delete_ike", b"\x01" + bytes([dike_first]) + dike_chain)
af_first, af_chain = chain([(N, notify(24))])  # AUTHENTICATION_FAILED
write("ike_informational", "auth_failed", b"\x01" + bytes([af_first]) + af_chain)

# ike_fragments: (number, total, first payload, length, bytes) per fragment.
def frags(first, data, size, order=None):
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    total = len(pieces)
    idx = order if order else range(total)
    return b"".join(bytes([i + 1, total, first if i == 0 else 0, len(pieces[i])]) + pieces[i] for i in idx)

write("ike_fragments", "auth_in_three", b"\x00" + frags(auth_first, auth_chain, 100))
n = (len(auth_chain) + 79) // 80
write("ike_fragments", "auth_reversed_dup", b"\x00" + frags(auth_first, auth_chain, 80, list(reversed(range(n))) + [0]))
write("ike_fragments", "unsealed", b"\x01" + frags(auth_first, auth_chain, 100))
