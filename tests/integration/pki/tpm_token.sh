#!/usr/bin/env bash
# A TPM 2.0 token as an HSM administrator would set one up, private to one
# test: swtpm (TCP, free ports) + a private D-Bus session bus + tpm2-abrmd on
# it, then a tpm2-pkcs11 store and token made with tpm2_ptool. Sourced.
#
#   tpm_token_up DIR LABEL SO_PIN USER_PIN   start everything under DIR; sets
#       TPM_MODULE, TPM_STORE, TPM_TCTI and exports DBUS_SESSION_BUS_ADDRESS
#   tpm_token_down DIR                      stop what tpm_token_up started
# (FIELD-NOTES: swtpm alone runs out of object slots after two keys, hence
# the resource manager.)

TPM_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
[[ -e $TPM_MODULE ]] || TPM_MODULE=$(dpkg -L libtpm2-pkcs11-1 2>/dev/null | grep -m1 'pkcs11/libtpm2_pkcs11.so$')

# A free port P with P+1 free too: the swtpm TCTI finds the control port at P+1.
tpm__free_port() {
    python3 -c '
import socket
for _ in range(50):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError:
        pass
    finally:
        a.close(); b.close()
'
}

tpm__wait() { # tpm__wait SECONDS COMMAND...
    local n=$(($1 * 10))
    shift
    while ((n-- > 0)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

tpm_token_up() {
    local dir=$1 label=$2 so_pin=$3 user_pin=$4 port ctrl
    mkdir -p "$dir/tpmstate" "$dir/store"
    port=$(tpm__free_port) && [[ -n $port ]] || return 1
    ctrl=$((port + 1))
    swtpm socket --tpm2 --tpmstate dir="$dir/tpmstate" --flags not-need-init,startup-clear \
        --server type=tcp,port="$port",bindaddr=127.0.0.1 \
        --ctrl type=tcp,port="$ctrl",bindaddr=127.0.0.1 \
        --pid file="$dir/swtpm.pid" --log file="$dir/swtpm.log" --daemon || return 1
    dbus-daemon --config-file=/usr/share/dbus-1/session.conf --address="unix:path=$dir/bus" \
        --fork --print-pid >"$dir/dbus.pid" || return 1
    export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/bus"
    tpm2-abrmd --session --allow-root --tcti="swtpm:host=127.0.0.1,port=$port" \
        >"$dir/abrmd.log" 2>&1 &
    echo $! >"$dir/abrmd.pid"
    TPM_TCTI=tabrmd:bus_type=session TPM_STORE=$dir/store
    export TPM2TOOLS_TCTI=$TPM_TCTI
    tpm__wait 10 tpm2_getrandom 4 || { echo "tpm: abrmd did not come up" >&2; return 1; }
    TPM2_PKCS11_TCTI=$TPM_TCTI tpm2_ptool init --path "$TPM_STORE" >/dev/null || return 1
    TPM2_PKCS11_TCTI=$TPM_TCTI tpm2_ptool addtoken --pid 1 --label "$label" --sopin "$so_pin" \
        --userpin "$user_pin" --path "$TPM_STORE" >/dev/null || return 1
}

tpm_token_down() {
    local dir=$1 f pid
    for f in abrmd dbus swtpm; do
        [[ -s $dir/$f.pid ]] || continue
        pid=$(head -n1 "$dir/$f.pid")
        [[ $pid =~ ^[0-9]+$ ]] && kill "$pid" 2>/dev/null
    done
    return 0
}
