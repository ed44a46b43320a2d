#!/usr/bin/env bash
# Print the Namespace and the Secrets Palisade's manifests expect, made from the files
# `palisadectl certs` wrote into DIR, as YAML for `kubectl apply -f -`. Needs kubectl only
# (its client side: nothing is sent to a cluster). Run it again after adding nodes.
#
#   deploy/certs-to-secrets.sh DIR | kubectl apply -f -                  # deploy/overlays/secrets
#   deploy/certs-to-secrets.sh --cert-manager DIR | kubectl apply -f -   # deploy/overlays/cert-manager
#
# Secrets (namespace palisade-system):
#   palisade-replica-1..3   tls.crt, tls.key, ca.crt        from replica-N.pem, replica-N-key.pem, ca.pem
#                           (not with --cert-manager: cert-manager issues them)
#   palisade-ca             kubernetes.io/tls from ca.pem and ca-key.pem (only with --cert-manager:
#                           the CA its Issuer signs with)
#   palisade-agent-certs    ca.crt, and node-NAME.pem and node-NAME-key.pem for every node in DIR
set -euo pipefail

usage() {
    echo "usage: $0 [--cert-manager] DIR   (DIR: the --dir of palisadectl certs)" >&2
    exit 2
}

cert_manager=false
case "${1:-}" in
--cert-manager)
    cert_manager=true
    shift
    ;;
-h | --help) usage ;;
esac
[ $# -eq 1 ] || usage
dir=$1
here=$(cd "$(dirname "$0")" && pwd)
ns=palisade-system

fail() {
    echo "certs-to-secrets: $*" >&2
    exit 1
}
need() {
    for f in "$@"; do
        [ -f "$dir/$f" ] || fail "$dir/$f is missing (made by: palisadectl certs --dir $dir ...; see deploy/README.md)"
    done
}
command -v kubectl >/dev/null 2>&1 || fail "kubectl not found"

need ca.pem
secret() {
    echo "---"
    kubectl create secret "$@" --namespace "$ns" --dry-run=client -o yaml
}

# The same Namespace as deploy/base, so the Secrets can be created before the rest.
cat "$here/base/namespace.yaml"

if $cert_manager; then
    need ca-key.pem
    secret tls palisade-ca --cert "$dir/ca.pem" --key "$dir/ca-key.pem"
else
    for n in 1 2 3; do
        need "replica-$n.pem" "replica-$n-key.pem"
        secret generic "palisade-replica-$n" \
            --from-file=tls.crt="$dir/replica-$n.pem" \
            --from-file=tls.key="$dir/replica-$n-key.pem" \
            --from-file=ca.crt="$dir/ca.pem"
    done
fi

# Every node's certificate and key, under the file names the agent DaemonSet reads
# (node-$(NODE_NAME).pem, node-$(NODE_NAME)-key.pem).
files=()
declare -A seen=()
bytes=$(wc -c <"$dir/ca.pem")
shopt -s nullglob
for key in "$dir"/node-*-key.pem; do
    cert="${key%-key.pem}.pem"
    [ -f "$cert" ] || continue
    for f in "$cert" "$key"; do
        [ -z "${seen[$f]:-}" ] || continue
        seen[$f]=1
        files+=("--from-file=$f")
        bytes=$((bytes + $(wc -c <"$f")))
    done
done
[ ${#files[@]} -gt 0 ] || fail "no node certificates in $dir (palisadectl certs --dir $dir --node NAME ...)"
# A Secret holds at most 1 MiB: about a thousand nodes.
[ "$bytes" -le 1000000 ] ||
    fail "the node certificates and keys in $dir add up to $bytes bytes: more than one Secret holds (1 MiB)"
secret generic palisade-agent-certs --from-file=ca.crt="$dir/ca.pem" "${files[@]}"
