#!/usr/bin/env bash
# Test PKI for the broker integration test, made with the openssl CLI.
#   make_pki.sh DIR
# Mirrors the NuSEC hierarchy (Root -> Fleet CA -> broker and client certs,
# Root -> Device CA) plus a foreign CA and deliberately bad certificates.
# All keys EC P-256. Writes into DIR:
#   ca-chain.pem            Fleet CA + Root (broker cafile, clients' trust)
#   fleet-ca.pem            Fleet CA alone (plugin_opt_issuer_file)
#   crl.pem                 Fleet CA CRL (revokes crlrev) + Device CA CRL (empty)
#   server.pem/.key         broker, SAN IP:127.0.0.1 DNS:localhost
#   NAME.pem/.key           clients, see the list at the bottom
#   rogue.pem               rogue leaf + Device CA (a chain the TLS layer accepts)
set -euo pipefail
DIR=${1:?usage: make_pki.sh DIR}
mkdir -p "$DIR"
cd "$DIR"
umask 077

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"; }

# ca NAME SUBJECT [ISSUER]: self-signed when no issuer.
ca() {
    local name=$1 subj=$2 issuer=${3:-}
    key "$name"
    mkdir -p "$name.db"
    : >"$name.db/index.txt"
    printf '[ext]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n' >"$name.ext"
    if [[ -z $issuer ]]; then
        openssl req -x509 -new -key "$name.key" -subj "$subj" -days 2 -out "$name.pem" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    else
        openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
        openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial \
            -days 2 -extfile "$name.ext" -extensions ext -out "$name.pem" 2>/dev/null
    fi
    # Minimal `openssl ca` configuration, used only to write CRLs.
    cat >"$name.cnf" <<EOF
[ca]
default_ca = this
[this]
database = $DIR/$name.db/index.txt
certificate = $DIR/$name.pem
private_key = $DIR/$name.key
default_md = sha256
default_crl_days = 2
crlnumber = $DIR/$name.db/crlnumber
EOF
    echo 01 >"$name.db/crlnumber"
}

# leaf NAME SUBJECT ISSUER EXTENSIONS
leaf() {
    local name=$1 subj=$2 issuer=$3 ext=$4
    key "$name"
    openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    printf '%b' "$ext" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial \
        -days 2 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
}

CLIENT='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
SERVER='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n'

ca root "/O=NuSEC test/CN=NuSEC Root CA"
ca fleet "/O=NuSEC test/CN=NuSEC Fleet CA" root
ca device "/O=NuSEC test/CN=NuSEC Device CA" root
ca foreign "/O=Elsewhere/CN=Foreign CA"
cat fleet.pem root.pem >ca-chain.pem
cp fleet.pem fleet-ca.pem

leaf server "/O=NuSEC test/CN=localhost" fleet "$SERVER"

# Good clients: NAME ROLE
for pair in cloud1:cloud progA:programmer progB:programmer st1:station mon1:monitor \
    oem1:oem revokeme:monitor crlrev:monitor; do
    leaf "${pair%%:*}" "/O=NuSEC test/OU=${pair##*:}/CN=${pair%%:*}" fleet "$CLIENT"
done
# Bad clients, all issued by the Fleet CA so that only the plugin can refuse them.
leaf noou "/O=NuSEC test/CN=noou" fleet "$CLIENT"
leaf twoou "/O=NuSEC test/OU=cloud/OU=monitor/CN=twoou" fleet "$CLIENT"
leaf badou "/O=NuSEC test/OU=admin/CN=badou" fleet "$CLIENT"
leaf badcn "/O=NuSEC test/OU=monitor/CN=bad cn" fleet "$CLIENT"
leaf twocn "/O=NuSEC test/OU=monitor/CN=mon1/CN=cloud1" fleet "$CLIENT"
# Valid for TLS (Root -> Device CA -> leaf) but not issued by the Fleet CA.
leaf roguekey "/O=NuSEC test/OU=cloud/CN=cloud2" device "$CLIENT"
cat roguekey.pem device.pem >rogue.pem
cp roguekey.key rogue.key
# Another CA entirely.
leaf foreign1 "/O=NuSEC test/OU=cloud/CN=cloud1" foreign "$CLIENT"

# CRLs: the Fleet CA revokes crlrev. Mosquitto checks the leaf's issuer CRL
# only, so the Device CA needs one too (empty) for the rogue chain to reach
# the plugin.
openssl ca -config fleet.cnf -revoke crlrev.pem 2>/dev/null
openssl ca -config fleet.cnf -gencrl -out fleet.crl 2>/dev/null
openssl ca -config device.cnf -gencrl -out device.crl 2>/dev/null
cat fleet.crl device.crl >crl.pem
chmod 0644 ./*.pem
