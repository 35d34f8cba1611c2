#!/usr/bin/env bash
# Which JAX versions jaxatari works with: one throwaway venv per JAX version, the package
# installed into it with constraints.txt's other pins, then the fast tests; and whether the
# CUDA extras resolve (pip install --dry-run). Writes results/compat.{json,md}.
#
#   scripts/compat.sh 0.10.0 0.10.2 0.11.2 0.12.0.1
#   scripts/compat.sh --tests "tests/test_losses.py -q" 0.10.0       # a quicker selection
#
# Each version is tried with Python 3.11, 3.12 and 3.13 (on PATH or built by pyenv), the
# oldest that can install it (JAX 0.11 and later need Python 3.12); a version no interpreter
# here can install is recorded as such, not as a failure of the package. The extras are
# resolved with each interpreter, and from wheels alone for a Python that has none here.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TESTS='-m "not slow" -q -p no:cacheprovider'
OUTPUT="$ROOT/results/compat"
while [ $# -gt 0 ]; do
    case "$1" in
        --tests) TESTS="$2"; shift 2 ;;
        --output) OUTPUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: scripts/compat.sh [--tests ARGS] [--output PREFIX] VERSION..." >&2; exit 2; }
WORK="$(mktemp -d /tmp/jaxatari-compat.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
RECORDS="$WORK/records.jsonl"
: > "$RECORDS"
# python3.X on PATH, else pyenv's own build of it (its shims on PATH answer to every name
# but run only the versions selected with `pyenv global`): ask each candidate to run
INTERPRETERS=()
MISSING=()
for minor in 3.11 3.12 3.13; do
    found=""
    for candidate in "python$minor" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$minor"*/bin/"python$minor"; do
        if "$candidate" -c 'import sys' >/dev/null 2>&1; then found="$candidate"; break; fi
    done
    if [ -n "$found" ]; then INTERPRETERS+=("$found"); else MISSING+=("$minor"); fi
done
# constraints.txt without the JAX pins: the version under test replaces them
grep -viE '^(jax|jaxlib)==' constraints.txt > "$WORK/constraints.txt"

record() { "${INTERPRETERS[0]}" -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" >> "$RECORDS"; }

for version in "$@"; do
    installed=""
    for python in "${INTERPRETERS[@]}"; do
        venv="$WORK/jax-$version-$(basename "$python")"
        "$python" -m venv "$venv" || continue
        echo "[compat] JAX $version on $python: installing" >&2
        # constraints.txt's other pins first; where they conflict with this JAX (newer JAX
        # needs newer ml_dtypes and numpy), pip's own choice, and the record says so
        # with MinAtar (gymnax caps JAX below 0.12) where it installs, else without
        for extras in test,minatar test; do
            for constrained in yes no; do
                if [ $constrained = yes ]; then pins=(-c "$WORK/constraints.txt"); else pins=(); fi
                if "$venv/bin/python" -m pip install --quiet "${pins[@]}" -e "$ROOT[$extras]" \
                        "jax==$version" "jaxlib==$version" > "$WORK/install.log" 2>&1; then
                    installed="$python"
                    break 3
                fi
            done
        done
        rm -rf "$venv"
    done
    if [ -z "$installed" ]; then
        reason="$(grep -m1 -E 'Requires-Python|requires a different Python|No matching distribution|ResolutionImpossible' "$WORK/install.log" || tail -1 "$WORK/install.log")"
        record kind tests jax "$version" status "not installable here" python "$(for p in "${INTERPRETERS[@]}"; do "$p" --version; done | tr '\n' ' ')" detail "$reason"
        continue
    fi
    versions="$("$venv/bin/python" -c 'import json; from importlib import metadata
found = {}
for name in ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "rlax", "gymnax", "numpy"):
    try:
        found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        found[name] = "not installed"
print(json.dumps(found))')"
    echo "[compat] JAX $version on $installed: $TESTS" >&2
    started=$(date +%s)
    eval "\"$venv/bin/python\" -m pytest $TESTS" > "$WORK/tests.log" 2>&1
    code=$?
    seconds=$(( $(date +%s) - started ))
    summary="$(grep -E '[0-9]+ (passed|failed|error)' "$WORK/tests.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
    failures="$(grep -E '^(FAILED|ERROR) ' "$WORK/tests.log" | head -20 | tr '\n' ';')"
    record kind tests jax "$version" python "$("$venv/bin/python" --version)" constraints "$constrained" extras "$extras" status \
        "$([ $code = 0 ] && echo passed || echo failed)" summary "$summary" seconds "$seconds" \
        tests "$TESTS" versions "$versions" failures "$failures"
    echo "[compat] JAX $version: $summary" >&2
    rm -rf "$venv"
done

