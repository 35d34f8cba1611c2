#!/usr/bin/env bash
# The prepared GPU session (run scripts/gpu/prepare.sh here first, then carry .whl):
#   scripts/gpu/session.sh                 on the GPU machine: installs .whl into /tmp/site,
#                                          prints the device, runs scripts/gpu/session.py
#   scripts/gpu/session.sh --cpu-dry-run   here: every step with tiny sizes on the CPU
# Each step's JSON goes to $OUT (default /tmp/gpu-session) as soon as it ends.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--cpu-dry-run" ]; then
    shift
    PYTHON="${PYTHON:-python3}"
    export JAX_PLATFORMS=cpu
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m scripts.gpu.session --dry-run --out "$OUT" "$@"
fi
[ -d .whl ] || { echo "session: no .whl here: run scripts/gpu/prepare.sh and carry .whl" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
cp -r .whl/site/. /tmp/site/
export PYTHONPATH="/tmp/site:$ROOT" JAXATARI_CARRIED_SOURCE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
exec python3 -m scripts.gpu.session --out "$OUT" "$@"
