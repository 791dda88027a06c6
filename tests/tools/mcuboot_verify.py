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

Strictness matches NuSEC's images: the protected area holds exactly one
SEC_CNT; the unprotected area exactly SHA256, KEYHASH, ECDSA_SIG (KEYHASH
before the signature) and nothing else; no bytes after the TLVs.
Needs Python 3 and python3-cryptography.
"""
import argparse
import hashlib
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

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


def verify(img, key, want_rotpk_hash):
    info = parse(img)
    digest = hashlib.sha256(info["hashed"]).digest()
    if digest != info["sha256"]:
        raise Refused("image hash does not match the SHA256 TLV")
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    rotpk_hash = hashlib.sha256(spki).digest()
    if want_rotpk_hash is not None and want_rotpk_hash != rotpk_hash:
        raise Refused("key does not match --rotpk-hash")
    if info["keyhash"] != rotpk_hash:
        raise Refused("KEYHASH TLV is not the hash of this key")
    try:
        utils.decode_dss_signature(info["sig"])  # exact DER, no padding
        key.verify(info["sig"], digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        raise Refused("signature does not verify")
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--key", required=True, help="ROTPK public key, PEM SubjectPublicKeyInfo")
    ap.add_argument("--rotpk-hash", help="expected SHA-256 of the key's DER, hex")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the image fields")
    ap.add_argument("image")
    args = ap.parse_args()
    try:
        with open(args.key, "rb") as f:
            key = serialization.load_pem_public_key(f.read())
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise Refused("key is not an ECDSA P-256 public key")
        want = bytes.fromhex(args.rotpk_hash) if args.rotpk_hash else None
        with open(args.image, "rb") as f:
            img = f.read()
        info = verify(img, key, want)
    except Refused as e:
        print(f"REFUSED: {e}")
        return 1
    except (OSError, ValueError) as e:
        print(f"REFUSED: {e}")
        return 1
    if args.verbose:
        print(f"version {info['version']} security_counter {info['sec_cnt']} "
              f"load_addr 0x{info['load_addr']:08x}", file=sys.stderr)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
