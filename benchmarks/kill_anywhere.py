"""Kill anywhere: a training run SIGKILLed at N moments, resumed each time, ends on the weights of
the run that was never interrupted, bit for bit.

    python benchmarks/kill_anywhere.py                  # 24 kills of the digits recipe, 3 epochs (~20 min)
    python benchmarks/kill_anywhere.py --kills 4 space=PATH.yaml limit=320   # (the test's)

First an uninterrupted run (`python -m nasops.train --recipe digits epochs=3 log_every=1`).
Then the same run is started and killed with SIGKILL, N times, each time resumed with the
README's `--resume RUN_DIR` (or started again, when it was killed before it wrote its
config.yaml). Half the kills land at a random time; the other half at the moments where a kill
does the most harm, in turn, each at a random occurrence, set up by a hook in the child process
(never in nasops itself): half-way through writing a checkpoint's bytes, after the checkpoint's
temporary file is synced and before it is renamed, just after the rename, and half-way through a
line of metrics.jsonl.

After every kill the run directory must hold a checkpoint that loads (checksum included) and a
metrics.jsonl whose complete lines are JSON with no step logged twice. Whenever a run reaches its
end (resumed after its last kill), its checkpoint's weights, optimizer, scheduler, strategy and
RNG state must equal the uninterrupted run's, bit for bit, its metrics must be the same lines
(times aside), and no temporary file may be left; the next kill then hits a new run. Results: benchmarks/results/reliability/kill_anywhere.json; exit 1 if any check fails.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOKS = ("checkpoint-half-written", "checkpoint-before-rename", "checkpoint-after-rename",
         "metrics-half-line")
TIMES = ("seconds", "eval_seconds")  # (metrics that differ between any two runs)


# -- the child: nasops.train with a hook that SIGKILLs it at the n-th occurrence of a moment ------
def child(hook: str, nth: int, argv: list[str]) -> int:
    from nasops.train import loop, rundir
    from nasops.utils import files
    seen = [0]

    def due() -> bool:
        seen[0] += 1
        return seen[0] == nth

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if hook == "checkpoint-half-written":
        class HalfFile:  # (the checkpoint's temporary file: killed half-way through its bytes)
            def __init__(self, f):
                self.f = f

            def write(self, data):
                if due():
                    self.f.write(bytes(data)[:len(data) // 2])
                    self.f.flush()
                    die()
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def open_(path, mode="r", *args, **kwargs):
            f = open(path, mode, *args, **kwargs)
            checkpoint_tmp = os.path.basename(path).startswith("checkpoint.pt.") and mode == "wb"
            return HalfFile(f) if checkpoint_tmp else f
        files.open = open_
    elif hook in ("checkpoint-before-rename", "checkpoint-after-rename"):
        real_replace = files.os.replace

        def replace(src, dst):
            hit = os.path.basename(dst) == "checkpoint.pt" and due()
            if hit and hook == "checkpoint-before-rename":
                die()
            real_replace(src, dst)
            if hit:
                die()
        files.os.replace = replace
    elif hook == "metrics-half-line":
        real_append = rundir.append_line

        def append_line(log, line):
            if due():
                log.write(line[:len(line) // 2].encode())
                die()
            real_append(log, line)
        rundir.append_line = append_line
    return loop.main(argv)


# -- the parent ------------------------------------------------------------------------------------
def train_command(run_dir: str, overrides: list[str], hook=None, nth=0) -> list[str]:
    """A fresh start, or --resume once config.yaml is there (the README's way to continue)."""
    if os.path.exists(os.path.join(run_dir, "config.yaml")):
        argv = ["--resume", run_dir, "--no-progress"]
    else:
        argv = ["--recipe", "digits", "epochs=3", "log_every=1", *overrides, "--run-dir", run_dir,
                "--no-progress"]
    if hook is None:
        return [sys.executable, "-m", "nasops.train", *argv]
    return [sys.executable, os.path.abspath(__file__), "--child", hook, str(nth), "--", *argv]


def check_after_kill(run_dir: str) -> dict:
    """What the kill left: the checkpoint's step (it must load), the metrics' last step (its
    complete lines must be JSON, no step twice), and temporary files."""
    from nasops.nn.checkpoint import load_checkpoint
    from nasops.utils.files import read_lines
    found = {"checkpoint": None, "logged_step": None, "problems": []}
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    if os.path.exists(ckpt_path):
        try:
            ckpt = load_checkpoint(ckpt_path)
            found["checkpoint"] = "finished" if ckpt["finished"] else [ckpt["epoch"], ckpt["step"]]
        except (ValueError, OSError) as e:
            found["problems"].append(f"checkpoint: {e}")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        try:
            steps = [json.loads(line).get("step") for line in read_lines(metrics)]
        except ValueError as e:
            found["problems"].append(f"metrics.jsonl: a line is not JSON ({e})")
        else:
            lr_steps = [s for s, line in zip(steps, read_lines(metrics)) if '"lr"' in line]
            if lr_steps != sorted(set(lr_steps)):
                found["problems"].append("metrics.jsonl: a step is logged twice")
            found["logged_step"] = lr_steps[-1] if lr_steps else 0
    found["tmp_files"] = sorted(n for n in os.listdir(run_dir) if n.endswith(".tmp")) \
        if os.path.isdir(run_dir) else []
    return found


def compare_runs(ref: str, run: str) -> list[str]:
    """The differences between two finished runs' checkpoints and metrics (none: bit for bit)."""
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True) for d in (ref, run))
    problems = []
    for key in ("model", "optimizer", "scheduler", "strategy", "scaler", "rng"):
        if not same(a[key], b[key]):
            problems.append(f"checkpoint[{key!r}] differs")

    def lines(d):
        out = []
        for line in open(os.path.join(d, "metrics.jsonl")):
            entry = json.loads(line)
            out.append({k: v for k, v in entry.items() if k not in TIMES})
        return out
    if lines(ref) != [e for e in lines(run) if e.get("event") != "interrupted"]:
        problems.append("metrics.jsonl differs (times aside)")
    return problems


