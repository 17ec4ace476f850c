#!/bin/sh
# Start one tadlora daemon in a container: pick its data shard, listen on the container's address,
# write results under $TADLORA_OUT_ROOT/peer-NN. Extra arguments go to `tadlora run`.
#
# TADLORA_PEER_INDEX: the shard (0 .. TADLORA_PEERS-1). Unset (scaled replicas, one service for all
# peers): the container claims the lowest free index with an atomic mkdir under
# $TADLORA_OUT_ROOT/.claims, and gets the same one back when it restarts (it records its hostname).
set -eu
ROOT=${TADLORA_OUT_ROOT:-/results}
PEERS=${TADLORA_PEERS:-4}
HOST_ID=${TADLORA_HOST_ID:-$(hostname)}   # a container keeps its hostname across restarts

claim_index() {
    mkdir -p "$ROOT/.claims"
    for index in $(seq 0 $((PEERS - 1))); do
        if [ "$(cat "$ROOT/.claims/$index/owner" 2>/dev/null)" = "$HOST_ID" ]; then echo "$index"; return; fi
    done
    for index in $(seq 0 $((PEERS - 1))); do
        if mkdir "$ROOT/.claims/$index" 2>/dev/null; then
            echo "$HOST_ID" > "$ROOT/.claims/$index/owner"
            echo "$index"
            return
        fi
    done
    echo "tadlora-peer: all $PEERS peer indexes under $ROOT/.claims are taken; raise TADLORA_PEERS" >&2
    exit 2
}

if [ -z "${TADLORA_PEER_INDEX:-}" ]; then
    TADLORA_PEER_INDEX=$(claim_index)
    export TADLORA_PEER_INDEX
fi
# mutual TLS when the run's certificates are mounted (compose-testbed.sh makes them): peer-NN's own
NAME=peer-$(printf %02d "$TADLORA_PEER_INDEX")
CERTS=${TADLORA_CERTS_DIR:-/certs}
if [ -z "${TADLORA_TLS_CA:-}" ] && [ -f "$CERTS/ca.pem" ]; then
    export TADLORA_TLS_CA="$CERTS/ca.pem" TADLORA_TLS_CERT="$CERTS/$NAME.pem" TADLORA_TLS_KEY="$CERTS/$NAME.key"
fi
# the address other containers reach us on (compose puts it in /etc/hosts); mDNS announces it
ADDRESS=${TADLORA_ADDRESS:-$(python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')}
export TADLORA_LISTEN=${TADLORA_LISTEN:-$ADDRESS:7070}
export TADLORA_OUT=${TADLORA_OUT:-$ROOT/$NAME}
echo "tadlora-peer: peer index $TADLORA_PEER_INDEX, listening on $TADLORA_LISTEN, results in $TADLORA_OUT," \
     "TLS ${TADLORA_TLS_CERT:-off}"
exec tadlora run "$@"
