#!/usr/bin/python3
"""Check a nusec --json output (stdin) against docs/cli.md, with a real JSON parser.

usage: json_check.py KIND [KEY...]
  KIND object   one line, one JSON object (no top-level "error")
  KIND array    one line, one JSON array of objects
  KIND lines    zero or more lines, one JSON object each
  KIND error:NAME  the last line is {"error":{"code":N,"name":NAME,"message":S}},
                   every line before it is JSON too
KEY...: keys every object (of an array or lines: each element) must have.
Exit 0 when it conforms; otherwise prints why and exits 1.
"""
import json
import sys


def fail(why):
    sys.stderr.write("json_check: %s\n" % why)
    sys.exit(1)


def main():
    kind, keys = sys.argv[1], sys.argv[2:]
    text = sys.stdin.read()
    if text and not text.endswith("\n"):
        fail("output does not end with a newline")
    lines = text.split("\n")[:-1] if text else []
    docs = []
    for n, line in enumerate(lines, 1):
        try:
            docs.append(json.loads(line))
        except ValueError as e:
            fail("line %d is not one JSON text (%s): %.200s" % (n, e, line))
    if kind.startswith("error:"):
        if not docs:
            fail("no error line")
        err = docs[-1]
        if not isinstance(err, dict) or list(err) != ["error"]:
            fail("last line is not {\"error\":{...}}: %.200r" % err)
        e = err["error"]
        if sorted(e) != ["code", "message", "name"] or not isinstance(e["code"], int) \
                or not isinstance(e["message"], str) or not e["message"]:
            fail("error object is not {code,name,message}: %r" % e)
        if e["name"] != kind.split(":", 1)[1]:
            fail("error name %s, expected %s" % (e["name"], kind.split(":", 1)[1]))
        return
    if kind == "object":
        if len(docs) != 1 or not isinstance(docs[0], dict):
            fail("expected one object on one line, got %d line(s)" % len(docs))
        if "error" in docs[0]:
            fail("a document with a top-level \"error\" key is not data: %.200r" % docs[0])
        items = docs
    elif kind == "array":
        if len(docs) != 1 or not isinstance(docs[0], list):
            fail("expected one array on one line, got %d line(s)" % len(docs))
        items = docs[0]
    elif kind == "lines":
        items = docs
    else:
        fail("unknown kind " + kind)
    for item in items:
        if not isinstance(item, dict):
            fail("an element is not an object: %.200r" % item)
        if kind != "array" and "error" in item and isinstance(item["error"], dict):
            fail("data object with a top-level error object: %.200r" % item)
        missing = [k for k in keys if k not in item]
        if missing:
            fail("missing key(s) %s in %.300r" % (missing, item))


main()
