#!/usr/bin/env python3
"""Rewrite a NuSEC ledger's audit chain as an attacker holding the file would.

    ledger_rewrite.py LEDGER --from-seq K --replace OLD NEW [--drop-checkpoints]

Replaces OLD by NEW in the payload of event K, then recomputes the hash of
every event from K on and the stored head, so that the chain is internally
consistent again (the canonical row encoding of libledger/ledger.h). The
protective triggers are dropped for the edit and put back as they were.
With --drop-checkpoints, the audit.checkpoint events from K on are removed
and the later events renumbered, so that no checkpoint with a now-wrong
signature remains: only a checkpoint kept outside the file can show it.
Prints the number of rows rewritten. A test tool: never run it on real data.
"""
import argparse
import hashlib
import sqlite3
import struct
import sys


def row_hash(prev, seq, ts, kind, actor, job_id, payload):
    fields = b"".join(struct.pack(">I", len(f)) + f
                      for f in (kind.encode(), actor.encode(), job_id.encode(), payload.encode()))
    return hashlib.sha256(prev + struct.pack(">QQ", seq, ts) + fields).digest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ledger")
    ap.add_argument("--from-seq", type=int, required=True)
    ap.add_argument("--replace", nargs=2, metavar=("OLD", "NEW"), required=True)
    ap.add_argument("--drop-checkpoints", action="store_true")
    args = ap.parse_args()

    db = sqlite3.connect(args.ledger, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                          " AND tbl_name = 'audit_events'").fetchall()
    for name, _ in triggers:
        db.execute(f'DROP TRIGGER "{name}"')
    rows = db.execute("SELECT seq, ts, kind, actor, job_id, payload FROM audit_events"
                      " WHERE seq >= ? ORDER BY seq", (args.from_seq,)).fetchall()
    if not rows or args.replace[0] not in rows[0][5]:
        print(f"seq {args.from_seq}: no such event or no '{args.replace[0]}' in it", file=sys.stderr)
        return 1
    prev = db.execute("SELECT hash FROM audit_events WHERE seq = ?",
                      (args.from_seq - 1,)).fetchone()[0]
    db.execute("DELETE FROM audit_events WHERE seq >= ?", (args.from_seq,))
    seq, written = args.from_seq, 0
    for i, (_, ts, kind, actor, job_id, payload) in enumerate(rows):
        if args.drop_checkpoints and kind == "audit.checkpoint":
            continue
        if i == 0:
            payload = payload.replace(args.replace[0], args.replace[1])
        h = row_hash(prev, seq, ts, kind, actor, job_id, payload)
        db.execute("INSERT INTO audit_events (seq, ts, kind, actor, job_id, payload, prev_hash,"
                   " hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (seq, ts, kind, actor, job_id, payload, prev, h))
        prev, seq, written = h, seq + 1, written + 1
    db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq - 1, prev))
    for _, sql in triggers:
        db.execute(sql)
    db.execute("COMMIT")
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