for python in "${INTERPRETERS[@]}"; do
    for extra in cuda12 cuda13; do
        echo "[compat] pip install --dry-run .[$extra] with $python" >&2
        # as a user installs it: no constraints
        if "$python" -m pip install --dry-run --ignore-installed --quiet --report "$WORK/report.json" \
                "$ROOT[$extra]" > "$WORK/dry.log" 2>&1; then
            resolved="$("$python" -c 'import json, sys; r = json.load(open(sys.argv[1])); m = [i["metadata"] for i in r["install"]]; print(", ".join(x["name"] + " " + x["version"] for x in m if x["name"].startswith("jax")))' "$WORK/report.json")"
            record kind extra extra "$extra" python "$("$python" --version)" status resolves resolved "$resolved"
        else
            record kind extra extra "$extra" python "$("$python" --version)" status "does not resolve" \
                detail "$(grep -v '^WARNING' "$WORK/dry.log" | tail -2 | tr '\n' ' ')"
        fi
    done
done

# pip matches --platform tags exactly: every manylinux glibc level a wheel may name
PLATFORMS=(--platform manylinux1_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 17 39); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
# The requirements alone (pyproject's dependencies plus each extra), resolved from wheels for
# CPython versions that need no interpreter here: which JAX each would install.
for target in "${MISSING[@]}"; do      # Pythons with no interpreter here
    for extra in "" cuda12 cuda13; do
        mapfile -t requirements < <("${INTERPRETERS[0]}" -c 'import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extra = sys.argv[1]
for line in project["dependencies"] + (project["optional-dependencies"][extra] if extra else []):
    print(line)' "$extra")
        echo "[compat] resolving the requirements${extra:+ with [$extra]} for CPython $target" >&2
        # --ignore-requires-python: pip checks Requires-Python against the running interpreter
        # even with --python-version; the cp3X wheel tags still select that version's builds
        if "${INTERPRETERS[0]}" -m pip install --dry-run --ignore-installed --quiet --only-binary=:all: \
                --ignore-requires-python \
                --python-version "$target" --implementation cp "${PLATFORMS[@]}" \
                --target "$WORK/target" --report "$WORK/report.json" "${requirements[@]}" > "$WORK/dry.log" 2>&1; then
            resolved="$("${INTERPRETERS[0]}" -c 'import json, sys; r = json.load(open(sys.argv[1])); m = [i["metadata"] for i in r["install"]]; print(", ".join(x["name"] + " " + x["version"] for x in m if x["name"].startswith(("jax", "flax"))))' "$WORK/report.json")"
            record kind resolve extra "${extra:-none}" python "CPython $target (wheels, manylinux x86_64)" status resolves resolved "$resolved"
        else
            record kind resolve extra "${extra:-none}" python "CPython $target (wheels, manylinux x86_64)" status "does not resolve" \
                detail "$(grep -v '^WARNING' "$WORK/dry.log" | tail -2 | tr '\n' ' ')"
        fi
    done
done

"${INTERPRETERS[0]}" - "$RECORDS" "$OUTPUT" "$*" "$TESTS" <<'PY'
import json, subprocess, sys
from pathlib import Path
records = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line]
out, versions, tests = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
command = f"scripts/compat.sh --tests '{tests}' {versions}"
out.parent.mkdir(parents=True, exist_ok=True)
out.parent.joinpath(out.name + ".json").write_text(json.dumps({"command": command, "commit": commit,
                                                "records": records}, indent=2) + "\n")
lines = ["| JAX | Python | extras | constraints.txt | tests | result | seconds | resolved |",
         "|---|---|---|---|---|---|---:|---|"]
for r in records:
    if r["kind"] == "tests":
        detail = r.get("summary") or r.get("detail", "")
        resolved = ", ".join(f"{k} {v}" for k, v in json.loads(r.get("versions") or "{}").items())
        lines.append(f"| {r['jax']} | {r['python']} | {r.get('extras', '')} | "
                     f"{r.get('constraints', '')} | "
                     f"`{r.get('tests', '')}` | {r['status']}: "
                     f"{detail} | {r.get('seconds', '')} | {resolved} |")
lines += ["", "| extra | Python | result | resolved |", "|---|---|---|---|"]
for r in records:
    if r["kind"] in ("extra", "resolve"):
        lines.append(f"| `.[{r['extra']}]` | {r['python']} | {r['status']} | "
                     f"{r.get('resolved') or r.get('detail', '')} |")
lines += ["", f"Command: `{command}`", "", f"Commit: `{commit}`", ""]
notes = out.with_name(out.name + "-notes.md")
if notes.is_file():
    lines += [notes.read_text().rstrip("\n"), ""]
out.parent.joinpath(out.name + ".md").write_text("\n".join(lines))
print("\n".join(lines))
PY
