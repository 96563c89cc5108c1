"""Image folders streamed from disk: layouts, the transforms against their written-out rules,
deterministic and rank-sliced batches, resume without decoding skipped images, bad files named,
memory that does not grow with the data, and attentive_nas training on generated JPEGs."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nasops.data import folders
from nasops.data.augment import POLICY_V0, AutoAugment, center_view, crop_box
from nasops.data import BadImageError, FolderStream, load_dataset, load_splits

Image = pytest.importorskip("PIL.Image")


def write_images(folder, g, classes=("cat", "dog"), per_class=3, size=(10, 10), suffix="png"):
    """Random images, one sub-folder per class; returns their pixels by (class, index)."""
    pixels = {}
    for c in classes:
        os.makedirs(folder / c, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in g.integers(size[0], size[1] + 1, 2))
            a = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(a).save(folder / c / f"{i:04d}.{suffix}")
            pixels[(c, i)] = a
    return pixels


def write_jpegs(folder, count, classes=3, seed=0, size=(256, 320)):
    """`count` JPEGs (blocky colour images, a class tint) of sides in `size`, in class folders."""
    g = np.random.default_rng(seed)
    for i in range(count):
        c = i % classes
        os.makedirs(folder / f"c{c}", exist_ok=True)
        h, w = (int(v) for v in g.integers(size[0], size[1] + 1, 2))
        a = np.kron(g.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8),
                    np.ones((16, 16, 1), np.uint8))[:h, :w]
        a[..., c % 3] = np.clip(a[..., c % 3].astype(int) + (90 if c < 3 else -90), 0, 255)
        Image.fromarray(a).save(folder / f"c{c}" / f"{i:05d}.jpg", quality=85)


def test_layouts_labels_and_pixels(tmp_path):
    g = np.random.default_rng(3)
    train_px = write_images(tmp_path / "train", g)
    write_images(tmp_path / "test", g, per_class=2)
    d = load_dataset("imagefolder", "train", str(tmp_path))
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.path(4).endswith(os.path.join("train", "dog/0001.png"))
    (x, y), = d.eval_batches(10, 8, 1.0)  # 10 px square files at resolution 10: the pixels
    np.testing.assert_array_equal(x[4].numpy().transpose(1, 2, 0), train_px[("dog", 1)])
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(load_dataset("imagefolder", "test", str(tmp_path))) == 4
    sub = d.subset([5, 1])
    assert [sub.path(0), sub.path(1)] == [d.path(5), d.path(1)] and sub.labels.tolist() == [1, 0]
    with pytest.raises(FileNotFoundError, match="must hold train/ and val/"):
        load_dataset("imagenet", "train", str(tmp_path))  # imagenet: val/, not test/


def test_flat_layout_and_errors(tmp_path):
    write_images(tmp_path, np.random.default_rng(4), per_class=5)
    train = load_dataset("imagefolder", "train", str(tmp_path))
    test = load_dataset("imagefolder", "test", str(tmp_path))
    assert len(train) + len(test) == 10 and len(test) == 2
    assert not {train.path(i) for i in range(8)} & {test.path(i) for i in range(2)}
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset("imagefolder", "train", str(tmp_path / "cat"))
    with pytest.raises(ValueError, match="workers = -1"):
        load_dataset("imagefolder", "train", str(tmp_path), workers=-1)


def test_crop_box_keeps_the_published_ranges():
    """Inception crops: area 8-100%, aspect ratio 3/4-4/3 (up to rounding), inside the image; a
    sliver image misses 10 times and falls back to the clamped centre crop."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        left, top, right, bottom = crop_box(300, 200, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        assert 0.08 * 60000 - w - h <= w * h <= 60000
        assert 3 / 4 - 1.5 / h <= w / h <= 4 / 3 + 1.5 / h
    assert crop_box(1000, 10, rng) == (493, 0, 506, 10)  # w = round(10 * 4/3), (1000 - 13) // 2
    assert crop_box(10, 1000, rng) == (0, 493, 10, 506)  # h = round(10 / (3/4))


def test_center_view_is_resize_shorter_side_then_centre_crop():
    a = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)  # h 40, w 50
    image = Image.fromarray(a)
    got = np.asarray(center_view(image, 16, 0.875))
    short = math.ceil(16 / 0.875)  # 19; the longer side in proportion, floored: 23
    # offsets round half to even, as torchvision's CenterCrop: round(1.5) = 2, round(3.5) = 4
    expected = np.asarray(image.resize((23, short), Image.BICUBIC))[2:18, 4:20]
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(center_view(image, 40, 1.0)).shape == (40, 40, 3)


