#!/usr/bin/env bash
# Mutation testing of one critical module with mutmut 3 (pip install -e ".[test,mutation]"). Not part of CI: a module
# takes from minutes (losses) to hours (the trainer) on 2 cores.
#
# Usage: benchmarks/mutation.sh MODULE [MUTMUT_COMMAND ...]
#   MODULE          a key of [tool.srf_upsample.mutation] in pyproject.toml: losses, interpolate, upsamplers,
#                   carafe, run_folder, checkpoint, data, coco, stats, intervals, reading
#   MUTMUT_COMMAND  default "run"; e.g. "results", "show NAME", "tests-for-mutant NAME" on an earlier run
# In the background, as documented in docs/testing.md:
#   nohup benchmarks/mutation.sh losses > mutants/losses.log 2>&1 &
#
# The run happens in mutants/MODULE/ (gitignored): a fresh copy of srf_upsample/ and tests/, and a pyproject.toml whose
# [tool.mutmut] mutates the module's `source` only and collects stats on its `tests` only; mutmut then reruns, for each
# mutant, only the tests that called the mutated function. One worker, nice -n 10, one thread per process: the
# machine's cores are shared. At the end it prints the counts (mutmut export-cicd-stats) and the survivors.
set -euo pipefail

# One function, so that bash has read all of it before it runs (the file may change during a long run).
main() {
    if [[ $# -lt 1 ]]; then
        sed -n '4,9p' "${BASH_SOURCE[0]}" >&2
        exit 2
    fi
    module=$1
    shift
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    cd "$root"
    if ! command -v mutmut >/dev/null && [[ -f .venv/bin/activate ]]; then
        . .venv/bin/activate
    fi

    # The module's entry, checked: a source that exists and test files that exist.
    read -r source tests < <(python - "$module" <<'EOF'
import sys, tomllib
from pathlib import Path

table = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["srf_upsample"]["mutation"]
name = sys.argv[1]
if name not in table:
    sys.exit(f"MODULE must be one of {sorted(table)}, got {name!r}.")
entry = table[name]
if not Path(entry["source"]).is_file():
    sys.exit(f"{name}: {entry['source']} does not exist (yet); nothing to mutate.")
missing = [t for t in entry["tests"] if not Path(t).exists()]
if missing:
    sys.exit(f"{name}: test files {missing} do not exist; fix [tool.srf_upsample.mutation] in pyproject.toml.")
print(entry["source"], " ".join(entry["tests"]))
EOF
    )
    [[ -n ${source:-} ]] || exit 2

    work="$root/mutants/$module"
    if [[ $# -eq 0 ]]; then
        rm -rf "$work"  # a run starts fresh: mutmut keeps earlier verdicts, which new tests would not revisit
    fi
    mkdir -p "$work"
    rm -rf "$work/srf_upsample" "$work/tests"
    cp -r "$root/srf_upsample" "$root/tests" "$work/"
    # Tests that load shipped generators read weights/ beside the package (mutmut copies the package to $work/mutants/).
    mkdir -p "$work/mutants"
    ln -sfn "$root/weights" "$work/weights"
    ln -sfn "$root/weights" "$work/mutants/weights"

    # The root pyproject.toml with its [tool.mutmut] replaced by this module's.
    python - "$module" > "$work/pyproject.toml" <<'EOF'
import json, re, sys, tomllib
from pathlib import Path

text = Path("pyproject.toml").read_text()
entry = tomllib.loads(text)["tool"]["srf_upsample"]["mutation"][sys.argv[1]]
text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[[a-z]|\Z)", "", text)
# mutmut runs pytest with -p no:randomly (its own order), which makes a --randomly-seed in addopts an unknown option.
text = re.sub(r" ?--randomly-seed=[^\s\"]+", "", text)
print(text.rstrip() + "\n")
print("[tool.mutmut]")
print('source_paths = ["srf_upsample"]')
print(f"only_mutate = [{json.dumps(entry['source'])}]")
print('pytest_add_cli_args = ["-p", "no:cacheprovider"]')
print(f"pytest_add_cli_args_test_selection = {json.dumps(entry['tests'])}")
for key, value in entry.get("mutmut", {}).items():  # the module's own mutmut settings
    print(f"{key} = {json.dumps(value)}")
EOF

    cd "$work"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    if [[ $# -eq 0 ]]; then
        echo "mutmut run: $source against ${tests// /, } (in $work), $(date -u +%FT%TZ)"
        nice -n 10 mutmut run --max-children 1 || status=$?
        mutmut export-cicd-stats >/dev/null
        echo "counts (mutants/$module/mutants/mutmut-cicd-stats.json):"
        cat mutants/mutmut-cicd-stats.json
        echo
        echo "not killed:"
        mutmut results
        exit "${status:-0}"
    fi
    exec nice -n 10 mutmut "$@"
}

main "$@"
