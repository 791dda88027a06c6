#!/usr/bin/env python3
"""Generate or check the nu_seal test vectors independently of libnusec.

Only the Python 3 standard library and the `openssl` command line (OpenSSL 3)
are used; nothing here calls NuSEC or wolfSSL, so a vector that both this
script and tests/unit/libnusec/test_seal.c agree on was computed twice, by two
unrelated implementations.

    gen_vectors.py            write vectors.txt next to this script
    gen_vectors.py --check    recompute every vector and compare with vectors.txt
                              (exit 0 when identical, 1 otherwise)

Where each value comes from (see nu_seal.h for the construction):
  keys       private scalars = SHA-256 of a label; public points from
             `openssl ec -pubout` on a SEC1 key built from the scalar
  Z          `openssl pkeyutl -derive` (checked in both directions)
  K          `openssl kdf ... HKDF` (OpenSSL 3.0's HKDF)
  C, T       AES-256-GCM assembled from OpenSSL's AES: the keystream is
             `openssl enc -aes-256-ctr` from counter block N||00000002, H and
             E(K, N||00000001) are `openssl enc -aes-256-ecb`; only GHASH (a
             GF(2^128) polynomial evaluation, NIST SP 800-38D §6.4) is computed
             here in Python, because the OpenSSL CLI has no AEAD mode. The
             assembly is self-tested on the GCM specification's test cases 2
             and 14 before any vector is produced.
  box        protobuf wire encoding of nusec.v1.SealedBox written by hand
             (fields 1..4 in order); decoded again with `protoc --decode`
             when protoc is installed.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "vectors.txt")
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto"))

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_OID = bytes.fromhex("06082a8648ce3d030107")
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
INFO = b"nusec/v1 seal"


def run(args, data=None):
    p = subprocess.run(args, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(args), p.stderr.decode(errors="replace")))
    return p.stdout


def der_len(n):
    assert n < 128
    return bytes([n])


def sec1_pem(d, path):
    """SEC1 ECPrivateKey {version 1, d, [0] prime256v1} (no public key) as PEM."""
    body = b"\x02\x01\x01" + b"\x04\x20" + d + b"\xa0" + der_len(len(P256_OID)) + P256_OID
    der = b"\x30" + der_len(len(body)) + body
    with open(path + ".der", "wb") as f:
        f.write(der)
    run(["openssl", "ec", "-inform", "DER", "-in", path + ".der", "-out", path])


def pub_of(priv_pem, pub_pem):
    run(["openssl", "ec", "-in", priv_pem, "-pubout", "-out", pub_pem])
    spki = run(["openssl", "pkey", "-pubin", "-in", pub_pem, "-outform", "DER"])
    assert spki.startswith(SPKI_PREFIX) and len(spki) == 91, spki.hex()
    return spki[len(SPKI_PREFIX):]


def ecdh(priv_pem, peer_pub_pem):
    return run(["openssl", "pkeyutl", "-derive", "-inkey", priv_pem, "-peerkey", peer_pub_pem])


def hkdf(ikm, salt, info, length):
    return run(["openssl", "kdf", "-binary", "-keylen", str(length), "-kdfopt", "digest:SHA256",
                "-kdfopt", "hexkey:" + ikm.hex(), "-kdfopt", "hexsalt:" + salt.hex(),
                "-kdfopt", "hexinfo:" + info.hex(), "HKDF"])


def aes_ecb(key, block):
    bits = len(key) * 8
    return run(["openssl", "enc", "-aes-%d-ecb" % bits, "-K", key.hex(), "-nopad"], block)


def aes_ctr(key, counter_block, data):
    if not data:
        return b""
    bits = len(key) * 8
    return run(["openssl", "enc", "-aes-%d-ctr" % bits, "-K", key.hex(), "-iv",
                counter_block.hex()], data)


def gf_mult(x, y):
    """Multiplication in GF(2^128) with GCM's bit order (SP 800-38D algorithm 1)."""
    r = 0xE1 << 120
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def ghash(h, aad, ct):
    def blocks(b):
        b += b"\x00" * (-len(b) % 16)
        return [b[i:i + 16] for i in range(0, len(b), 16)]
    hi = int.from_bytes(h, "big")
    y = 0
    lens = (len(aad) * 8).to_bytes(8, "big") + (len(ct) * 8).to_bytes(8, "big")
    for blk in blocks(aad) + blocks(ct) + [lens]:
        y = gf_mult(y ^ int.from_bytes(blk, "big"), hi)
    return y.to_bytes(16, "big")


def gcm_encrypt(key, nonce, aad, pt):
    assert len(nonce) == 12
    h = aes_ecb(key, b"\x00" * 16)
    # OpenSSL's CTR increments all 128 bits, GCM only the low 32: the same
    # stream while the low word does not wrap (plaintexts here are tiny).
    ct = aes_ctr(key, nonce + (2).to_bytes(4, "big"), pt)
    s = ghash(h, aad, ct)
    ek_j0 = aes_ecb(key, nonce + (1).to_bytes(4, "big"))
    tag = bytes(a ^ b for a, b in zip(ek_j0, s))
    return ct, tag


