#!/usr/bin/env bash
# Replace the controller replica of StatefulSet pod palisade-controller-ORDINAL, whose volume
# was lost (its replica is refused: "already took part in group …"), by a replica under a new
# id in the same pod. A replica never comes back under an id it used: its old votes and log
# are gone, and voting again under that id could lose acknowledged writes. So, in order:
#
#   1. palisadectl replicas replace OLD NEW=palisade-controller-ORDINAL.palisade-controller-peers:7443
#      (removes OLD from the group for good, adds NEW as a learner);
#   2. the pod's certificate names replica NEW: with --certs DIR, minted by
#      `palisadectl certs` (the CA in DIR is reused) into Secret palisade-replica-(ORDINAL+1);
#      with --cert-manager, Certificate palisade-replica-(ORDINAL+1) is changed to name it and
#      reissued;
#   3. ConfigMap palisade-controller-ids maps the pod to NEW (the controller reads
#      --id-file=/etc/palisade/ids/POD_NAME; without an entry a pod's id is ORDINAL+1);
#   4. the pod's PersistentVolumeClaim and the pod are deleted: the StatefulSet makes both
#      again, and the new replica starts on a blank volume, takes the group's identity from a
#      member that counts it as a learner, catches up, and is promoted to voter.
#
#   deploy/replace-replica.sh ORDINAL NEW_ID --certs DIR [--dry-run]
#   deploy/replace-replica.sh ORDINAL NEW_ID --cert-manager [--dry-run]
#
# palisadectl must reach the group as an operator (its context file, or PALISADE_CONTROLLER,
# PALISADE_CA, PALISADE_OPERATOR_CERT, PALISADE_OPERATOR_KEY; through `kubectl port-forward`
# for example, see deploy/README.md). --dry-run prints the commands instead of running them.
# Run it again after a failure in steps 1-2: a removal or addition already done is not an
# error the second time. Once step 3 is done, it refuses (and says how to finish by hand), so
# it never deletes the volume of the replica that runs there now.
set -euo pipefail

ns=palisade-system
peers=palisade-controller-peers

usage() {
    echo "usage: $0 ORDINAL NEW_ID (--certs DIR | --cert-manager) [--dry-run]" >&2
    exit 2
}
fail() {
    echo "replace-replica: $*" >&2
    exit 1
}

[ $# -ge 3 ] || usage
ordinal=$1
new=$2
shift 2
certs=""
cert_manager=false
dry=false
while [ $# -gt 0 ]; do
    case "$1" in
    --certs)
        [ $# -ge 2 ] || usage
        certs=$2
        shift 2
        ;;
    --cert-manager)
        cert_manager=true
        shift
        ;;
    --dry-run)
        dry=true
        shift
        ;;
    *) usage ;;
    esac
done
[[ "$ordinal" =~ ^[0-9]+$ ]] || fail "ORDINAL '$ordinal' is not a pod ordinal (0, 1, 2, ...)"
[[ "$new" =~ ^[1-9][0-9]*$ ]] || fail "NEW_ID '$new' is not a replica id (a number from 1)"
if [ -n "$certs" ] && $cert_manager; then fail "give --certs DIR or --cert-manager, not both"; fi
if [ -z "$certs" ] && ! $cert_manager; then fail "give --certs DIR (palisadectl certs) or --cert-manager"; fi
if [ -n "$certs" ] && [ ! -f "$certs/ca-key.pem" ]; then
    fail "$certs/ca-key.pem is missing: the new certificate must be signed by the CA the others trust"
fi

run() {
    if $dry; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}

pod=palisade-controller-$ordinal
slot=$((ordinal + 1))
address=$pod.$peers:7443

# The pod's id now: the ConfigMap's entry, else ordinal + 1. Any failure to read it stops
# here: guessing could remove the wrong replica and delete a live replica's volume.
old=""
if $dry; then
    echo "replace-replica: (dry run: the pod's id is read from ConfigMap palisade-controller-ids; assumed $slot here)" >&2
else
    command -v kubectl >/dev/null 2>&1 || fail "kubectl not found"
    command -v palisadectl >/dev/null 2>&1 || fail "palisadectl not found"
    if ! old=$(kubectl -n "$ns" get configmap palisade-controller-ids -o "jsonpath={.data.$pod}" 2>&1); then
        fail "cannot read ConfigMap palisade-controller-ids in $ns ($old): apply deploy/ (its base holds it) and check kubectl's context"
    fi
fi
old=${old:-$slot}
if [ "$old" = "$new" ]; then
    fail "ConfigMap palisade-controller-ids maps pod $pod to replica $new already: the replacement was done (or ran up to its last step). If pod $pod still runs on its old volume, finish by hand: kubectl -n $ns delete pvc state-$pod --wait=false; kubectl -n $ns delete pod $pod"
fi
echo "replace-replica: pod $pod: replica $old -> replica $new ($address)" >&2

# 1. The group's membership (refused by the group if NEW was ever used).
run palisadectl replicas replace "$old" "$new=$address"

# 2. The pod's certificate names replica NEW.
if $cert_manager; then
    run kubectl -n "$ns" patch certificate "palisade-replica-$slot" --type=json \
        -p "[{\"op\":\"replace\",\"path\":\"/spec/uris\",\"value\":[\"palisade://controller\",\"palisade://replica/$new\"]}]"
    run kubectl -n "$ns" wait --for=condition=Ready "certificate/palisade-replica-$slot" --timeout=5m
else
    hosts=()
    for h in palisade-controller-0 palisade-controller-1 palisade-controller-2; do
        hosts+=(--host "$h.$peers")
    done
    run palisadectl certs --dir "$certs" --replica "$new" "${hosts[@]}" \
        --host palisade-controller --host localhost --host 127.0.0.1
    if $dry; then
        echo "kubectl create secret generic palisade-replica-$slot ... --dry-run=client -o yaml | kubectl apply -f -"
    else
        kubectl create secret generic "palisade-replica-$slot" --namespace "$ns" \
            --from-file=tls.crt="$certs/replica-$new.pem" \
            --from-file=tls.key="$certs/replica-$new-key.pem" \
            --from-file=ca.crt="$certs/ca.pem" \
            --dry-run=client -o yaml | kubectl apply -f -
    fi
fi

# 3. The pod's id.
run kubectl -n "$ns" patch configmap palisade-controller-ids --type=merge \
    -p "{\"data\":{\"$pod\":\"$new\"}}"

# 4. A blank volume and a new pod. The claim is deleted once no pod uses it: the pod goes,
# and if the StatefulSet made it again before the claim was gone (it would wait for that
# claim for ever), it goes once more.
run kubectl -n "$ns" delete pvc "state-$pod" --wait=false
run kubectl -n "$ns" delete pod "$pod" --wait=true
run kubectl -n "$ns" wait --for=delete "pvc/state-$pod" --timeout=5m
run kubectl -n "$ns" delete pod "$pod" --ignore-not-found
echo "replace-replica: done; watch replica $new join as a learner and become a voter: palisadectl replicas" >&2