def same(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y))
    return x == y


def progress(run: str, ref: str):
    """(the fraction of the run done, its checkpoint writes left, its metrics lines left), from
    its checkpoint (none yet: nothing done)."""
    total = json.load(open(os.path.join(ref, "final.json")))["steps"]
    epochs = yaml.safe_load(open(os.path.join(ref, "config.yaml")))["epochs"]
    path = os.path.join(run, "checkpoint.pt")
    if not os.path.exists(path):
        return 0.0, epochs + 2, total + epochs + 1  # (the step-0 one, each epoch's, the final)
    ckpt = torch.load(path, weights_only=True)
    done = total if ckpt["finished"] else ckpt["epoch"] * (total // epochs) + ckpt["step"]
    epochs_left = epochs - ckpt["epoch"]
    return done / total, epochs_left + 1, total - done + epochs_left + 1


def next_moment(kills: int, run: str, ref: str, full_s: float, rng: random.Random) -> dict:
    """Every other kill at a random time within what is left of the run; the others at the
    hooks in turn, each at a random one of the occurrences left."""
    done, writes, lines = progress(run, ref)
    if kills % 2 == 0:  # (the run's start and its final evaluation take ~8 s of full_s)
        return {"after_s": round(rng.uniform(0.5, 8.0 + (1 - done) * full_s), 2)}
    hook = HOOKS[kills // 2 % len(HOOKS)]
    return {"hook": hook, "nth": rng.randint(1, min(lines, 60) if hook.startswith("metrics")
                                              else writes)}


def where(moment: dict, before: dict, after: dict) -> str:
    """Where a kill landed: its hook, or for a timed one, what the run had written by then."""
    if "hook" in moment:
        return moment["hook"]
    if after["checkpoint"] == "finished":
        return "at the end (final checkpoint written)"
    if (after["checkpoint"], after["logged_step"]) == (before["checkpoint"], before["logged_step"]):
        return "start-up or an evaluation (nothing new written)"
    return "training steps (steps logged)"


def finish_chain(run: str, ref: str, overrides, kills: int, log) -> dict:
    """Resumes the run to its end and compares it with the uninterrupted one; then removes it,
    so that the next kill hits a new run."""
    run_until_done(lambda: train_command(run, overrides), log)
    problems = compare_runs(ref, run)
    left = [n for n in os.listdir(run) if n.endswith(".tmp")]
    if left:
        problems.append(f"temporary files left after the last resume: {left}")
    chain = {"kills": kills, "problems": problems}
    print(f"  finished after {chain['kills']} kills: "
          f"{'bit for bit the uninterrupted run' if not problems else problems}", flush=True)
    shutil.rmtree(run)
    return chain


def run_until_done(cmd_of, log) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd_of(), capture_output=True, text=True)
    log.write(out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"a run that should finish failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def kill_once(run_dir: str, overrides, moment: dict, log) -> bool:
    """Starts the run (or resumes it) and kills it at `moment`; False when it finished first."""
    hook = moment.get("hook")
    proc = subprocess.Popen(train_command(run_dir, overrides, hook, moment.get("nth", 0)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if hook is None:
        try:
            proc.wait(timeout=moment["after_s"])
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    log.write(out)
    return proc.returncode == -signal.SIGKILL


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], int(sys.argv[3]), sys.argv[5:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides (key=value)")
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="of the moments chosen")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "reliability",
                                                      "kill_anywhere.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="kill_anywhere-")
    ref, run = os.path.join(work, "ref"), os.path.join(work, "run")
    with open(os.path.join(work, "log.txt"), "w") as log:
        full_s = run_until_done(lambda: train_command(ref, args.overrides), log)
        print(f"uninterrupted run: {full_s:.1f} s", flush=True)
        kills, chains = [], []  # (chains: each run killed, resumed and finished, compared)

        def finish():
            chains.append(finish_chain(run, ref, args.overrides,
                                       len(kills) - sum(c["kills"] for c in chains), log))
        while len(kills) < args.kills:
            if progress(run, ref)[0] == 1.0 and check_after_kill(run)["checkpoint"] == "finished":
                finish()
                continue
            moment = next_moment(len(kills), run, ref, full_s, rng)
            before = check_after_kill(run)
            if not kill_once(run, args.overrides, moment, log):
                print(f"  {moment}: the run finished first", flush=True)
                finish()
                continue
            found = check_after_kill(run)
            kills.append({**moment, "where": where(moment, before, found), **found})
            print(f"  kill {len(kills)}: {moment} -> checkpoint {found['checkpoint']}, "
                  f"logged step {found['logged_step']}, tmp {found['tmp_files']} "
                  f"{found['problems'] or 'ok'}", flush=True)
        finish()
    problems = [p for k in kills for p in k["problems"]] + [p for c in chains for p in c["problems"]]
    places = [k["where"] for k in kills]
    result = {"command": "python benchmarks/kill_anywhere.py " + " ".join(sys.argv[1:]),
              "kills": len(kills), "uninterrupted_seconds": round(full_s, 1),
              "where": {w: places.count(w) for w in sorted(set(places))},
              "finished_runs": chains, "moments": kills,
              "bit_identical_to_uninterrupted": all(not c["problems"] for c in chains),
              "problems": problems}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    from nasops.utils.files import write_json
    write_json(args.out, result)
    print(f"{len(kills)} kills over {len(chains)} runs, each resumed to its end; problems: "
          f"{problems or 'none'} -> {args.out}")
    shutil.rmtree(work)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
