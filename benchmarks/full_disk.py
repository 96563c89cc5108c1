"""A full disk, for real: nasops's commands writing to a small tmpfs that fills up.

    python benchmarks/full_disk.py                 # ~3 min; results/reliability/full_disk.json

A file system of --size MiB is mounted in a private mount namespace: the script runs itself again
under `unshare --user --map-root-user --mount` (util-linux; root, or a kernel that allows
unprivileged user namespaces), and the mount goes away with it. There, for each amount of room
left (--free KiB, default 0, 48 and 160: the disk full; room for log lines and a file or two of
an export, not for a checkpoint or the whole export):

train:   `python -m nasops.train --recipe digits space=TINY epochs=3 ...` starts; once its
         step-0 checkpoint is there, the disk is filled (a file taking all but the room left).
         The run must stop. With the disk emptied, `--resume` must end on the weights of the
         run that never met a full disk (made first, beside it), bit for bit.
search:  `python -m nasops.search --checkpoint RUN/checkpoint.pt ...` writes pareto.json and an
         exported network on an empty disk; then, the disk filled, again with another seed.
latency: `python -m nasops.search.latency --space TINY --out latency.json`, the same way
         (with the disk full only: the table is a few KiB).

Each command that meets the full disk must exit with status 1, its last line of stderr
"...error: ... could not write PATH: No space left on device" with PATH a file it was writing,
no traceback, every file that was there before it started the same bytes (a log may have
grown), and no temporary file left. Exit 1 if any check fails.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python_tests"))
from conftest import TINY_SPACE  # noqa: E402  (the tests' tiny space)

FILLER = "filler"
TRAIN = ["--recipe", "digits", "limit=480", "epochs=3", "batch_size=32", "n_prior=5000",
         "calib_images=64", "eval_batch_size=128", "log_every=1", "--no-progress"]


def nasops(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=600)


# -- the disk --------------------------------------------------------------------------------------
def fill(mount: str, room: int) -> int:
    """Takes all the room on `mount` but `room` bytes with one file; returns the bytes free."""
    empty(mount)
    st = os.statvfs(mount)
    size = st.f_bavail * st.f_frsize - room
    if size > 0:
        with open(os.path.join(mount, FILLER), "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    st = os.statvfs(mount)
    return st.f_bavail * st.f_frsize


def empty(mount: str) -> None:
    if os.path.exists(os.path.join(mount, FILLER)):
        os.remove(os.path.join(mount, FILLER))


def snapshot(output: str) -> dict:
    """{relative path: bytes} of every file under the folder `output` but the filler; of a file
    `output`, of it and the temporary files beside it."""
    if os.path.isdir(output):
        base = output
        paths = [os.path.join(root, name) for root, _, names in os.walk(output)
                 for name in names if name != FILLER]
    else:
        base, name = os.path.split(output)
        paths = [os.path.join(base, n) for n in os.listdir(base) if n.startswith(name)]
    files = {}
    for path in paths:
        with open(path, "rb") as f:
            files[os.path.relpath(path, base)] = f.read()
    return files


def is_log(name: str) -> bool:
    """Files appended to: the metrics, and TensorBoard's events."""
    return os.path.basename(name) == "metrics.jsonl" or ".tfevents." in name


def check_failure(done, before: dict, folder: str) -> list[str]:
    """What is wrong with a command that met the full disk (see the module's docstring)."""
    problems = []
    last = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode != 1:
        problems.append(f"exit status {done.returncode}, not 1")
    if "Traceback" in done.stderr or "Exception ignored" in done.stderr:
        problems.append("a traceback: " + done.stderr[-1500:])
    if not ("error:" in last and "could not write " + folder in last
            and last.endswith("No space left on device")):
        problems.append(f"last line: {last!r}")
    after = snapshot(folder)
    for name, data in before.items():
        grown = is_log(name) and after.get(name, b"").startswith(data)
        if after.get(name) != data and not grown:
            problems.append(f"{name} changed")
    left = [n for n in after if n.endswith(".tmp")]
    if left:
        problems.append(f"temporary files left: {left}")
    return problems


# -- the three commands ----------------------------------------------------------------------------
def weights(run: str):
    import torch
    return torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)["model"]


