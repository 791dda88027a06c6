#!/usr/bin/env bash
# Two sites on loopback with real brokers, bridges and processes (issue 14):
#  1. a production through two bridged sites (sites_flow.sh), checked from the
#     outside like tests/e2e: quota, every device certificate in the ledger and
#     verifying, audit verify;
#  2. the hostile site, through its bridge identity (sites_hostile.c): each case
#     refused with its typed error, an audit row (the ledger's, or the cloud
#     broker's log where the broker refuses) and no change of the ledger's state;
#  3. the CM state dirs hold nothing of the OEM's secrets: no HSM token object,
#     PIN, OEM private key or ledger bytes (byte search).
#
# usage: test_sites.sh BIN_DIR SOURCE_DIR      (NUSEC_KEEP_TMP=1 keeps the folder)
set -uo pipefail
BIN=$1 SRC=$2
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nusec-sites-XXXXXX")
DIR=$TMP/oem
CM1=$DIR/cm/site-1 CM2=$DIR/cm/site-2
passed=0 failed=0
check() { # check NAME COMMAND...
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1)); echo "ok   $name"
    else
        failed=$((failed + 1)); echo "FAIL $name"
    fi
}
cleanup() {
    "$BIN/nusec" stack down --dir "$DIR" >/dev/null 2>&1
    [[ -n "${NUSEC_KEEP_TMP:-}" ]] || rm -rf "$TMP"
}
trap cleanup EXIT
WINDOW=20
QUOTA=6 DEVICES=8

# ---- 1. production through two bridged sites ------------------------------------------------
"$SRC/tests/integration/sites/sites_flow.sh" --bin "$BIN" --dir "$DIR" --sites 2 --programmers 1 \
    --sockets 2 --devices "$DEVICES" --quota "$QUOTA" --window "$WINDOW" \
    --capture "prog-1:$TMP/cap" --forge "prog-1:2:$TMP/forged" --org "Acme Devices" --keep \
    >"$TMP/flow.log" 2>&1
flow_rc=$?
cat "$TMP/flow.log"
check "production through two bridged sites ran" test "$flow_rc" -eq 0
captured_at=$(stat -c %Y "$TMP/cap.env" 2>/dev/null || echo 0)
LEDGER=$DIR/cloud/ledger.db
job=$(cat "$DIR/job" 2>/dev/null)
locked=$(grep -l '^state=locked' "$CM1"/targets/*/state "$CM2"/targets/*/state 2>/dev/null |
    xargs -r -n1 dirname)
n_locked=$(echo "$locked" | grep -c . || true)
certs=$(sqlite3 "$LEDGER" "select count(*) from certificates where job_id='$job'")
check "the lines stopped at exactly the quota" test "$n_locked" -eq "$QUOTA"
check "ledger certificates == provisioned devices" test "$certs" -eq "$n_locked"
check "both sites produced" test "$(sqlite3 "$LEDGER" \
    "select count(distinct programmer_id) from certificates where job_id='$job'")" -eq 2
in_ledger() {
    local t serial
    for t in $locked; do
        openssl verify -CAfile "$CM1/pki/device-chain.pem" "$t/cert.pem" >/dev/null || return 1
        serial=$(openssl x509 -noout -serial -in "$t/cert.pem" | cut -d= -f2 | tr A-F a-f)
        [[ $(sqlite3 "$LEDGER" "select count(*) from certificates where lower(serial)='$serial' \
            and state='provisioned'") == 1 ]] || return 1
    done
}
check "every device certificate verifies and is in the ledger, provisioned" in_ledger
check "audit verify" "$BIN/nusec" audit verify --dir "$DIR" >/dev/null
org_of() { openssl x509 -noout -subject -nameopt sep_multiline -in "$1" | sed -n 's/^ *O=//p'; }
orgs_ok() { # `pki init --org`: the OEM's name in every certificate it issues, not "NuSEC"
    local t
    for t in $locked; do [[ $(org_of "$t/cert.pem") == "Acme Devices" ]] || return 1; done
    [[ -n "$locked" && $(org_of "$CM1/programmers/prog-1/identity.crt") == "Acme Devices" &&
        $(org_of "$CM1/site/bridge.crt") == "Acme Devices" ]]
}
check "device, programmer and site certificates carry O = the OEM's --org" orgs_ok

