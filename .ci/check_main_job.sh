#!/usr/bin/env bash
# Runs the README's main-job command, exactly as written, at the root of a fresh clone of the
# repository given (default: this one), and checks that it printed the front for every budget
# and wrote pareto.json. About 8 minutes on an idle 2-core machine.
set -euo pipefail
source_repo="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
job="$(python3 "$source_repo/.ci/readme_block.py" main-job)"
clone="$(mktemp -d)/nasops"
git clone --quiet "$source_repo" "$clone"
cd "$clone"
log="$(mktemp)"
echo "check_main_job: in $clone: $job"
start=$SECONDS
if ! bash -c "$job" > "$log" 2>&1; then
  tail -n 60 "$log"
  echo "check_main_job: the README's main-job command failed"
  exit 1
fi
python3 - "$job" "$log" <<'PY'
import itertools, json, re, shlex, sys
job, log = sys.argv[1], open(sys.argv[2]).read()
words = shlex.split(job.split("nasops.search", 1)[1])
after = words[words.index("--budgets") + 1:]
budgets = [float(w) for w in itertools.takewhile(lambda w: re.fullmatch(r"[\d.]+", w), after)]
out_dir = words[words.index("--checkpoint") + 1].rsplit("/", 1)[0] + "/search"
printed = [b for b in budgets if re.search(rf"^<= {b:g} MFLOPs: ", log, re.M)]
assert printed == budgets, f"the front printed {printed}, expected every budget of {budgets}"
doc = json.load(open(f"{out_dir}/pareto.json"))
assert [r["budget"] for r in doc["results"]] == budgets, doc["results"]
keep = ("<= ", "wrote", "skipped", "smallest", "largest", "searched")
print("\n".join(l for l in log.replace("\r", "\n").splitlines() if l.startswith(keep) or "steps; this" in l))
PY
echo "check_main_job: ok ($((SECONDS - start)) s)"
