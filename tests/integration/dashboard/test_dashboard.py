#!/usr/bin/env python3
"""The live web view, as an operator sees it: a real headless Chromium opens the
page of `nusec dashboard` during a real production on the local stack.

Checks (each prints "ok NAME" or "FAIL NAME: why"; the last line counts them):
  - the page and its data refuse a missing or wrong token (403), and the
    assets come with a strict Content-Security-Policy;
  - the page's numbers (issued, per programmer) become equal to the ledger's
    and the station's, pushed by the server while production runs;
  - a programmer killed with SIGKILL shows as offline on the page;
  - a screenshot of the page is saved under the build folder.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import websocket  # Debian python3-websocket

RESULTS = {"passed": 0, "failed": 0}


def check(name, ok, why=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(("ok " if ok else "FAIL ") + name + ("" if ok else ": " + why), flush=True)
    return ok


class Stack:
    def __init__(self, bin_dir, home):
        self.bin, self.home = bin_dir, home
        self.env = dict(os.environ, NUSEC_HOME=home)

    def nusec(self, *args, check_rc=True):
        p = subprocess.run([os.path.join(self.bin, "nusec"), *args], env=self.env,
                           capture_output=True, text=True, timeout=120)
        if check_rc and p.returncode != 0:
            raise RuntimeError("nusec %s: exit %d\n%s%s" % (" ".join(args), p.returncode,
                                                           p.stdout, p.stderr))
        return p.stdout

    def ledger_issued(self, job):
        db = sqlite3.connect("file:%s/cloud/ledger.db?mode=ro" % self.home, uri=True, timeout=5)
        try:
            total = db.execute("select count(*) from certificates where job_id = ?",
                               (job,)).fetchone()[0]
            per = dict(db.execute("select programmer_id, count(*) from certificates "
                                  "where job_id = ? group by programmer_id", (job,)).fetchall())
        finally:
            db.close()
        return total, per

    def station_counters(self, job):
        status = json.loads(self.nusec("production", "status", "--job", job, "--json"))
        return {p["programmer"]: p["counter"] for j in status["jobs"] for p in j["programmers"]}


class Browser:
    """Headless Chromium driven over the DevTools protocol (no DOM mock)."""

    def __init__(self, chromium, profile):
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--window-size=1280,900", "--user-data-dir=" + profile,
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 30
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if time.time() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = open(port_file).read().split()[0]
        pages = json.load(urllib.request.urlopen("http://127.0.0.1:%s/json/list" % port))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg["result"]

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r["result"].get("value")

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def wait_for(what, fn, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last is True:
            return True, last
        time.sleep(0.25)
    return False, last


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def served(url):
    """True when url answers 200, else what happened (a reset is no answer)."""
    try:
        status, _ = http_status(url)
        return status == 200 or status
    except OSError as e:
        return repr(e)


def spoof_job_event(home, job, fake_job):
    """As the read-only monitor identity (every role may publish events on
    its own topics): a job event claiming the real job is active with other
    counts, and a job that does not exist. The view must ignore both."""
    proto = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "proto")
    now = int(time.time() * 1000)
    for i, j in enumerate((job, fake_job)):
        text = ('header { message_id: "spoofspoofspoof%d" sender_id: "monitor" sent_at_ms: %d '
                'sequence: %d protocol: 1 } event { kind: "job.spoofed" job_id: "%s" job { '
                'job_id: "%s" status: JOB_STATUS_ACTIVE quota: 1000000 issued: 3 refused: 999 } }'
                % (i, now, 999999 + i, j, j))
        body = subprocess.run(["protoc", "-I", proto, "--encode=nusec.v1.Envelope",
                               "nusec/v1/envelope.proto"], input=text.encode(),
                              capture_output=True, check=True).stdout
        host, port = open(os.path.join(home, "broker", "endpoint")).read().strip().rsplit(":", 1)
        pki = os.path.join(home, "pki")
        subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "--cafile",
                        os.path.join(pki, "chain.pem"), "--cert",
                        os.path.join(pki, "clients", "monitor.crt"), "--key",
                        os.path.join(pki, "clients", "monitor.key"), "-i", "monitor:spoof",
                        "-q", "1", "-t", "nusec/v1/events/monitor/monitor/job.spoofed", "-s"],
                       input=body, capture_output=True, check=True, timeout=20)


def https_default(args, stack, home):
    """On a non-loopback address the page is HTTPS with the broker's
    certificate and key (DIR/pki), which a client trusting the root accepts."""
    url_file = os.path.join(home, "run", "dashboard.url")
    if os.path.exists(url_file):
        os.unlink(url_file)
    dash = subprocess.Popen([os.path.join(args.bin, "nusec"), "dashboard", "--listen",
                             "0.0.0.0:0"], env=stack.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ok, _ = wait_for("https url", lambda: os.path.exists(url_file) or None, 20)
        url = open(url_file).read().strip() if ok else ""
        port, token = url.split("/?token=")[0].rsplit(":", 1)[-1], url.split("token=")[-1]
        ctx = ssl.create_default_context(cafile=os.path.join(home, "pki", "root-ca.pem"))
        try:
            with urllib.request.urlopen("https://127.0.0.1:%s/state.json?token=%s" % (port, token),
                                        timeout=5, context=ctx) as r:
                status = r.status
        except (OSError, ValueError) as e:
            status = repr(e)
        check("HTTPS with the broker's certificate, verified through the root", status == 200,
              "%s (url %s)" % (status, url))
    finally:
        dash.send_signal(signal.SIGTERM)
        out, _ = dash.communicate(timeout=15)
        check("the HTTPS dashboard stops with exit 0", dash.returncode == 0, out[-400:])


def page_numbers(browser, job):
    js = """(() => {
      const row = document.querySelector('[data-job="%s"]');
      const progs = {};
      document.querySelectorAll('[data-programmer]').forEach((r) => {
        progs[r.dataset.programmer] = {
          counter: Number(r.querySelector('.counter').textContent),
          online: r.querySelector('.online').textContent };
      });
      return { issued: row ? Number(row.querySelector('.issued').textContent) : -1,
               snapshots: Number(document.body.dataset.snapshots || 0), progs };
    })()""" % job
    return browser.eval(js)


def run(args, home):
    stack = Stack(args.bin, home)
    stack.nusec("stack", "up", "--programmers", "2", "--sockets", "2", "--devices", "60",
                "--flash-us-per-kib", "200")
    with open(os.path.join(home, "app.bin"), "wb") as f:
        f.write(os.urandom(65536))
    stack.nusec("firmware", "sign", "--in", os.path.join(home, "app.bin"), "--name", "app",
                "--version", "1.0.0")
    os.makedirs(os.path.join(home, "packages"))
    job = stack.nusec("job", "create", "--firmware", "app-1.0.0", "--quota", "40",
                      "--programmer", "prog-1", "--programmer", "prog-2", "--expires", "1h",
                      "--out", os.path.join(home, "packages")).strip().splitlines()[-1]
    pkgs = sorted(os.path.join(home, "packages", f) for f in os.listdir(os.path.join(home, "packages")))
    stack.nusec("package", "import", *pkgs)

    dash = subprocess.Popen([os.path.join(args.bin, "nusec"), "dashboard", "--listen",
                             "127.0.0.1:0"], env=stack.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    browser = None
    token = ""
    try:
        url_file = os.path.join(home, "run", "dashboard.url")
        ok, _ = wait_for("url", lambda: os.path.exists(url_file) or None, 20)
        check("dashboard writes DIR/run/dashboard.url", ok)
        url = open(url_file).read().strip()
        check("dashboard.url is 0600", (os.stat(url_file).st_mode & 0o777) == 0o600)
        base, token = url.split("/?token=")
        status, _ = http_status(base + "/")
        check("page without token is refused (403)", status == 403, str(status))
        status, _ = http_status(base + "/state.json?token=" + "0" * len(token))
        check("data with a wrong token is refused (403)", status == 403, str(status))
        status, _ = http_status(base + "/events?token=x")
        check("event stream with a wrong token is refused (403)", status == 403, str(status))
        status, headers = http_status(url)
        csp = headers.get("Content-Security-Policy", "")
        check("page is served with a strict CSP and no referrer",
              status == 200 and "default-src 'none'" in csp and
              headers.get("Referrer-Policy") == "no-referrer", "%s %s" % (status, csp))

        # Connections that never send a request (no token needed for that)
        # hold no slot for good: the token holder gets in once they idle out.
        port = int(base.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
        try:
            ok, last = wait_for("a slot", lambda: served(base + "/state.json?token=" + token), 25)
            check("40 idle connections do not lock the token holder out", ok, str(last))
        finally:
            for s in idle:
                s.close()

        browser = Browser(args.chromium, os.path.join(home, "chromium"))
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url)
        stack.nusec("production", "start", "--job", job)

        def agrees():
            n = page_numbers(browser, job)
            total, per = stack.ledger_issued(job)
            counters = stack.station_counters(job)
            if not n or n["issued"] != 40 or total != 40:
                return n
            page_per = {p: v["counter"] for p, v in n["progs"].items()}
            return page_per == counters and sum(per.values()) == 40 and \
                all(page_per.get(p) == c for p, c in per.items()) or \
                {"page": n, "ledger": per, "station": counters}
        ok, last = wait_for("numbers", agrees, 90)
        check("page numbers equal the ledger's and the station's", ok, json.dumps(last))
        n = page_numbers(browser, job)
        check("updates were pushed (several snapshots, no reload)", n["snapshots"] >= 2,
              str(n["snapshots"]))

        spoof_job_event(home, job, "job-spoofed-by-monitor")
        time.sleep(2)
        n = page_numbers(browser, job)
        with urllib.request.urlopen(base + "/state.json?token=" + token, timeout=5) as r:
            jobs = {j["job"]: j for j in json.loads(r.read().decode())["jobs"]}
        real = jobs.get(job, {})
        check("a job event from another role than the cloud changes nothing",
              n["issued"] == 40 and "job-spoofed-by-monitor" not in jobs and
              real.get("quota") == 40 and real.get("status") == "exhausted",
              "issued %s, jobs %s" % (n["issued"], json.dumps(list(jobs.values()))[:400]))

        pid = int(open(os.path.join(home, "run", "prog-2.pid")).read())
        os.kill(pid, signal.SIGKILL)
        ok, last = wait_for("offline", lambda: page_numbers(browser, job)["progs"]
                            .get("prog-2", {}).get("online") == "offline" or None, 30)
        check("a killed programmer shows as offline", ok, json.dumps(last))
        online1 = page_numbers(browser, job)["progs"].get("prog-1", {}).get("online")
        check("the other programmer still shows online", online1 == "online", str(online1))

        shot = browser.call("Page.captureScreenshot", format="png")
        path = os.path.join(args.out, "dashboard.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        check("screenshot saved (%s)" % path, os.path.getsize(path) > 1000)
    finally:
        if browser:
            browser.close()
        dash.send_signal(signal.SIGTERM)
        try:
            out, _ = dash.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            dash.kill()
            out, _ = dash.communicate()
        check("dashboard stops on SIGTERM with exit 0", dash.returncode == 0,
              "exit %s\n%s" % (dash.returncode, out))
        check("its output (a log, not a terminal) holds no token", token and token not in out,
              out[-400:])
        try:
            https_default(args, stack, home)
        finally:
            stack.nusec("stack", "down", check_rc=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="nusec-dash-")
    try:
        run(args, home)
    except Exception as e:  # a broken step is a failure, with its reason
        check("run", False, repr(e))
    finally:
        if not os.environ.get("NUSEC_KEEP_TMP"):
            shutil.rmtree(home, ignore_errors=True)
    print("dashboard: %d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
