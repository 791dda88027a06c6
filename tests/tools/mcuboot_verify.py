#!/usr/bin/env python3
"""Independent verifier for NuSEC MCUboot images (test cross-check).

Written from the MCUboot format description (bootutil/image.h, imgtool's
image.py), not from libnusec/nu_mcuboot.c, so that the two check each other.

    mcuboot_verify.py --key rotpk.pem IMAGE [--rotpk-hash HEX]

Prints "OK" and exits 0 when IMAGE is a well-formed ECDSA-P256 signed MCUboot
image whose SHA256 TLV matches the image, whose KEYHASH TLV is the SHA-256 of
the key's DER SubjectPublicKeyInfo (and equals --rotpk-hash when given), and
whose ECDSA_SIG TLV verifies with the key. Otherwise prints the reason and
exits 1 (2 for usage errors).

The cryptography is the openssl command line's, not ours and not a Python
library's: `openssl pkey` gives the key's DER (KEYHASH), `openssl dgst
-sha256 -verify` checks the ECDSA signature over header + payload +
protected TLVs, exactly the bytes MCUboot's bootutil hashes.

Strictness matches NuSEC's images: the protected area holds exactly one
SEC_CNT; the unprotected area exactly SHA256, KEYHASH, ECDSA_SIG (KEYHASH
before the signature) and nothing else; no bytes after the TLVs.
Needs Python 3 (standard library only) and the openssl command.
"""
import argparse
import hashlib
import os
import struct
import subprocess
import sys
import tempfile

IMAGE_MAGIC = 0x96F3B83D
HEADER_LEN = 32
INFO_MAGIC = 0x6907
PROT_INFO_MAGIC = 0x6908
T_KEYHASH, T_SHA256, T_ECDSA_SIG, T_SEC_CNT = 0x01, 0x10, 0x22, 0x50
F_ENCRYPTED = 0x04 | 0x08


class Refused(Exception):
    pass


def tlv_entries(img, start, magic, what):
    """Return ([(type, value)], end) of the TLV area at img[start:]."""
    if start + 4 > len(img):
        raise Refused(f"{what} TLV info past the end of the image")
    got_magic, total = struct.unpack_from("<HH", img, start)
    if got_magic != magic:
        raise Refused(f"{what} TLV info magic 0x{got_magic:04x}, expected 0x{magic:04x}")
    end = start + total
    if total < 4 or end > len(img):
        raise Refused(f"{what} TLV area length {total} out of bounds")
    entries, off = [], start + 4
    while off < end:
        if end - off < 4:
            raise Refused(f"{what} TLV header cut at offset {off}")
        # imgtool packs the type as u8 + u8 0; MCUboot reads a u16.
        kind, length = struct.unpack_from("<HH", img, off)
        off += 4
        if length > end - off:
            raise Refused(f"{what} TLV 0x{kind:x} length {length} runs past its area")
        entries.append((kind, bytes(img[off:off + length])))
        off += length
    return entries, end


