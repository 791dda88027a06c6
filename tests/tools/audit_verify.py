#!/usr/bin/env python3
"""An auditor's independent check of a NuSEC ledger's audit chain.

    audit_verify.py LEDGER

Written from the row encoding in libledger/ledger.h, not from ledger.c:
recomputes every event's hash and link, checks seq contiguity and the stored
head, and parses every payload as strict JSON: exactly one object, no
NaN/Infinity, no raw control character, and no object anywhere that gives a
key twice (how a forged `"code":"OK"` shows even when the text still parses).
Prints `OK N events` and exits 0, or `REFUSED: seq S: reason` and exits 1.
"""
import hashlib
import json
import sqlite3
import struct
import sys


class Refused(Exception):
    pass


def row_hash(prev, seq, ts, kind, actor, job_id, payload):
    fields = b"".join(struct.pack(">I", len(f)) + f
                      for f in (kind.encode(), actor.encode(), job_id.encode(), payload.encode()))
    return hashlib.sha256(prev + struct.pack(">QQ", seq, ts) + fields).digest()


def no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise Refused(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def bad_constant(name):
    raise Refused(f"non-JSON constant {name}")


def strict_object(payload):
    try:
        doc = json.loads(payload, object_pairs_hook=no_duplicates, parse_constant=bad_constant)
    except ValueError as e:  # json.JSONDecodeError; strict=True refuses raw control chars
        raise Refused(f"not JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise Refused("not a JSON object")


def main():
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    rows = db.execute("SELECT seq, ts, kind, actor, job_id, payload, prev_hash, hash"
                      " FROM audit_events ORDER BY seq").fetchall()
    prev, expect = bytes(32), 1
    try:
        for seq, ts, kind, actor, job_id, payload, prev_hash, h in rows:
            try:
                if seq != expect:
                    raise Refused(f"seq {expect} missing")
                if bytes(prev_hash) != prev:
                    raise Refused("prev_hash does not link")
                if row_hash(prev, seq, ts, kind, actor, job_id, payload) != bytes(h):
                    raise Refused("hash mismatch (row edited)")
                strict_object(payload)
            except Refused as e:
                raise Refused(f"seq {seq}: {e}") from None
            prev, expect = bytes(h), seq + 1
        head = db.execute("SELECT seq, hash FROM audit_head").fetchone()
        if rows and (head is None or head[0] != rows[-1][0] or bytes(head[1]) != prev):
            raise Refused("audit_head is not the last event")
    except Refused as e:
        print(f"REFUSED: {e}")
        return 1
    print(f"OK {len(rows)} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