def test_autoaugment_operations_follow_their_formulas():
    a = np.random.default_rng(2).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    image, rng = Image.fromarray(a), np.random.default_rng(0)
    apply = AutoAugment.apply
    np.testing.assert_array_equal(np.asarray(apply(image, "Invert", 0.3, rng)), 255 - a)
    threshold = int(0.5 * 256)
    np.testing.assert_array_equal(np.asarray(apply(image, "Solarize", 0.5, rng)),
                                  np.where(a >= threshold, 255 - a, a))
    add = int(0.7 * 110)
    np.testing.assert_array_equal(np.asarray(apply(image, "SolarizeAdd", 0.7, rng)),
                                  np.where(a < 128, np.minimum(255, a.astype(int) + add), a))
    bits = int(0.3 * 4) + 4  # 5 bits kept
    np.testing.assert_array_equal(np.asarray(apply(image, "Posterize", 0.3, rng)),
                                  a & (0xFF << (8 - bits) & 0xFF))
    for name in ("Rotate", "ShearX", "ShearY", "TranslateYRel"):  # magnitude 0: nothing moves
        np.testing.assert_array_equal(np.asarray(apply(image, name, 0.0, rng)), a)
    shifted = np.asarray(apply(image, "TranslateYRel", 1.0, np.random.default_rng(5)))
    assert (shifted == (124, 116, 104)).all(-1).sum() >= 12 * 5  # 0.45 * 12 rows filled
    policy = AutoAugment()
    runs = [np.asarray(policy(image, np.random.default_rng(s))) for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0], runs[1])  # the generator decides everything
    assert len(POLICY_V0) == 25 and all(len(pair) == 2 for pair in POLICY_V0)
    for pair in POLICY_V0:  # every operation of the policy is implemented
        for name, _, _ in pair:
            apply(image, name, 0.5, rng)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    write_jpegs(root, 48, size=(40, 60))
    return str(root)


def stream(jpegs, rank=0, world=1, workers=0, **kw):
    data = load_dataset("imagefolder", "train", jpegs, workers=workers)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    return FolderStream(data, 8, mean, std, 24, seed=3, flip=True, autoaugment=True, rank=rank,
                        world=world, **kw)


def test_batches_depend_only_on_seed_epoch_and_step(jpegs):
    one = list(stream(jpegs).epoch(1))
    again = list(stream(jpegs, workers=2).epoch(1))  # other processes decode: the same batches
    assert len(one) == len(again) == 4  # 38 training images (20% test), batch 8
    for (x, y), (x2, y2) in zip(one, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    other = list(stream(jpegs).epoch(2))
    assert not torch.equal(other[0][0], one[0][0])
    # rank r of 2 decodes the r-th half of each global batch; together, the whole batch
    halves = [list(stream(jpegs, rank=r, world=2).epoch(1)) for r in (0, 1)]
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), y)
    keys = [[k for batch in stream(jpegs, rank=r, world=2).keys(1) for k, _ in batch] for r in (0, 1)]
    assert not set(keys[0]) & set(keys[1]) and len(keys[0]) == len(keys[1]) == 16


def test_a_stream_started_mid_epoch_decodes_only_what_it_returns(jpegs, monkeypatch):
    full = list(stream(jpegs).epoch(0))
    decoded = []
    original = folders._Decode.__getitem__
    monkeypatch.setattr(folders._Decode, "__getitem__",
                        lambda self, key: decoded.append(key[0]) or original(self, key))
    s = stream(jpegs)
    tail = list(s.epoch(0, start_step=2))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(tail, full[2:]))
    assert sorted(decoded) == sorted(k for batch in list(s.keys(0))[2:] for k, _ in batch)


def test_an_unreadable_file_is_named_or_skipped(tmp_path):
    write_jpegs(tmp_path, 12, size=(30, 40))
    good = (tmp_path / "c1" / "00001.jpg").read_bytes()
    (tmp_path / "c1" / "00004.jpg").write_bytes(good[:200])  # truncated JPEG
    data = load_dataset("imagefolder", "train", str(tmp_path))
    with pytest.raises(BadImageError, match=r"c1/00004\.jpg is not a readable image"):
        list(FolderStream(data, 10, torch.zeros(3), torch.ones(3), 16).epoch(0))
    with pytest.raises(BadImageError, match=r"00004\.jpg"):  # evaluation too
        list(data.eval_batches(16, 4, 1.0))
    data = load_dataset("imagefolder", "train", str(tmp_path), skip_bad_images=True)
    s = FolderStream(data, 10, torch.zeros(3), torch.ones(3), 16)
    (x, y), = list(s.epoch(0))
    assert s.bad_images == 1 and x.shape == (9, 3, 16, 16) and len(y) == 9
    assert sum(len(b[1]) for b in data.eval_batches(16, 4, 1.0)) == 9


def test_normalisation_of_a_folder(tmp_path):
    write_jpegs(tmp_path, 20, size=(30, 40))
    own = load_splits("imagefolder", str(tmp_path))
    imagenet = load_splits("imagefolder", str(tmp_path), normalization="imagenet")
    assert imagenet.mean.tolist() == pytest.approx([0.485, 0.456, 0.406]) and imagenet.eval_crop is None
    x = torch.cat([x for x, _ in own.train.eval_batches(64, 64, 1.0)]).double() / 255
    np.testing.assert_allclose(own.mean, x.mean((0, 2, 3)), atol=1e-4)  # all 16 of them sampled
    np.testing.assert_allclose(own.std, x.permute(1, 0, 2, 3).reshape(3, -1).std(1, unbiased=False), atol=1e-4)