# Forged certificate answers toward prog-1 during that production (a CA of the
# CM's, signed end to end with a CM-held key, bound to the request): the
# programmer drops each one the bridge delivered before the cloud's, counts
# it in its log, holds the chip and asks again; the checks above hold (exact
# quota, every certificate on a chip is the OEM's and in the ledger).
read -r forged_sent forged_won <"$TMP/forged" 2>/dev/null || forged_sent=0 forged_won=0
forged_dropped=$(grep -c "answer to nusec/v1/cloud/req/prog-1/cert.request dropped: signature does not verify" \
    "$CM1/logs/prog-1.log" 2>/dev/null || true)
echo "forged certificate answers: $forged_sent sent, ${forged_won:-0} ahead of the cloud's, ${forged_dropped:-0} dropped by prog-1"
check "forged certificate answers were injected toward prog-1" test "$forged_sent" -ge 1
# The forger holds the cloud's genuine answer back (sites_hostile answer:
# the site broker's power, played by pausing the cloud agent) until prog-1
# dropped the forgery: every forgery that came first must be dropped and
# counted in prog-1's log, and at least one must have come first.
check "forged answers that came first: at least one" test "${forged_won:-0}" -ge 1
check "forged answers: each one that came first was dropped (prog-1's count)" \
    test "${forged_dropped:-0}" -ge "${forged_won:-0}" -a "${forged_dropped:-0}" -le "$forged_sent"
no_clone() { # no chip holds a certificate of the CM's clone CA
    ! grep -l "CM clone works" $(for t in $locked; do echo "$t/cert.pem"; done) /dev/null >/dev/null 2>&1 &&
        for t in $locked; do openssl x509 -noout -subject -in "$t/cert.pem" | grep -vq "CM clone" || return 1; done
}
check "no chip holds the forged certificate" no_clone

# ---- site identities: what the OEM's `site` commands refuse --------------------------------
N=$BIN/nusec
exit_of() { "$@" >/dev/null 2>>"$TMP/site-cmds.err"; echo $?; }
check "site add of an existing site: refused (exit 3)" test "$(exit_of "$N" site add site-1 \
    --dir "$DIR" --out "$TMP/x.enrol")" -eq 3
check "site add with a programmer's name: refused (exit 3)" test "$(exit_of "$N" site add prog-1 \
    --dir "$DIR" --out "$TMP/x.enrol")" -eq 3
check "site sign with a used token: refused" test "$(exit_of "$N" site sign "$DIR/cm/site-1.join" \
    --dir "$DIR" --out "$TMP/x.bundle")" -eq 1
check "site assign of another site's programmer: refused (exit 3)" \
    test "$(exit_of "$N" site assign site-1 prog-2 --dir "$DIR" --out "$TMP/x.bundle")" -eq 3
"$N" site add site-x --dir "$DIR" --out "$TMP/site-x.enrol" >/dev/null &&
    "$N" site add site-y --dir "$DIR" --out "$TMP/site-y.enrol" >/dev/null &&
    "$N" site join "$TMP/site-x.enrol" --dir "$TMP/cm-x" --out "$TMP/site-x.join" >/dev/null &&
    "$N" site join "$TMP/site-y.enrol" --dir "$TMP/cm-y" --out "$TMP/site-y.join" >/dev/null
# A join request for site-x carrying site-y's token, then one with site-y's station CSR.
python3 - "$TMP" <<'PY'
import sys
t = sys.argv[1]
def entries(p):
    b = open(p, 'rb').read(); out = []; off = b.index(b'\n') + 1
    while not b[off:].startswith(b'end '):
        nl = b.index(b'\n', off); _, name, n = b[off:nl].split(b' '); n = int(n)
        out.append((name, b[nl + 1:nl + 1 + n])); off = nl + 1 + n + 1
    return out
def write(p, es):
    with open(p, 'wb') as f:
        f.write(b'nusec-site 1\n')
        for name, d in es: f.write(b'file %s %d\n' % (name, len(d)) + d + b'\n')
        f.write(b'end %d\n' % len(es))
x, y = dict(entries(t + '/site-x.join')), dict(entries(t + '/site-y.join'))
write(t + '/wrong-token.join', [(k, y[b'token'] if k == b'token' else v) for k, v in x.items()])
write(t + '/wrong-csr.join', [(k, y[k] if k == b'csr/station.pem' else v) for k, v in x.items()])
PY
clients_before=$(ls "$DIR/pki/clients" | tr '\n' ' ')
check "site sign with another site's token: refused" test "$(exit_of "$N" site sign \
    "$TMP/wrong-token.join" --dir "$DIR" --out "$TMP/x.bundle")" -eq 1
