#!/usr/bin/env python3
"""Known-answer vectors for tandem-ike's key schedule, made with an independent implementation:
Python `cryptography` (OpenSSL underneath) for HMAC-SHA2, ECDH on P-256/P-384, X25519 and
AES-GCM; nothing here shares code with ring, the RustCrypto curves or x25519-dalek.

Run once: `python3 ike/tests/vectors/gen_ike_kat.py > ike/tests/vectors/ike_kat.json`.
Deterministic: every key, nonce and SPI comes from SHA-256 of a fixed label. The formulas are
written here from the RFCs, not from the Rust code:
  prf+(K, S)   = T1 | T2 | ...,  T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)   RFC 7296 §2.13
  SKEYSEED     = prf(Ni | Nr, g^ir)                                                 RFC 7296 §2.14
  {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
               with AES-256-GCM: SK_a* empty, SK_e* = 32-byte key | 4-byte salt     RFC 5282 §7.1
  KEYMAT       = prf+(SK_d, [g^ir (new) |] Ni | Nr), i->r key|salt then r->i        RFC 7296 §2.17
  AUTH (PSK)   = prf(prf(PSK, "Key Pad for IKEv2"), msg | peer nonce | prf(SK_p, ID body))  §2.15
  ECP KE data  = x | y, g^ir = x                                                    RFC 5903 §7, §9
  SK payload   = IV (8) | AES-GCM(key, salt | IV, payloads | pad length 0, AAD = IKE header | SK
                 generic header) | ICV (16)                                          RFC 5282 §3, §5.1
"""
import hashlib
import json
import struct
import sys

import cryptography
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def det(label: str, n: int) -> bytes:
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label} {i}".encode()).digest()
        i += 1
    return out[:n]


def prf(alg, key, data):
    h = hmac.HMAC(key, HASHES[alg]())
    h.update(data)
    return h.finalize()


