"""Dataset readers on small files written here in each real format, splits and batches."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from nasops.data import BatchStream, ImageSet, load_dataset, load_splits, random_crop, read_idx

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


@pytest.fixture
def idx_dir(tmp_path):
    g = np.random.default_rng(0)
    arrays = {}
    for prefix, n, gz in (("train", 12, True), ("t10k", 5, False)):
        images, labels = g.integers(0, 256, (n, 28, 28)), g.integers(0, 10, n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{'.gz' if gz else ''}", images, gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{'.gz' if gz else ''}", labels, gz)
        arrays[prefix] = (images, labels)
    return tmp_path, arrays


def test_fashion_mnist_idx_files(idx_dir):
    root, arrays = idx_dir
    for split, prefix in (("train", "train"), ("test", "t10k")):
        d = load_dataset("fashion-mnist", split, str(root))
        images, labels = arrays[prefix]
        assert d.images.shape == (len(labels), 1, 28, 28) and d.images.dtype == torch.uint8
        np.testing.assert_array_equal(d.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(d.labels.numpy(), labels)
        assert len(d.classes) == 10


def test_malformed_idx_files_raise(idx_dir, tmp_path):
    root, _ = idx_dir
    with open(root / "t10k-images-idx3-ubyte", "r+b") as f:
        f.write(b"\x00\x00\x09\x03")  # not unsigned bytes
    with pytest.raises(ValueError, match="not an IDX file"):
        load_dataset("fashion-mnist", "test", str(root))
    with pytest.raises(ValueError, match="6 bytes follow"):
        read_idx("x", bytes([0, 0, 8, 1, 0, 0, 0, 9]) + b"\x00" * 6)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*expected the IDX files"):
        load_dataset("fashion-mnist", "train", str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("fashion-mnist", "train", str(tmp_path / "missing"))


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_installed():
    d = load_dataset("fashion-mnist", "test")
    assert d.images.shape == (10000, 1, 28, 28)
    assert sorted(torch.bincount(d.labels).tolist()) == [1000] * 10


def write_cifar(root, g):
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = g.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = g.integers(0, 10, 4).tolist()
        with open(root / name, "wb") as f:  # the layout of the published python batches
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * 4}, f, protocol=2)
        batches[name] = (data, labels)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return batches


def test_cifar10_batches(tmp_path):
    batches = write_cifar(tmp_path, np.random.default_rng(1))
    train = load_dataset("cifar10", "train", str(tmp_path))
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images.numpy(), data.reshape(-1, 3, 32, 32))
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.classes[3] == "c3"
    test = load_dataset("cifar10", "test", str(tmp_path))
    np.testing.assert_array_equal(test.images.numpy().reshape(4, -1), batches["test_batch"][0])


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_code_and_bad_batches(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(2))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset("cifar10", "test", str(tmp_path))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"uint8 \[N, 3072\]"):
        load_dataset("cifar10", "test", str(tmp_path))
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", "train", str(tmp_path))


def test_digits_and_splits():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.images.shape[1:] == (1, 8, 8) and int(train.images.max()) == 255
    s1, s2 = load_splits("digits", holdout=0.1), load_splits("digits", holdout=0.1)
    assert torch.equal(s1.holdout.images, s2.holdout.images)  # fixed
    assert len(s1.train) + len(s1.holdout) == len(train)
    rows = {r.tobytes() for r in s1.train.images.numpy()}
    held = [r.tobytes() in rows for r in s1.holdout.images.numpy()]
    assert sum(held) < 0.05 * len(held)  # disjoint images (up to the set's own duplicates)
    other = load_splits("digits", holdout=0.1, holdout_seed=1)
    assert not torch.equal(other.holdout.labels, s1.holdout.labels)
    pixels = s1.train.images.double() / 255
    assert float(s1.mean[0]) == pytest.approx(float(pixels.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="holdout = 1.5"):
        load_splits("digits", holdout=1.5)
    with pytest.raises(ValueError, match=r"normalization = 'imnet' is not allowed; allowed: \['dataset', 'imagenet', None\]"):
        load_splits("digits", normalization="imnet")
    with pytest.raises(ValueError, match="needs RGB images; digits has 1 channel"):
        load_splits("digits", normalization="imagenet")
    with pytest.raises(ValueError, match=r"eval_crop = 1.5 must be null or a fraction in \(0, 1\]"):
        load_splits("digits", eval_crop=1.5)
    with pytest.raises(ValueError, match="dataset = 'mnist' is not registered"):
        load_dataset("mnist")


def test_random_crop_is_a_shifted_window():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 255, (16, 2, 7, 7), dtype=torch.uint8)
    out = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(16):
        assert any(torch.equal(out[n], padded[n, :, dy:dy + 7, dx:dx + 7])
                   for dy in range(5) for dx in range(5))


def test_batches_are_deterministic_and_sharded():
    g = np.random.default_rng(5)
    data = ImageSet(torch.from_numpy(g.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)),
                    torch.from_numpy(g.integers(0, 3, 40)), ["a", "b", "c"])
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    one = BatchStream(data, 8, mean, std, seed=7, flip=True)
    x, y = one.batch(2, 3)
    x2, y2 = BatchStream(data, 8, mean, std, seed=7, flip=True).batch(2, 3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    parts = [BatchStream(data, 8, mean, std, seed=7, flip=True, rank=r, world=2).batch(2, 3)
             for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert not torch.equal(one.batch(3, 3)[1], y) or not torch.equal(one.batch(3, 3)[0], x)
    assert one.steps_per_epoch == 5
    plain = BatchStream(data, 8, mean, std, seed=7, augment=False)
    xs, ys = plain.batch(0, 0)
    order = torch.cat([plain.batch(0, s)[1] for s in range(5)])
    assert sorted(order.tolist()) == sorted(data.labels.tolist())  # one epoch: each image once
    assert float(xs.min()) >= (0 - 0.5) / 0.25 - 1e-6
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        BatchStream(data, 9, mean, std, world=2)
    with pytest.raises(ValueError, match="exceeds the 40 training images"):
        BatchStream(data, 64, mean, std)
