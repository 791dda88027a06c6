# Sourced by the shell tests that run a local stack (tests/integration/ops,
# programmer, pki, sites): a throwaway state directory whose stack is always taken
# down, named checks, and `nusec` bound to that directory.
# Needs BIN set; sets TMP, DIR (not created), passed, failed; NAME is the
# temp folder's prefix. A test with more to stop defines cleanup_more()
# (called after `stack down`, before TMP goes; NUSEC_KEEP_TMP keeps TMP).
# usage: . tests/lib/stack_lib.sh NAME
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nusec-$1-XXXXXX")
DIR=$TMP/state
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
nusec() { "$BIN/nusec" "$@" --dir "$DIR"; }
cleanup() {
    "$BIN/nusec" stack down --dir "$DIR" >/dev/null 2>&1
    if declare -F cleanup_more >/dev/null; then cleanup_more; fi
    [[ -n "${NUSEC_KEEP_TMP:-}" ]] || rm -rf "$TMP"
}
trap cleanup EXIT

# Certificates of job $JOB in the ledger (SQLite, DIR/cloud/ledger.db);
# wait_certs N SECONDS waits until there are at least N.
certs() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" \
    "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB'" 2>/dev/null; }
wait_certs() { # wait_certs N SECONDS
    for _ in $(seq $(($2 * 10))); do
        [[ $(certs) -ge $1 ]] && return 0
        sleep 0.1
    done
    return 1
}
# stack_job QUOTA [JOB-CREATE-OPTION...]: a 64 KiB image signed as app-1.0.0,
# a job for prog-1 and prog-2 (expires in 1 h) and its packages imported at
# this stack's station; sets JOB. Exits the test on any failure.
stack_job() {
    local quota=$1
    shift
    head -c 65536 /dev/urandom >"$TMP/app.bin"
    nusec firmware sign --in "$TMP/app.bin" --name app --version 1.0.0 >"$TMP/sign.log" 2>&1 ||
        { cat "$TMP/sign.log"; echo "FAIL firmware sign"; exit 1; }
    JOB=$(nusec job create --firmware app-1.0.0 --quota "$quota" --programmer prog-1 \
        --programmer prog-2 --expires 1h "$@" --out "$TMP/pk" 2>"$TMP/create.err" |
        tail -n 1 | cut -d' ' -f1)
    [[ $JOB == job-* ]] || { cat "$TMP/create.err"; echo "FAIL job create"; exit 1; }
    nusec package import "$TMP"/pk/*.nspkg >/dev/null || { echo "FAIL package import"; exit 1; }
}

# ---- the outcome of a line that ran to its quota through faults ----------------
# SITE is the folder of the line's station, targets and logs: $DIR, or a CM
# site's folder. The ledger is this stack's (DIR/cloud/ledger.db).
stack__ledger() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
stack__journal() { sqlite3 -cmd '.timeout 5000' "$1/station/station.db" "$2" 2>/dev/null; }

# stack_first_after MS: the first time (ms) after MS the ledger issued a
# certificate of $JOB or recorded a chip's report; empty if none. A cloud that
# worked off its backlog during an outage may have nothing left to issue
# after it: the reports of the chips it answered are the line moving on.
stack_first_after() {
    stack__ledger "SELECT MIN(t) FROM (SELECT issued_at_ms AS t FROM certificates
        WHERE job_id='$JOB' AND issued_at_ms > $1 UNION ALL SELECT state_at_ms FROM certificates
        WHERE job_id='$JOB' AND state_at_ms > $1)"
}

# stack_check_outcome SITE: certificates = quota, no UID twice, every
# certificate reported provisioned and recorded once, each device.provisioned
# once in the station's journal, every locked chip's certificate in the
# ledger, no chip half done. Sets issued (the certificates of $JOB).
stack_check_outcome() {
    local site=$1 s t lost=0 locked=0 prov_rows prov_certs journal_prov dup_journal states half
    local -A known=()
    issued=$(certs)
    check "certificates = quota ($issued of $QUOTA)" test "$issued" -eq "$QUOTA"
    check "no duplicate UID" test "$(stack__ledger \
        "SELECT COUNT(DISTINCT device_uid) FROM certificates WHERE job_id='$JOB'")" -eq "$issued"
    prov_rows=$(stack__ledger "SELECT COUNT(*) FROM audit_events WHERE job_id='$JOB' AND kind='cert.provisioned'")
    prov_certs=$(stack__ledger "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND state='provisioned'")
    check "every certificate reported provisioned ($prov_certs of $issued)" test "$prov_certs" -eq "$issued"
    check "each report recorded once in the ledger ($prov_rows audit rows)" test "$prov_rows" -eq "$prov_certs"
    journal_prov=$(stack__journal "$site" "SELECT COUNT(DISTINCT device_uid) FROM journal WHERE kind='device.provisioned' AND job_id='$JOB'")
    dup_journal=$(stack__journal "$site" "SELECT COUNT(*) FROM (SELECT device_uid FROM journal WHERE kind='device.provisioned' AND job_id='$JOB' GROUP BY device_uid HAVING COUNT(*) > 1)")
    check "each device.provisioned once in the station's journal ($journal_prov devices)" \
        test "$dup_journal" -eq 0 -a "$journal_prov" -eq "$prov_certs"
    while read -r s; do known[${s^^}]=1; done < <(stack__ledger "SELECT serial FROM certificates WHERE job_id='$JOB'")
    for t in "$site"/targets/*/; do
        grep -q '^state=locked$' "$t/state" 2>/dev/null || continue
        locked=$((locked + 1))
        s=$(openssl x509 -in "$t/cert.pem" -noout -serial 2>/dev/null | sed 's/^serial=//')
        [[ -n "$s" && -n "${known[${s^^}]:-}" ]] || lost=$((lost + 1))
    done
    check "every locked chip's certificate in the ledger ($locked locked)" test "$lost" -eq 0
    check "locked chips = provisioned certificates" test "$locked" -eq "$prov_certs"
    states=$(grep -h '^state=' "$site"/targets/*/state | sed 's/^state=//' | sort | uniq -c | tr '\n' ' ')
    half=$(grep -h '^state=' "$site"/targets/*/state | grep -vc '^state=\(locked\|blank\)$')
    check "no chip half done (burned) (chips: $states)" test "$half" -eq 0
}

# stack_check_units SITE WHAT: the KeyStore counters the programmers logged
# (SITE/logs/prog-*.log, the last "counter N of" each) against $issued;
# prints the figures; no unit wasted by WHAT.
stack_check_units() {
    local site=$1 what=$2 counters
    counters=$(for f in "$site"/logs/prog-*.log; do
        grep -o 'counter [0-9]* of' "$f" | tail -n 1 | cut -d' ' -f2; done | paste -sd+ | bc)
    echo "devices $DEVICES"
    echo "quota $QUOTA"
    echo "certificates $issued"
    echo "keystore_units_counted $counters"
    if [[ $counters =~ ^[0-9]+$ ]]; then
        echo "units_wasted $((counters - issued))"
        check "no unit wasted by $what ($((counters - issued)))" test $((counters - issued)) -eq 0
    else
        check "KeyStore counters readable from the programmers' logs" false
    fi
}