check "site sign of a CSR for another name: refused" test "$(exit_of "$N" site sign \
    "$TMP/wrong-csr.join" --dir "$DIR" --out "$TMP/x.bundle")" -eq 1
check "refused site signs left no certificate" test ! -e "$DIR/sites/site-x/site.crt" -a \
    ! -e "$DIR/sites/site-x/station.crt" -a "$clients_before" == "$(ls "$DIR/pki/clients" | tr '\n' ' ')"
check "refusals name their reason" grep -q "token is not site site-x's" "$TMP/site-cmds.err"
check "... and the CSR's" grep -q "asks for CN=site-y OU=station, not CN=site-x" "$TMP/site-cmds.err"

# The CM names its site broker: a join request whose broker-host is the name
# the site bridges dial for the cloud broker (or another site's broker's) is
# refused, else the Fleet CA would sign a certificate any bridge accepts for it.
"$N" site add site-z --dir "$DIR" --cloud cloud.oem.example:8883 --out "$TMP/site-z.enrol" \
    >/dev/null &&
    "$N" site join "$TMP/site-z.enrol" --dir "$TMP/cm-z" --host 10.7.0.10 --port 8883 \
        --out "$TMP/site-z.join" >/dev/null
python3 - "$TMP/site-z.join" <<'PY'
import sys
p = sys.argv[1]
b = open(p, 'rb').read()
old = b"file broker-host 9\n10.7.0.10\n"
assert old in b, "unexpected join layout"
open(p, 'wb').write(b.replace(old, b"file broker-host 17\ncloud.oem.example\n"))
PY
check "site sign of a broker named like the cloud broker: refused" test "$(exit_of "$N" site sign \
    "$TMP/site-z.join" --dir "$DIR" --out "$TMP/z.bundle")" -eq 1
check "... and left no certificate" test ! -e "$DIR/sites/site-z/broker.crt" -a \
    ! -e "$DIR/sites/site-z/site.crt"
check "... the reason said" grep -q "broker certificate named cloud.oem.example" "$TMP/site-cmds.err"
site_audit() { # the OEM's record of its site commands: valid JSON lines, the refusals in it
    python3 - "$DIR/sites/audit.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
want = {('site.join.refused', 'site-1', 'TOKEN'), ('site.join.refused', 'site-x', 'TOKEN'),
        ('site.join.refused', 'site-x', 'BAD_CSR'), ('site.assign.refused', 'site-1', 'EXISTS'),
        ('site.signed', 'site-1', 'OK'), ('site.signed', 'site-2', 'OK'),
        ('site.join.refused', 'site-z', 'NOT_AUTHORIZED')}
got = {(r['event'], r['site'], r['code']) for r in rows}
sys.exit(0 if want <= got else print('missing', want - got) or 1)
PY
}
check "the OEM's site audit records each refusal (DIR/sites/audit.jsonl)" site_audit
site_rows() { # site_rows KIND SITE CODE: the ledger's audit chain rows of the site commands
    sqlite3 "$LEDGER" "select count(*) from audit_events where kind='$1' and actor='oem' and
        payload like '%\"site\":\"$2\"%' and payload like '%\"code\":\"$3\"%'"
}
ledger_site_audit() {
    (($(site_rows site.join.refused site-1 TOKEN) >= 1 && $(site_rows site.join.refused site-x TOKEN) >= 1 &&
        $(site_rows site.join.refused site-x BAD_CSR) >= 1 &&
        $(site_rows site.assign.refused site-1 EXISTS) >= 1))
}
check "... and the ledger's audit chain too (kind site.*, actor oem)" ledger_site_audit
check "... which still verifies with them" "$BIN/nusec" audit verify --dir "$DIR"

