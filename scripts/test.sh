#!/usr/bin/env bash
# Run the whole test suite (bootstraps .venv first):  scripts/test.sh [pytest arguments]
# Tests run in parallel on one pytest-xdist worker per CPU core, at most 4
# (JAXATARI_TEST_WORKERS=N to choose, 0 for one process; a given -n wins).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
CORES="$(nproc 2>/dev/null || echo 1)"
WORKERS="${JAXATARI_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}"
PARALLEL=()
if [ "$WORKERS" -gt 1 ] && [[ " $* " != *" -n "* ]] && [[ " $* " != *" -p no:xdist "* ]]; then
    PARALLEL=(-n "$WORKERS" --dist loadgroup)
fi
exec "$VENV/bin/python" -m pytest -q "${PARALLEL[@]}" "$@"