def train_case(mount: str, space: str, reference: str, room: int) -> dict:
    run = os.path.join(mount, f"run-{room // 1024}k")
    proc = subprocess.Popen([sys.executable, "-m", "nasops.train", *TRAIN, f"space={space}",
                             "--run-dir", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while not os.path.exists(os.path.join(run, "checkpoint.pt")) and proc.poll() is None:
        time.sleep(0.005)
    free = fill(mount, room)
    before = snapshot(run)
    stdout, stderr = proc.communicate(timeout=600)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    problems = check_failure(done, before, run)
    empty(mount)
    resumed = nasops("nasops.train", "--resume", run, "--no-progress")
    if resumed.returncode != 0:
        problems.append("resume failed: " + resumed.stderr[-1500:])
    else:
        a, b = weights(reference), weights(run)
        if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
            problems.append("the resumed run's weights differ from the uninterrupted run's")
    return {"command": "train", "room_bytes": room, "free_bytes": free, "files_kept": len(before),
            "error": (stderr.strip().splitlines() or [""])[-1], "problems": problems}


def rerun_case(mount: str, name: str, command, folder: str, room: int) -> dict:
    """`command(seed)` ran on an empty disk; run it again with another seed on a full one."""
    empty(mount)
    first = command(0)
    if first.returncode != 0:
        return {"command": name, "room_bytes": room, "problems": ["the first run failed: "
                                                                  + first.stderr[-1500:]]}
    before = snapshot(folder)
    free = fill(mount, room)
    done = command(1)
    empty(mount)
    return {"command": name, "room_bytes": room, "free_bytes": free, "files_kept": len(before),
            "error": (done.stderr.strip().splitlines() or [""])[-1],
            "problems": check_failure(done, before, folder)}


def inside(args) -> int:
    mount = args.mount
    space = os.path.join(mount, "tiny.yaml")
    with open(space, "w") as f:
        f.write(TINY_SPACE)
    reference = os.path.join(mount, "reference")
    done = nasops("nasops.train", *TRAIN, f"space={space}", "--run-dir", reference)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1
    search_out, table = os.path.join(mount, "search"), os.path.join(mount, "latency.json")

    def search(seed):
        return nasops("nasops.search", "--checkpoint", os.path.join(reference, "checkpoint.pt"),
                      "--budgets", "0.5", "--population", "12", "--mutations", "4",
                      "--crossovers", "4", "--generations", "1", "--calib-images", "64",
                      "--seed", str(seed), "--out", search_out, "--no-progress")

    def latency(seed):
        return nasops("nasops.search.latency", "--space", space, "--repeats", "1",
                      "--out", table, "--no-progress")

    cases = []
    for room in args.free:
        cases.append(train_case(mount, space, reference, room * 1024))
        cases.append(rerun_case(mount, "search", search, search_out, room * 1024))
        if room == 0:  # (a table is a few KiB: it fits in any other room left)
            cases.append(rerun_case(mount, "latency", latency, table, room * 1024))
    for case in cases:
        print(json.dumps(case), flush=True)
    print("RESULT " + json.dumps({"size_mib": args.size, "cases": cases}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32, help="MiB of the tmpfs")
    parser.add_argument("--free", type=int, nargs="+", default=[0, 48, 160],
                        help="KiB left free when the disk is filled")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "reliability", "full_disk.json"))
    parser.add_argument("--inside", dest="mount", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mount:
        return inside(args)
    if shutil.which("unshare") is None:
        print("error: needs util-linux's unshare to mount a tmpfs of its own", file=sys.stderr)
        return 2
    mount = tempfile.mkdtemp(prefix="nasops-full-disk-")
    script = ("mount -t tmpfs -o size=$0m nasops-full-disk $1 && shift && exec \"$@\"")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                           str(args.size), mount, sys.executable, os.path.abspath(__file__),
                           "--inside", mount, "--size", str(args.size), "--free",
                           *map(str, args.free)], capture_output=True, text=True)
    os.rmdir(mount)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
        return 2 if "mount" in done.stderr or "unshare" in done.stderr else 1
    result = json.loads(lines[-1][len("RESULT "):])
    result["measured_by"] = "python benchmarks/full_disk.py " + " ".join(sys.argv[1:])
    from nasops.utils.files import write_json
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, result)
    for case in result["cases"]:
        print(f"{case['command']:8s} {case['room_bytes'] // 1024:4d} KiB left: "
              f"{'ok' if not case['problems'] else case['problems']}  {case.get('error', '')}")
    return 1 if any(case["problems"] for case in result["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
