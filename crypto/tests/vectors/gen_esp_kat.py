#!/usr/bin/env python3
"""Known-answer vectors for tandem's ESP SA (docs/protocol.md), made with a third implementation:
Python `cryptography`'s AESGCM (OpenSSL underneath), independent of ring and aes-gcm.

Run once: `python3 crypto/tests/vectors/gen_esp_kat.py > crypto/tests/vectors/esp_kat.json`.
Deterministic: keys come from SHA-256 of fixed labels. The layout is written here from docs/protocol.md,
not from the Rust code:
  datagram  = SPI (4) | seq low 32 (4) | IV = 64-bit seq (8) | ciphertext | ICV (16)
  nonce     = salt (4) || IV (8)
  AAD       = SPI || seq high 32 || seq low 32          (ESN, "seq_mode": "esn")
  AAD       = SPI || seq 32                             (no ESN, "seq_mode": "32", RFC 4106 §5)
  plaintext = payload || 1, 2, .. pad || pad length || next header, ciphertext 4-byte aligned

Without ESN a standard peer may send any unique IV (RFC 4106 §3.1; Linux's seqiv XORs the counter
with a salt): the vectors with "iv_is_seq": false carry such an IV and are for the receiver only.
"""
import hashlib
import json
import struct
import sys

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def det(label: str, n: int) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:n]


def vector(name, size, seq, next_header, spi, esn=True, iv_value=None):
    key = det(f"tandem kat key {name}", 32)
    salt = det(f"tandem kat salt {name}", 4)
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    pad = (4 - (size + 2) % 4) % 4
    plaintext = payload + bytes(range(1, pad + 1)) + bytes([pad, next_header])
    assert len(plaintext) % 4 == 0
    if not esn:
        assert 0 < seq < 1 << 32
    iv = struct.pack(">Q", seq if iv_value is None else iv_value)
    nonce = salt + iv
    if esn:
        aad = struct.pack(">III", spi, seq >> 32, seq & 0xFFFFFFFF)
    else:
        aad = struct.pack(">II", spi, seq)
    sealed = AESGCM(key).encrypt(nonce, plaintext, aad)  # ciphertext || 16-byte tag
    datagram = struct.pack(">II", spi, seq & 0xFFFFFFFF) + iv + sealed
    return {
        "name": name,
        "seq_mode": "esn" if esn else "32",
        "iv_is_seq": iv_value is None,
        "key": key.hex(),
        "salt": salt.hex(),
        "spi": spi,
        "seq": seq,
        "next_header": next_header,
        "pad_len": pad,
        "payload": payload.hex(),
        "datagram": datagram.hex(),
    }


def main():
    cases = [
        # (size, seq, next header, spi): sizes cover pad lengths 0..3 at small and MTU sizes.
        (0, 1, 59, 0x00000100),
        (1, 2, 4, 0x00000101),
        (2, 3, 4, 0x12345678),
        (3, 4, 41, 0xFFFFFFFF),
        (64, 5, 4, 0x0000BEEF),
        (1417, 6, 4, 0xC0FFEE00),
        (1418, 7, 41, 0xC0FFEE00),
        (1419, 8, 4, 0xC0FFEE00),
        (1420, 1 << 27, 4, 0xC0FFEE00),
        (8192, (1 << 28) - 1, 41, 0x00010000),
        (40, 1 << 28, 253, 0x00010000),
    ]
    vectors = [
        vector(f"v{i}_len{size}", size, seq, nh, spi)
        for i, (size, seq, nh, spi) in enumerate(cases)
    ]
    cases_32 = [
        # (size, seq, next header, spi, IV or None for IV = seq): 32-bit sequence numbers, the
        # pad lengths 0..3, the top bit of the counter, the rekey point and the last number.
        (0, 1, 59, 0x00000100, None),
        (1, 2, 4, 0x00000101, None),
        (2, 3, 4, 0x12345678, None),
        (3, 4, 41, 0xFFFFFFFF, None),
        (1420, 1 << 31, 4, 0xC0FFEE00, None),
        (1419, (1 << 32) - (1 << 27), 41, 0xC0FFEE00, None),
        (40, (1 << 32) - 1, 253, 0x00010000, None),
        # IVs a standard peer may send: the counter XORed with a salt, and a random-looking one.
        (64, 5, 4, 0x0000BEEF, 5 ^ 0x5A5A5A5A5A5A5A5A),
        (100, 7, 41, 0x0000BEEF, 0xFEDCBA9876543210),
    ]
    vectors += [
        vector(f"n{i}_len{size}", size, seq, nh, spi, esn=False, iv_value=iv)
        for i, (size, seq, nh, spi, iv) in enumerate(cases_32)
    ]
    json.dump(
        {
            "generator": f"python cryptography {cryptography.__version__} AESGCM",
            "vectors": vectors,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