# ---- 2. the hostile site ----------------------------------------------------------------------
H=$BIN/sites_hostile
snapshot() {
    sqlite3 "$LEDGER" "select serial, state, programmer_id from certificates order by serial;
        select job_id, issued, status from jobs; select job_id, programmer_id, issued from job_allocations;
        select programmer_id, state from programmers order by 1"
}
refusals() { # refusals ACTOR CODE: audit rows refusing ACTOR's messages with CODE
    sqlite3 "$LEDGER" "select count(*) from audit_events where kind='request.refused' and
        actor='$1' and payload like '%$2%'"
}
# hostile_case NAME EXPECTED-ANSWER ACTOR AUDIT-CODE ACTION...
hostile_case() {
    local name=$1 want=$2 actor=$3 code=$4
    shift 4
    local before after got n0 n1
    before=$(snapshot)
    n0=$(refusals "$actor" "$code")
    got=$("$H" "$@" 2>>"$TMP/hostile.err" | tail -n 1)
    for _ in $(seq 30); do # an event has no answer: wait for its audit row
        n1=$(refusals "$actor" "$code")
        ((n1 > n0)) && break
        sleep 0.2
    done
    after=$(snapshot)
    check "$name: answered $want" test "$got" == "$want"
    check "$name: audit row ($actor, $code)" test "$n1" -gt "$n0"
    check "$name: no state change" test "$before" == "$after"
}
hostile_case "cert.request in prog-1's name with a CM-held key" BAD_SIGNATURE prog-1 \
    BAD_SIGNATURE forge "$DIR" "$CM1" prog-1 "$job"
check "a genuine signed cert.request was captured" test -s "$TMP/cap.env"
hostile_case "genuine signature replayed with a new CSR" BAD_SIGNATURE prog-1 BAD_SIGNATURE \
    newcsr "$DIR" "$CM1" "$TMP/cap"
hostile_case "genuine signed request replayed as is" REPLAY prog-1 REPLAY \
    replay "$DIR" "$CM1" "$TMP/cap"
wait_s=$((captured_at + WINDOW + 2 - $(date +%s)))
((wait_s > 0)) && sleep "$wait_s"
hostile_case "genuine signed request replayed after the ${WINDOW} s window" REPLAY prog-1 REPLAY \
    replay "$DIR" "$CM1" "$TMP/cap"
hostile_case "forged device report" PUBLISHED prog-1 BAD_SIGNATURE \
    report "$DIR" "$CM1" prog-1 "$job"

# Another site's programmer: the cloud broker refuses the publish (the site role
# speaks only for its own programmers); the refusal is in the broker's log.
before=$(snapshot)
got=$("$H" forge "$DIR" "$CM1" prog-2 "$job" 2>>"$TMP/hostile.err" | tail -n 1)
check "request for another site's programmer: refused ($got)" test "$got" == NOT_AUTHORIZED
check "request for another site's programmer: cloud broker log row" \
    grep -q "denied write 'nusec/v1/cloud/req/prog-2/cert.request' for site-1 (site)" \
    "$DIR/broker/mosquitto.log"
check "request for another site's programmer: no state change" test "$before" == "$(snapshot)"

# START toward a programmer from the site's own station (the CM holds its key):
# for a job the programmer holds no package for, and again for the real job,
# whose quota is spent. Neither makes a unit: no ledger change, no new device.
before=$(snapshot)
locked_before=$(cat "$CM1"/targets/*/state | grep -c '^state=locked')
got=$("$H" start "$CM1" prog-1 job-forged 2>>"$TMP/hostile.err" | tail -n 1)
check "forged START for an unknown job: sent through the site broker ($got)" test "$got" == PUBLISHED
ignored=no
for _ in $(seq 50); do
    grep -q "START for job job-forged ignored: not the current job" "$CM1/logs/prog-1.log" &&
        ignored=yes && break
    sleep 0.1
done
check "forged START for an unknown job: the programmer refuses it (its log)" test "$ignored" == yes
got=$("$H" start "$CM1" prog-1 "$job" 2>>"$TMP/hostile.err" | tail -n 1)
sleep 3
check "START of the exhausted job: no new device" \
    test "$(cat "$CM1"/targets/*/state | grep -c '^state=locked')" -eq "$locked_before"
check "forged STARTs: no state change" test "$before" == "$(snapshot)"

# Lists decided at the OEM reach the site brokers over the bridge: the
# ownership table (the cloud broker's lines for the site) and revocations.
check "site-2's ownership table came from the cloud broker" \
    grep -qx "site-2 prog-2" "$CM2/broker/owners"
check "site-2's ownership table has no other site's lines" \
    bash -c "! grep -q site-1 '$CM2/broker/owners'"