def parse(img):
    if len(img) < HEADER_LEN:
        raise Refused("shorter than the 32-byte header")
    (magic, load_addr, hdr_size, prot_size, img_size, flags, major, minor, rev,
     build, _pad) = struct.unpack_from("<IIHHIIBBHII", img, 0)
    if magic != IMAGE_MAGIC:
        raise Refused(f"bad image magic 0x{magic:08x}")
    if hdr_size < HEADER_LEN:
        raise Refused(f"header size {hdr_size} < 32")
    if flags & F_ENCRYPTED:
        raise Refused("encrypted image")
    tlv_off = hdr_size + img_size
    if tlv_off > len(img):
        raise Refused("image size runs past the end of the file")
    if prot_size == 0:
        raise Refused("no protected TLV area (security counter missing)")
    prot, prot_end = tlv_entries(img, tlv_off, PROT_INFO_MAGIC, "protected")
    if prot_end - tlv_off != prot_size:
        raise Refused(f"protected TLV total {prot_end - tlv_off} != header {prot_size}")
    if [k for k, _ in prot] != [T_SEC_CNT] or len(prot[0][1]) != 4:
        raise Refused(f"protected TLVs {[hex(k) for k, _ in prot]}: want one 4-byte SEC_CNT")
    unprot, end = tlv_entries(img, prot_end, INFO_MAGIC, "unprotected")
    if end != len(img):
        raise Refused(f"{len(img) - end} bytes after the TLV area")
    kinds = [k for k, _ in unprot]
    if sorted(kinds) != sorted([T_SHA256, T_KEYHASH, T_ECDSA_SIG]):
        raise Refused(f"unprotected TLVs {[hex(k) for k in kinds]}: want SHA256, KEYHASH, ECDSA_SIG")
    if kinds.index(T_KEYHASH) > kinds.index(T_ECDSA_SIG):
        raise Refused("signature before its KEYHASH")
    tlvs = dict(unprot)
    if len(tlvs[T_SHA256]) != 32 or len(tlvs[T_KEYHASH]) != 32:
        raise Refused("SHA256 or KEYHASH TLV is not 32 bytes")
    return {
        "hashed": bytes(img[:prot_end]),
        "sha256": tlvs[T_SHA256],
        "keyhash": tlvs[T_KEYHASH],
        "sig": tlvs[T_ECDSA_SIG],
        "version": f"{major}.{minor}.{rev}+{build}",
        "sec_cnt": struct.unpack("<I", prot[0][1])[0],
        "load_addr": load_addr,
    }


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)


def key_der(key_path):
    """DER SubjectPublicKeyInfo of a P-256 PEM public key, via openssl."""
    text = openssl("pkey", "-pubin", "-in", key_path, "-noout", "-text")
    if text.returncode != 0:
        raise Refused("key is not a PEM public key")
    if b"prime256v1" not in text.stdout and b"P-256" not in text.stdout:
        raise Refused("key is not an ECDSA P-256 public key")
    der = openssl("pkey", "-pubin", "-in", key_path, "-outform", "DER")
    if der.returncode != 0 or not der.stdout:
        raise Refused("key cannot be exported as DER")
    return der.stdout


def signature_ok(key_path, signed, sig):
    """openssl dgst -sha256 -verify: ECDSA over SHA-256 of the signed bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        data_path, sig_path = os.path.join(tmp, "signed"), os.path.join(tmp, "sig")
        with open(data_path, "wb") as f:
            f.write(signed)
        with open(sig_path, "wb") as f:
            f.write(sig)
        r = openssl("dgst", "-sha256", "-verify", key_path, "-signature", sig_path, data_path)
    return r.returncode == 0 and b"Verified OK" in r.stdout


def verify(img, key_path, want_rotpk_hash):
    info = parse(img)
    digest = hashlib.sha256(info["hashed"]).digest()
    if digest != info["sha256"]:
        raise Refused("image hash does not match the SHA256 TLV")
    rotpk_hash = hashlib.sha256(key_der(key_path)).digest()
    if want_rotpk_hash is not None and want_rotpk_hash != rotpk_hash:
        raise Refused("key does not match --rotpk-hash")
    if info["keyhash"] != rotpk_hash:
        raise Refused("KEYHASH TLV is not the hash of this key")
    if not signature_ok(key_path, info["hashed"], info["sig"]):
        raise Refused("signature does not verify (openssl dgst -verify)")
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--key", required=True, help="ROTPK public key, PEM SubjectPublicKeyInfo")
    ap.add_argument("--rotpk-hash", help="expected SHA-256 of the key's DER, hex")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the image fields")
    ap.add_argument("image")
    args = ap.parse_args()
    try:
        want = bytes.fromhex(args.rotpk_hash) if args.rotpk_hash else None
        with open(args.image, "rb") as f:
            img = f.read()
        info = verify(img, args.key, want)
    except (Refused, OSError, ValueError) as e:
        print(f"REFUSED: {e}")
        return 1
    if args.verbose:
        print(f"version {info['version']} security_counter {info['sec_cnt']} "
              f"load_addr 0x{info['load_addr']:08x}", file=sys.stderr)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
