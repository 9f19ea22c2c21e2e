#!/bin/bash
# One per GPU (started by torchrun from node.sh): the trainer with a Triton cache of its own.
export TRITON_CACHE_DIR="${TRITON_CACHE_ROOT:-${TMPDIR:-/tmp}/triton}/rank${RANK:?}"
exec "$PYTHON" -m hope_mega.train "$@"