"$BIN/nusec" programmer revoke prog-2 --dir "$DIR" --reason test >/dev/null
kicked=no
for _ in $(seq 50); do
    grep -q "identity prog-2 revoked: disconnecting it" "$CM2/broker/mosquitto.log" && kicked=yes && break
    sleep 0.1
done
check "a programmer revoked at the OEM is disconnected by its site broker" test "$kicked" == yes
check "... and refused when it reconnects there" bash -c "for _ in \$(seq 50); do
    grep -qE \"refused connection from .*: identity revoked; .* CN 'prog-2'\" '$CM2/broker/mosquitto.log' && exit 0; sleep 0.1; done; exit 1"

# Enrollment relayed at a site (the CM carries the answer that pins the keys),
# through site-1's real station identity, site broker and bridge. The vendor
# pins the OEM anchor in prog-9's KeyStore; the CM answers first with an
# EnrollResponse of its own (the cloud's answer held back, sites_hostile
# enrollanswer): the programmer refuses it and pins nothing.
PROG=$BIN/nusec-programmer
enroll_token() { "$N" programmer token --name "$1" --dir "$DIR" 2>/dev/null | head -c 64; }
"$PROG" --dir "$CM1" --name prog-9 --factory-init --vendor-ca "$DIR/vendor" \
    --oem-anchor "$DIR/pki/package-key.pem" >/dev/null 2>>"$TMP/enroll.err"
"$H" enrollanswer "$DIR" site-1 1 "$TMP/eforged" "$TMP/prog-9.log" >"$TMP/eforged.log" 2>&1 &
forge_pid=$!
for _ in $(seq 50); do grep -q SUBSCRIBED "$TMP/eforged.log" && break; sleep 0.1; done
"$PROG" --dir "$CM1" --name prog-9 --enroll "$(enroll_token prog-9)" --relay site-1 \
    >"$TMP/prog-9.log" 2>&1
erc=$?
wait "$forge_pid"
cat "$TMP/eforged.log"
read -r e_sent e_won <"$TMP/eforged" 2>/dev/null || e_sent=0 e_won=0
check "forged enrollment answer at the site: sent ahead of the cloud's" test "${e_won:-0}" -ge 1
check "forged enrollment answer: the programmer drops it (signature, its log)" grep -q \
    "answer to nusec/v1/cloud/req/site-1/enroll dropped: signature does not verify" "$TMP/prog-9.log"
check "forged enrollment answer: the enrollment fails, nothing pinned" \
    test "$erc" -ne 0 -a ! -e "$CM1/programmers/prog-9/identity.crt"

# A programmer whose KeyStore the CM anchored to a key of its own: the CM
# answers its challenge (signed with that key, which the programmer trusts),
# the attested enrollment names the CM's anchor, the cloud refuses it.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/cm-anchor.key" 2>/dev/null
openssl pkey -in "$TMP/cm-anchor.key" -pubout -out "$TMP/cm-anchor.pem"
"$PROG" --dir "$CM1" --name prog-10 --factory-init --vendor-ca "$DIR/vendor" \
    --oem-anchor "$TMP/cm-anchor.pem" >/dev/null 2>>"$TMP/enroll.err"
n0=$(refusals site-1 KEY_NOT_ATTESTED)
# The CM's challenge answer must reach the programmer before the cloud's (a
# race the forger usually wins): up to 3 tries, a new token each.
for _ in 1 2 3; do
    "$H" challenge "$DIR" site-1 "$TMP/cm-anchor.key" "$TMP/cforged" "$TMP/prog-10.log" \
        >"$TMP/cforged.log" 2>&1 &
    forge_pid=$!
    for _ in $(seq 50); do grep -q SUBSCRIBED "$TMP/cforged.log" && break; sleep 0.1; done
    "$PROG" --dir "$CM1" --name prog-10 --enroll "$(enroll_token prog-10)" --relay site-1 \
        >"$TMP/prog-10.log" 2>&1
    wait "$forge_pid"
    for _ in $(seq 30); do (($(refusals site-1 KEY_NOT_ATTESTED) > n0)) && break 2; sleep 0.2; done
done
check "programmer anchored to a CM key: the cloud refuses it (KEY_NOT_ATTESTED, audit row)" \
    test "$(refusals site-1 KEY_NOT_ATTESTED)" -gt "$n0"
