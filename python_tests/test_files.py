"""One write path: every file nasops writes is whole or absent. A failing writer and a killed
process leave the old file; a search whose write fails keeps the previous front; no module of the
package writes a file any other way."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nasops
from nasops.utils import files
from nasops.predictor import AccuracyPredictor
from nasops.search.__main__ import main as search_main

PACKAGE = os.path.dirname(nasops.__file__)


NO_SPACE = os.strerror(errno.ENOSPC)


def failing_open(real_open, whole: int = 0):
    """open() whose files accept half of what is written, then fail, like a full disk; the
    first `whole` files opened for writing are written whole."""
    opened = [0]

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if not set(mode) & set("wax"):
            return f
        opened[0] += 1
        return f if opened[0] <= whole else Half(f)

    class Half:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, NO_SPACE)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    return open_


def test_a_failing_writer_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "doc.json"
    files.write_json(path, {"old": list(range(100))})
    monkeypatch.setattr(files, "open", failing_open(open), raising=False)
    with pytest.raises(OSError, match=f"could not write {re.escape(str(path))}: {NO_SPACE}$"):
        files.write_json(path, {"new": list(range(1000))})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": list(range(100))}
    assert os.listdir(tmp_path) == ["doc.json"]  # the temporary file is gone
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("the writer failed")
    assert json.loads(path.read_text()) == {"old": list(range(100))}
    assert os.listdir(tmp_path) == ["doc.json"]
    with pytest.raises(ValueError, match="mode = 'a'"):
        with files.atomic_open(path, "a"):
            pass


def test_a_killed_writer_leaves_a_whole_file(tmp_path):
    """A process rewriting a 2 MB JSON file in a loop, killed at 20 moments: each time the
    file is one of the complete versions."""
    path = tmp_path / "big.json"
    code = ("import sys; from nasops.utils.files import write_json\n"
            "i = 0\n"
            "while True:\n"
            "    write_json(sys.argv[1], {'i': i, 'pad': 'x' * 2_000_000}); i += 1\n"
            "    print(i, flush=True)\n")
    for delay in np.linspace(0.0, 0.4, 20):
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # one version written: from here on the file must stay whole
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        doc = json.loads(path.read_text())
        assert doc["pad"] == "x" * 2_000_000 and doc["i"] >= 0


def test_a_torn_log_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2')  # a run killed mid-line
    assert files.read_lines(path) == ['{"step": 1}']
    log = files.open_log(path)
    files.append_line(log, '{"step": 2}')
    log.close()
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    with pytest.raises(ValueError, match="one line"):
        files.append_line(None, "a\nb")
    log = files.open_log(path, size=len('{"step": 1}\n{"st'))  # (a resume: cut to a checkpoint's)
    files.append_line(log, '{"step": 3}')
    log.close()
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'


def test_temporary_files_a_kill_left_are_removed(tmp_path):
    kept = ["checkpoint.pt", "notes.tmp", "a.0123456789ab.tmp.bak", "b.0123456789AB.tmp"]
    stale = ["checkpoint.pt.0123456789ab.tmp", "metrics.json.ffffffffffff.tmp"]
    for name in kept + stale:
        (tmp_path / name).write_text("x")
    assert files.remove_stale_tmp(tmp_path) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert files.remove_stale_tmp(tmp_path / "none") == []


def test_search_whose_write_fails_keeps_the_previous_front(tmp_path, monkeypatch, capsys):
    """A full disk: the search stops with one line naming the file and the cause."""
    space = nasops.SearchSpace.load("small")
    X = space.sample(300, seed=0)
    AccuracyPredictor(space, n_estimators=10).fit(X, space.params(X)).save(tmp_path / "p.npz")
    out = tmp_path / "search"
    args = ["--predictor", str(tmp_path / "p.npz"), "--space", "small", "--budgets", "8",
            "--population", "16", "--mutations", "4", "--crossovers", "4", "--generations", "2",
            "--out", str(out), "--no-progress"]
    assert search_main(args) == 0
    before = (out / "pareto.json").read_text()
    assert json.loads(before)["results"][0]["budget"] == 8
    capsys.readouterr()
    monkeypatch.setattr(files, "open", failing_open(open), raising=False)
    assert search_main(args[:5] + ["12"] + args[6:]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"could not write {out / 'pareto.json'}: {NO_SPACE}"), err
    assert (out / "pareto.json").read_text() == before
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_an_export_whose_write_fails_keeps_the_earlier_export(tiny, tmp_path, monkeypatch):
    """A full disk while the third of an export's files is written: the files of the export
    before stay, every one, and the error names the file."""
    from nasops.search.export import export_subnet
    space = nasops.SearchSpace.load(tiny)
    net = nasops.Supernet(space).eval()
    out = tmp_path / "net"
    export_subnet(net, space.sample(1, seed=0)[0], str(out), onnx=False)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert sorted(before) == ["meta.json", "model.pt2", "model.ts", "state_dict.pt"]
    monkeypatch.setattr(files, "open", failing_open(open, whole=2), raising=False)
    with pytest.raises(OSError, match=f"could not write {re.escape(str(out / 'model.ts'))}: {NO_SPACE}$"):
        export_subnet(net, space.sample(1, seed=1)[0], str(out), onnx=False)
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    export_subnet(net, space.sample(1, seed=1)[0], str(out), onnx=False)  # (room again)
    assert (out / "model.ts").read_bytes() != before["model.ts"]


@pytest.mark.slow
def test_a_real_full_disk(tmp_path):
    """benchmarks/full_disk.py on a tmpfs of its own: training, search and the latency table
    meet a full disk and one with 160 KiB left; each stops with one line naming the file,
    keeps every file it had, and the training run resumes to the uninterrupted run's weights.
    Skipped where no tmpfs can be mounted (no unshare, or user namespaces not allowed)."""
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "full_disk.py")
    out = tmp_path / "full_disk.json"
    done = subprocess.run([sys.executable, script, "--free", "0", "160", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode == 2:
        pytest.skip("no tmpfs of its own: " + done.stderr.strip()[-300:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert [(c["command"], c["room_bytes"] // 1024) for c in cases] == [
        ("train", 0), ("search", 0), ("latency", 0), ("train", 160), ("search", 160)]
    assert all(c["problems"] == [] and c["files_kept"] >= 1 for c in cases)
    written = [re.search(r"could not write (\S+): ", c["error"]).group(1) for c in cases]
    assert os.path.basename(written[0]) == "metrics.jsonl"  # (the first write after the fill)
    assert os.path.basename(written[3]) == "checkpoint.pt"  # (log lines fit in 160 KiB)
    assert os.path.basename(written[2]) == "latency.json"
    assert all("/search/net_0.5MF/" in path for path in (written[1], written[4]))


# What writes a file: open() for writing or appending, and the writers that take a path.
TORCH_WRITERS = re.compile(r"""torch\.save\(|\.jit\.save\(|export\.save\(|torch\.onnx\.export\(""")
WRITERS = re.compile(r"""(?<!\w)open\([^)]*["'][wax]b?\+?["']|\.savefig\(|np\.savez|"""
                     r"""os\.replace\(|os\.rename\(|\.write_text\(|\.write_bytes\(|"""
                     r"""\.to_csv\(|shutil\.copy|""" + TORCH_WRITERS.pattern)


def test_every_write_in_the_package_goes_through_the_helper():
    """Outside nasops/files.py, a writer may only be handed the temporary path of an
    atomic_path block just above it (np.savez gets atomic_open's file). torch's writers write
    to memory only (files.serialised, or an io.BytesIO just above): on a full disk they abort
    the process. TensorBoard's SummaryWriter writes its own event files and is not a match."""
    found = []
    for root, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if not name.endswith(".py") or name == "files.py":
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                lines = [line.split("#", 1)[0] for line in f]
            for i, code in enumerate(lines):
                if not WRITERS.search(code):
                    continue
                above = "".join(lines[max(0, i - 3):i + 1])
                if TORCH_WRITERS.search(code):
                    inside = "io.BytesIO()" in above
                else:
                    inside = ("tmp" in code and "atomic_path(" in above) or \
                             ("np.savez(f," in code and "atomic_open(" in above)
                if not inside:
                    found.append(f"{os.path.relpath(path, PACKAGE)}:{i + 1}: {code.strip()}")
    assert not found, "writes outside nasops.utils.files:\n" + "\n".join(found)


def test_a_written_figure_leaves_no_garbage(tmp_path):
    """A figure is cyclic garbage that Python's collector may leave for many epochs of a
    training run, where a curves.png per epoch held memory growing by 22 MiB per 1,000 steps
    (benchmarks/memory_flat.py): writing one collects it."""
    pytest.importorskip("matplotlib")
    import gc
    from matplotlib.figure import Figure
    from nasops.utils.plots import plot_training_curves
    gc.disable()  # (as when the collector does not happen to run)
    try:
        metrics = [{"step": i, "lr": 0.1, "loss_largest": 1.0, "loss_smallest": 0.5,
                    "loss_sampled": 0.7} for i in range(1, 200)]
        assert plot_training_curves(str(tmp_path / "curves.png"), metrics)
        assert not [o for o in gc.get_objects() if isinstance(o, Figure)]
    finally:
        gc.enable()
    assert (tmp_path / "curves.png").stat().st_size > 1000