def prf_plus(alg, key, seed, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = prf(alg, key, t + seed + bytes([i]))
        out += t
        i += 1
    return out[:n]


class Group:
    def __init__(self, name, gid):
        self.name, self.id = name, gid

    def private(self, label):
        if self.name == "x25519":
            raw = det(label, 32)
            return raw, x25519.X25519PrivateKey.from_private_bytes(raw)
        curve, n = (ec.SECP256R1(), 32) if self.name == "ecp256" else (ec.SECP384R1(), 48)
        # Reduce a fixed value into 1..n-1 by taking it mod a bound below the order.
        d = int.from_bytes(det(label, n), "big") % (2 ** (8 * n - 8)) + 1
        return d.to_bytes(n, "big"), ec.derive_private_key(d, curve)

    def public(self, key):
        if self.name == "x25519":
            return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        assert point[0] == 4
        return point[1:]

    def agree(self, key, peer_key):
        if self.name == "x25519":
            return key.exchange(peer_key.public_key())
        return key.exchange(ec.ECDH(), peer_key.public_key())


def case(name, alg, group):
    plen = HASHES[alg]().digest_size
    priv_i_raw, priv_i = group.private(f"ike kat {name} dh i")
    priv_r_raw, priv_r = group.private(f"ike kat {name} dh r")
    g_ir = group.agree(priv_i, priv_r)
    assert g_ir == group.agree(priv_r, priv_i)
    ni, nr = det(f"ike kat {name} ni", 32), det(f"ike kat {name} nr", 32)
    spi_i = int.from_bytes(det(f"ike kat {name} spi i", 8), "big") | 1
    spi_r = int.from_bytes(det(f"ike kat {name} spi r", 8), "big") | 1
    skeyseed = prf(alg, ni + nr, g_ir)
    km = prf_plus(alg, skeyseed, ni + nr + struct.pack(">QQ", spi_i, spi_r), 3 * plen + 72)
    sk_d, sk_ei, sk_er = km[:plen], km[plen:plen + 36], km[plen + 36:plen + 72]
    sk_pi, sk_pr = km[plen + 72:2 * plen + 72], km[2 * plen + 72:]
    child = prf_plus(alg, sk_d, ni + nr, 72)
    # A rekey with PFS: fresh DH and nonces.
    pfs_i_raw, pfs_i = group.private(f"ike kat {name} pfs i")
    pfs_r_raw, pfs_r = group.private(f"ike kat {name} pfs r")
    g_ir_new = group.agree(pfs_i, pfs_r)
    ni2, nr2 = det(f"ike kat {name} ni2", 32), det(f"ike kat {name} nr2", 32)
    child_pfs = prf_plus(alg, sk_d, g_ir_new + ni2 + nr2, 72)
    # PSK AUTH: an ASCII PSK as AWS gives them, arbitrary "messages", ID bodies (type|000|data).
    psk = b"aws_psk_" + det(f"ike kat {name} psk", 12).hex().encode()
    msg1, msg2 = det(f"ike kat {name} msg1", 300), det(f"ike kat {name} msg2", 280)
    idi_body = bytes([1, 0, 0, 0]) + bytes([192, 0, 2, 1])
    idr_body = bytes([2, 0, 0, 0]) + b"vpn.example.net"
    pad = prf(alg, psk, b"Key Pad for IKEv2")
    auth_i = prf(alg, pad, msg1 + nr + prf(alg, sk_pi, idi_body))
    auth_r = prf(alg, pad, msg2 + ni + prf(alg, sk_pr, idr_body))
    return {
        "name": name,
        "prf": alg,
        "group": group.id,
        "priv_i": priv_i_raw.hex(),
        "priv_r": priv_r_raw.hex(),
        "pub_i": group.public(priv_i).hex(),
        "pub_r": group.public(priv_r).hex(),
        "g_ir": g_ir.hex(),
        "ni": ni.hex(),
        "nr": nr.hex(),
        "spi_i": f"{spi_i:016x}",
        "spi_r": f"{spi_r:016x}",
        "skeyseed": skeyseed.hex(),
        "sk_d": sk_d.hex(),
        "sk_ei": sk_ei.hex(),
        "sk_er": sk_er.hex(),
        "sk_pi": sk_pi.hex(),
        "sk_pr": sk_pr.hex(),
        "child_i2r": child[:36].hex(),
        "child_r2i": child[36:].hex(),
        "pfs_priv_i": pfs_i_raw.hex(),
        "pfs_priv_r": pfs_r_raw.hex(),
        "pfs_pub_r": group.public(pfs_r).hex(),
        "pfs_g_ir": g_ir_new.hex(),
        "ni2": ni2.hex(),
        "nr2": nr2.hex(),
        "child_pfs_i2r": child_pfs[:36].hex(),
        "child_pfs_r2i": child_pfs[36:].hex(),
        "psk": psk.decode(),
        "msg1": msg1.hex(),
        "msg2": msg2.hex(),
        "idi_body": idi_body.hex(),
        "idr_body": idr_body.hex(),
        "auth_i": auth_i.hex(),
        "auth_r": auth_r.hex(),
    }


def prf_plus_vectors():
    out = []
    for alg in HASHES:
        for n in (1, 31, 32, 33, 100, 500):
            key = det(f"prf+ {alg} {n} key", 40)
            seed = det(f"prf+ {alg} {n} seed", 70)
            out.append({"prf": alg, "key": key.hex(), "seed": seed.hex(), "len": n,
                        "out": prf_plus(alg, key, seed, n).hex()})
    return out


def sk_vector():
    """An INFORMATIONAL request holding one Notify(INITIAL_CONTACT) and one Delete(ESP, 1 SPI),
    encrypted: built byte by byte from RFC 7296 §3 and RFC 5282 §3."""
    key, salt = det("sk kat key", 32), det("sk kat salt", 4)
    spi_i, spi_r, msg_id, iv = 0x0102030405060708, 0x1112131415161718, 7, 5
    notify = struct.pack(">BBH", 42, 0, 8) + struct.pack(">BBH", 0, 0, 16384)  # next = D
    delete = struct.pack(">BBH", 0, 0, 12) + struct.pack(">BBH", 3, 4, 1) + struct.pack(">I", 0xC0FFEE01)
    plaintext = notify + delete + b"\x00"  # pad length 0
    sk_len = 4 + 8 + len(plaintext) + 16
    total = 28 + sk_len
    header = struct.pack(">QQBBBBII", spi_i, spi_r, 46, 0x20, 37, 0x08, msg_id, total)
    sk_header = struct.pack(">BBH", 41, 0, sk_len)  # first inner payload: N
    ivb = struct.pack(">Q", iv)
    ct = AESGCM(key).encrypt(salt + ivb, plaintext, header + sk_header)
    return {"key": key.hex(), "salt": salt.hex(), "spi_i": f"{spi_i:016x}", "spi_r": f"{spi_r:016x}",
            "message_id": msg_id, "iv": iv, "delete_spi": 0xC0FFEE01,
            "message": (header + sk_header + ivb + ct).hex()}


def main():
    cases = [
        case("sha384_ecp384", "sha384", Group("ecp384", 20)),
        case("sha256_ecp256", "sha256", Group("ecp256", 19)),
        case("sha256_x25519", "sha256", Group("x25519", 31)),
        case("sha512_ecp256", "sha512", Group("ecp256", 19)),
    ]
    json.dump({
        "generator": f"python cryptography {cryptography.__version__}",
        "cases": cases,
        "prf_plus": prf_plus_vectors(),
        "sk": sk_vector(),
    }, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
