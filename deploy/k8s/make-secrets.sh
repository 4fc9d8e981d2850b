#!/usr/bin/env bash
# Print the Kubernetes Secrets (and the enrolled-keys ConfigMap) that deploy/k8s/*.yaml mount,
# made from `helixfed certs` output, for `kubectl apply -f -`. Nothing is written to disk, so no
# key lands in the repository. kubectl builds the objects offline (--dry-run=client).
#
#   make-secrets.sh server CERTS_DIR
#       Secret helixfed-server-tls (ca.crt, server.crt, server.key) and ConfigMap
#       helixfed-enrolled-keys (every CERTS_DIR/institutions/<name>.pub), for the server.
#   make-secrets.sh institution NAME CA_CRT PRIVATE_KEY
#       Secret helixfed-institution-NAME (ca.crt, NAME), for that institution's agent.
#
# The namespace is helixfed unless NAMESPACE is set.
set -euo pipefail

namespace="${NAMESPACE:-helixfed}"

usage() {
    sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

require_file() {
    if [[ ! -f "$1" ]]; then
        echo "make-secrets.sh: $1: no such file (create it with helixfed certs)" >&2
        exit 1
    fi
}

server_objects() {
    local certs="$1"
    local name
    for name in ca.crt server.crt server.key; do
        require_file "$certs/$name"
    done
    kubectl create secret generic helixfed-server-tls --namespace "$namespace" \
        --from-file="ca.crt=$certs/ca.crt" --from-file="server.crt=$certs/server.crt" \
        --from-file="server.key=$certs/server.key" --dry-run=client -o yaml
    local keys=()
    local pub
    for pub in "$certs"/institutions/*.pub; do
        [[ -f "$pub" ]] && keys+=("--from-file=$(basename "$pub")=$pub")
    done
    if [[ ${#keys[@]} -eq 0 ]]; then
        echo "make-secrets.sh: no public keys in $certs/institutions/ (helixfed certs --institutions ...)" >&2
        exit 1
    fi
    echo "---"
    kubectl create configmap helixfed-enrolled-keys --namespace "$namespace" "${keys[@]}" \
        --dry-run=client -o yaml
}

institution_objects() {
    local name="$1" ca="$2" key="$3"
    if [[ ! "$name" =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]]; then
        echo "make-secrets.sh: $name is not a valid institution name" >&2
        exit 1
    fi
    require_file "$ca"
    require_file "$key"
    kubectl create secret generic "helixfed-institution-$name" --namespace "$namespace" \
        --from-file="ca.crt=$ca" --from-file="$name=$key" --dry-run=client -o yaml
}

case "${1:-}" in
    server)
        [[ $# -eq 2 ]] || usage
        server_objects "$2"
        ;;
    institution)
        [[ $# -eq 4 ]] || usage
        institution_objects "$2" "$3" "$4"
        ;;
    *)
        usage
        ;;
esac