def gcm_selftest():
    """GCM specification (McGrew & Viega) test cases 2 (AES-128) and 14 (AES-256)."""
    ct, tag = gcm_encrypt(bytes(16), bytes(12), b"", bytes(16))
    assert ct.hex() == "0388dace60b6a392f328c2b971b2fe78", ct.hex()
    assert tag.hex() == "ab6e47d42cec13bdf53a67b21257bddf", tag.hex()
    ct, tag = gcm_encrypt(bytes(32), bytes(12), b"", bytes(16))
    assert ct.hex() == "cea7403d4d606b6e074ec5d3baf39d18", ct.hex()
    assert tag.hex() == "d0d1c8a799996bf0265b98b5d48ab919", tag.hex()
    # Test case 16: AES-256, AAD and a partial last block.
    k = bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    p = bytes.fromhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
    a = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    ct, tag = gcm_encrypt(k, bytes.fromhex("cafebabefacedbaddecaf888"), a, p)
    assert ct.hex() == ("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
                        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"), ct.hex()
    assert tag.hex() == "76fc6ece0f4e1768cddf8853bb2d551b", tag.hex()


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def sealed_box(eph_pub, nonce, ciphertext):
    def field(num, data):
        return bytes([(num << 3) | 2]) + varint(len(data)) + data
    return b"\x08\x01" + field(2, eph_pub) + field(3, nonce) + field(4, ciphertext)


def protoc_decode(box):
    if not shutil.which("protoc"):
        return None
    return run(["protoc", "--decode=nusec.v1.SealedBox", "-I", PROTO_DIR,
                os.path.join(PROTO_DIR, "nusec", "v1", "job.proto")], box).decode()


def scalar(label):
    d = hashlib.sha256(("nusec/v1 seal test vector: " + label).encode()).digest()
    assert 1 <= int.from_bytes(d, "big") < P256_N
    return d


# (name, recipient label, ephemeral label, nonce label, aad, plaintext)
CASES = [
    ("basic", "recipient-a", "eph-1", "nonce-1", b"package summary v1", b"hello, programmer"),
    ("empty-plaintext-and-aad", "recipient-a", "eph-2", "nonce-2", b"", b""),
    ("empty-aad-block-multiple", "recipient-b", "eph-3", "nonce-3", b"",
     bytes(range(64))),
    ("long-two-byte-lengths", "recipient-b", "eph-4", "nonce-4",
     bytes((i * 7) & 0xFF for i in range(300)), bytes((i * 13 + 5) & 0xFF for i in range(1000))),
    ("same-recipient-new-ephemeral", "recipient-a", "eph-5", "nonce-5", b"package summary v1",
     b"hello, programmer"),
]


def make_vector(tmp, case):
    name, r_label, e_label, n_label, aad, pt = case
    d_r, d_e = scalar(r_label), scalar(e_label)
    nonce = hashlib.sha256(("nusec/v1 seal test vector: " + n_label).encode()).digest()[:12]
    paths = {k: os.path.join(tmp, "%s-%s.pem" % (name, k)) for k in ("r", "rp", "e", "ep")}
    sec1_pem(d_r, paths["r"])
    sec1_pem(d_e, paths["e"])
    pub_r = pub_of(paths["r"], paths["rp"])
    pub_e = pub_of(paths["e"], paths["ep"])
    z = ecdh(paths["e"], paths["rp"])
    assert z == ecdh(paths["r"], paths["ep"]) and len(z) == 32
    key = hkdf(z, pub_e + pub_r, INFO, 32)
    ct, tag = gcm_encrypt(key, nonce, aad, pt)
    box = sealed_box(pub_e, nonce, ct + tag)
    decoded = protoc_decode(box)
    if decoded is not None:
        assert "version: 1" in decoded and "ciphertext" in decoded, decoded
    return [("name", name.encode()), ("recipient_priv", d_r), ("recipient_pub", pub_r),
            ("ephemeral_priv", d_e), ("ephemeral_pub", pub_e), ("shared_secret", z),
            ("hkdf_key", key), ("nonce", nonce), ("aad", aad), ("plaintext", pt),
            ("ciphertext", ct + tag), ("box", box)]


HEADER = """\
# nu_seal test vectors (format version 1). Generated by gen_vectors.py with the
# Python standard library and the openssl CLI only; see README.md.
# Each vector starts at "name"; every other value is lower-case hex (may be empty).
# ciphertext = AES-256-GCM ciphertext || 16-byte tag; box = serialized nusec.v1.SealedBox.
"""


def render(vectors):
    out = [HEADER]
    for v in vectors:
        out.append("\n")
        for k, val in v:
            out.append("%s = %s\n" % (k, val.decode() if k == "name" else val.hex()))
    return "".join(out)


def main():
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] and not check:
        sys.exit("usage: gen_vectors.py [--check]")
    gcm_selftest()
    with tempfile.TemporaryDirectory(prefix="nusec-seal-vec-") as tmp:
        text = render([make_vector(tmp, c) for c in CASES])
    if check:
        with open(VECTORS) as f:
            same = f.read() == text
        print("vectors.txt %s" % ("matches an independent recomputation" if same else "DIFFERS"))
        sys.exit(0 if same else 1)
    with open(VECTORS, "w") as f:
        f.write(text)
    print("wrote %s (%d vectors)" % (VECTORS, len(CASES)))


if __name__ == "__main__":
    main()