check "... and says why" grep -q "anchor pinned in the programmer's KeyStore is not this OEM's" \
    "$DIR/logs/cloud.log"
check "... and does not enroll it" test "$(sqlite3 "$LEDGER" \
    "select count(*) from programmers where programmer_id='prog-10'")" -eq 0

# A revoked site: its bridge is disconnected and cannot come back.
before=$(snapshot)
echo site-1 >>"$DIR/broker/revoked"
kicked=no
for _ in $(seq 50); do
    grep -q "identity site-1 revoked: disconnecting it" "$DIR/broker/mosquitto.log" && kicked=yes && break
    sleep 0.1
done
check "revoked site: its bridge is disconnected" test "$kicked" == yes
got=$("$H" connect "$DIR" "$CM1" 2>>"$TMP/hostile.err" | tail -n 1)
check "revoked site reconnecting: refused ($got)" test "$got" != OK
refused=no
for _ in $(seq 100); do # the site broker's own bridge retries within restart_timeout
    grep -qE "refused connection from .*: identity revoked; .* CN 'site-1'" "$DIR/broker/mosquitto.log" && refused=yes && break
    sleep 0.1
done
check "revoked site reconnecting: cloud broker log row" test "$refused" == yes
check "revoked site: no state change" test "$before" == "$(snapshot)"
# A site's station certificate (CN the site's name, OU station) is for its
# own broker; at the cloud broker, where it could read every site's events,
# only the site's bridge certificate is (the cloud pins it: broker/serials).
check "the cloud pins each site's bridge certificate" grep -qE '^site-2 [0-9a-f]+$' \
    "$DIR/broker/serials"
got=$("$H" station "$DIR" "$CM2" 2>>"$TMP/hostile.err" | tail -n 1)
check "a site's station certificate at the cloud broker: refused ($got)" test "$got" != OK
check "... cloud broker log row" bash -c "for _ in \$(seq 50); do grep -qE \"refused connection \
from .*: the identity is a site's: .* CN 'site-2' OU 'station'\" '$DIR/broker/mosquitto.log' && exit 0
    sleep 0.1; done; exit 1"
got=$("$H" connect "$DIR" "$CM2" 2>>"$TMP/hostile.err" | tail -n 1)
check "the other site still connects" test "$got" == OK

# ---- 3. the CM state dirs hold nothing of the OEM's secrets -----------------------------------
cm_audit() {
    python3 - "$DIR" "$CM1" "$CM2" <<'PY'
import os, sys
oem, cms = sys.argv[1], sys.argv[2:]
def files(root):
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                yield p
def read(p):
    with open(p, 'rb') as f:
        return f.read()
secrets = []  # (what, bytes that must not appear)
for p in files(os.path.join(oem, 'hsm')):
    b = read(p)
    if p.endswith('.object') and len(b) >= 64:  # SoftHSM2 token objects (CA, signing keys)
        for off in range(0, len(b) - 32, max(32, len(b) // 8)):
            secrets.append(('token object ' + p, b[off:off + 32]))
    elif os.path.basename(p) in ('pin', 'so-pin'):
        secrets.append(('PIN ' + p, b.strip()))
for p in files(os.path.join(oem, 'pki')):
    if p.endswith('.key'):  # the OEM's TLS keys (broker, cloud, oem, monitor, station)
        body = b''.join(l for l in read(p).splitlines() if not l.startswith(b'-----'))
        secrets.append(('OEM private key ' + p, body[:48]))
led = read(os.path.join(oem, 'cloud', 'ledger.db'))
secrets.append(('ledger schema', b'CREATE TABLE audit_events'))
bad, n = 0, 0
for cm in cms:
    names = {os.path.relpath(p, cm) for p in files(cm)}
    for forbidden in ('hsm', 'cloud'):
        if os.path.exists(os.path.join(cm, forbidden)):
            print('CM has', forbidden); bad += 1
    for p in files(cm):
        b = read(p); n += 1
        for what, s in secrets:
            if s and s in b:
                print('FOUND', what, 'in', p); bad += 1
print('searched', n, 'CM files for', len(secrets), 'OEM secrets:', 'clean' if not bad else 'DIRTY')
sys.exit(1 if bad else 0)
PY
}
check "CM state dirs: no OEM token object, PIN, private key or ledger" cm_audit

echo "sites: $passed passed, $failed failed"
((failed == 0))
