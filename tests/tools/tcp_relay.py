#!/usr/bin/env python3
"""A TCP relay the tests cut and restore: the WAN link between a site and the cloud.

usage: tcp_relay.py --target HOST:PORT --port-file FILE [--pid-file FILE] [--refuse]
                    [--hold-client]

Listens on a free loopback port (written to --port-file) and forwards every
connection to --target. SIGUSR1 cuts the link: every relayed connection is
closed at once and new ones are closed as soon as they are accepted (the peer
sees its link drop and its reconnects fail). With --refuse the port is not
even listened on while cut, so reconnects are refused (RST, as from a far end
that is down) instead of accepted and closed at once: Mosquitto 2.0.11's
bridge was seen to stop retrying for good after a TLS handshake cut that way
(tests/integration/sites/test_sites_wan_cut.sh). SIGUSR2 restores it. SIGTERM
stops. Each cut, restore and relayed connection is logged to stderr with a
wall-clock time ("tcp_relay: SECONDS link cut | link restored | connection
relayed"), so a test can tell when the peer is through again.

SIGHUP holds the way back: from then until the next cut, what the target
sends is kept in the relay, not forwarded (and dropped at the cut), while
the other way still flows. With --delay-s D it is forwarded D seconds late
instead (an answer then still comes, late), and only what is in the relay
at the cut is dropped. A request crosses, its answer waits: a test that
holds, waits until the far end acted on a request, then cuts, has that
answer lost for sure (tests/integration/sites/test_sites_wan_cut.sh). With
--hold-client it is the other way that is held: what the connecting side
sends (a cloud agent that dials the broker through the relay: its answers).
SIGWINCH releases a hold before any cut: what was kept is forwarded at once,
in order, and the way back flows again (a test that held at a moment that
did not suit it tries again; tests/integration/programmer/test_lease_offline.sh).
"""
import argparse
import os
import selectors
import signal
import socket
import sys
import time

cut = False
hold = False  # the target's bytes are kept back (SIGHUP), until the cut
pending = []  # signals to apply in the loop


def log(msg):
    print(f"tcp_relay: {time.time():.3f} {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--pid-file")
    ap.add_argument("--refuse", action="store_true")
    ap.add_argument("--hold-client", action="store_true")
    ap.add_argument("--delay-s", type=float, default=0.0)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    sel = selectors.DefaultSelector()

    def listen(at):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", at))
        ls.listen(64)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, None)
        return ls

    lsock = listen(0)
    lport = lsock.getsockname()[1]
    peers = {}  # socket -> its other end
    targets = set()  # the target-side ends
    late = []  # (due time, destination, bytes) held back under --delay-s

    def close_pair(s):
        o = peers.pop(s, None)
        for x in (s, o):
            if x is None:
                continue
            peers.pop(x, None)
            targets.discard(x)
            try:
                sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    signal.signal(signal.SIGUSR1, lambda *_: pending.append("cut"))
    signal.signal(signal.SIGUSR2, lambda *_: pending.append("restore"))
    signal.signal(signal.SIGTERM, lambda *_: pending.append("stop"))
    signal.signal(signal.SIGHUP, lambda *_: pending.append("hold"))
    signal.signal(signal.SIGWINCH, lambda *_: pending.append("release"))
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{lport}\n")
    os.replace(tmp, a.port_file)
    if a.pid_file:
        with open(a.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    global cut, hold
    while True:
        while pending:
            what = pending.pop(0)
            if what == "stop":
                return 0
            if what == "hold" and not cut:
                hold = True
                log("way back held")
            if what == "release" and hold:
                hold = False
                late = [(0.0, dst, data) for _, dst, data in late]
                log("way back released")
            if what == "cut" and not cut:
                cut = True
                hold = False
                if late:
                    log(f"{sum(len(b) for _, _, b in late)} held byte(s) dropped")
                late.clear()
                for s in [s for s in peers if s in peers]:
                    close_pair(s)
                if a.refuse:
                    sel.unregister(lsock)
                    lsock.close()
                log("link cut")
            elif what == "restore" and cut:
                cut = False
                if a.refuse:
                    lsock = listen(lport)
                log("link restored")
        now = time.monotonic()
        while late and late[0][0] <= now:
            _, dst, data = late.pop(0)
            if dst in peers:
                try:
                    dst.setblocking(True)
                    dst.sendall(data)
                    dst.setblocking(False)
                except OSError:
                    close_pair(dst)
        for key, _ in sel.select(timeout=0.02 if late else 0.1):
            s = key.fileobj
            if s is lsock:
                try:
                    c, _ = lsock.accept()
                except OSError:
                    continue
                if cut:
                    c.close()
                    continue
                try:
                    u = socket.create_connection((host, int(port)), timeout=2)
                except OSError:
                    c.close()
                    continue
                c.setblocking(False)
                u.setblocking(False)
                log("connection relayed")
                peers[c], peers[u] = u, c
                targets.add(c if a.hold_client else u)
                sel.register(c, selectors.EVENT_READ, None)
                sel.register(u, selectors.EVENT_READ, None)
                continue
            if s not in peers:
                continue
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                close_pair(s)
                continue
            if hold and s in targets:
                # Kept back (a TLS stream cannot lose bytes and go on): lost at
                # the cut, forwarded at a release, or late with --delay-s.
                due = time.monotonic() + a.delay_s if a.delay_s > 0 else float("inf")
                late.append((due, peers[s], data))
                continue
            try:
                peers[s].setblocking(True)
                peers[s].sendall(data)
                peers[s].setblocking(False)
            except OSError:
                close_pair(s)


if __name__ == "__main__":
    sys.exit(main())
