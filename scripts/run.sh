#!/usr/bin/env bash
# Train a preset:  scripts/run.sh <preset> [game] [--option value ...]
# Later options override the preset, as in the original's run.sh. Examples:
#   scripts/run.sh demo
#   scripts/run.sh demo --seeds 8 --steps 256000
#   scripts/run.sh nature SpaceInvaders --steps 100000
# Other commands pass through:  scripts/run.sh resume RUN_DIR, scripts/run.sh eval RUN_DIR, ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
if [ $# -eq 0 ]; then
    exec "$VENV/bin/python" -m jaxatari presets
fi
case "$1" in
    -h|--help|presets|resume|eval|random|export|plot) exec "$VENV/bin/python" -m jaxatari "$@" ;;
esac
exec "$VENV/bin/python" -m jaxatari train "$@"