def test_two_torchrun_ranks_read_disjoint_halves_of_each_global_batch(jpegs, tmp_path):
    script = tmp_path / "read.py"
    script.write_text(f"""
import torch, torch.distributed as dist
from nasops.data import load_dataset, FolderStream
dist.init_process_group("gloo")
r, w = dist.get_rank(), dist.get_world_size()
data = load_dataset("imagefolder", "train", {jpegs!r}, workers=1)
s = FolderStream(data, 8, torch.full((3,), 0.5), torch.full((3,), 0.25), 24, seed=3, flip=True,
                 autoaugment=True, rank=r, world=w)
torch.save([b for b in s.epoch(1)], {str(tmp_path)!r} + f"/rank{{r}}.pt")
dist.destroy_process_group()
""")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(script)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for step, (x, y) in enumerate(stream(jpegs).epoch(1)):
        (x0, y0), (x1, y1) = ranks[0][step], ranks[1][step]
        assert len(y0) == len(y1) == 4
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def peak_rss_mib(args, cwd):
    """Peak resident memory (MiB) of the largest process of `python -m nasops.train args`
    (its DataLoader workers included), measured from a fresh parent."""
    probe = ("import resource, subprocess, sys; "
             "subprocess.run([sys.executable, '-m', 'nasops.train', *sys.argv[1:]], check=True, "
             "stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    # glibc: large blocks from mmap, returned when freed, so the peak follows live memory rather
    # than heap fragmentation (without it the peak of one run varies by ~50 MiB with batch sizes)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                         cwd=cwd, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.split()[-1]) / 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    """One epoch on 480 JPEGs of 256-320 px against four epochs on 120 (the same 8 steps: the
    allocator's peak grows with the sub-networks a run has trained, so the steps are held
    equal): holding the decoded images would add ~65 MiB (260 more x 3 x 288^2 bytes);
    streaming adds nothing. One run's peak varies by up to ~60 MiB between identical runs
    (measured: 791-858 MiB for 120 images, 797-856 for 480), so each is the lower of two runs."""
    rss = {}
    for count, epochs in ((120, 4), (480, 1)):  # 86 and 346 training images, batch 40
        write_jpegs(tmp_path / f"data{count}", count, seed=count)
        peaks = []
        for run in range(2):
            run_dir = tmp_path / f"run{count}-{run}"
            peaks.append(peak_rss_mib(
                ["--no-progress", "--run-dir", str(run_dir), "dataset=imagefolder",
                 f"data_dir={tmp_path / f'data{count}'}", f"epochs={epochs}", "batch_size=40",
                 "holdout=0.1", "workers=2", "image_size=32", "eval_every=0", "calib_images=64",
                 "eval_batch_size=64"], tmp_path))
            assert json.loads((run_dir / "final.json").read_text())["steps"] == 8
        rss[count] = min(peaks)
    assert rss[480] < rss[120] + 30, rss


@pytest.mark.slow
def test_attentive_nas_trains_on_jpegs_with_workers_and_bf16_and_resumes_mid_epoch(tmp_path):
    from nasops.train import loop as train_mod
    from nasops.utils import cpu
    write_jpegs(tmp_path / "data", 200, classes=4)
    # (bf16 where the CPU runs it natively: elsewhere training refuses it, test_train.py)
    amp = "bf16" if cpu.native_dtypes()["bf16"] else "none"
    cfg = train_mod.check_config(dict(
        train_mod.DEFAULTS, recipe="test", space="attentive_nas", dataset="imagefolder",
        data_dir=str(tmp_path / "data"), workers=2, amp=amp, batch_size=4, epochs=1,
        num_sampled=1, eval_every=0, flip=True, autoaugment=True, n_prior=2000, log_every=1,
        calib_images=8, eval_batch_size=8))
    full = train_mod.train(cfg, str(tmp_path / "full"), progress=False, stop_after_steps=3)
    part = train_mod.train(cfg, str(tmp_path / "part"), progress=False, stop_after_steps=1)
    assert full == {"interrupted": 3} and part == {"interrupted": 1}
    resumed = train_mod.train(cfg, str(tmp_path / "part"), resume=True, progress=False,
                              stop_after_steps=2)
    assert resumed == {"interrupted": 3}
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("full", "part"))
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (0, 3)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    lines = [json.loads(l) for l in open(tmp_path / "part" / "metrics.jsonl") if '"lr"' in l]
    assert [l["step"] for l in lines] == [1, 2, 3] and all(np.isfinite(l["loss_largest"]) for l in lines)
