"""CIFAR-10 from a local ``cifar-10-batches-py`` folder: a small synthetic folder in the exact format of the real one
(python pickles ``data_batch_1..5``, ``test_batch``, ``batches.meta`` with the same keys and dtypes), written here;
class / n selection, pixel layout, preprocessing, problems on it, and the experiments' ``--scale paper`` settings
passing ``data_path`` through."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import pyrod
from pyrod.problems.data import cifar10

PER_BATCH = 30
LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar_folder(root, per_batch=PER_BATCH, seed=0):
    """Write ``root/cifar-10-batches-py`` like the extracted cifar-10-python.tar.gz; returns (folder, batches) with
    batches[name] = (data uint8 (N, 3072), labels list of int)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for j, name in enumerate(names):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        label = (f"training batch {j + 1} of 5" if name != "test_batch" else "testing batch 1 of 1").encode()
        d = {b"batch_label": label, b"labels": labels, b"data": data,
             b"filenames": [f"img_{j}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": LABEL_NAMES, b"num_vis": 3072}, fh,
                    protocol=2)
    return folder, batches


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar_folder(tmp_path_factory.mktemp("cifar"))


def _expected(batches, names, classes, n):
    xs, ys = [], []
    for name in names:
        data, labels = batches[name]
        for x, y in zip(data, labels, strict=True):
            if y < classes and len(ys) < n:
                xs.append(x)
                ys.append(y)
    return np.stack(xs).reshape(-1, 3, 32, 32) / 255.0, np.array(ys)


def test_raw_pixels_layout_and_selection_across_batches(cifar):
    folder, batches = cifar
    # n larger than the class-filtered content of one batch: read on into data_batch_2 (and 3), in order
    X, Y = cifar10(classes=4, n=25, path=folder, center=None, standardize=False)
    assert X.shape == (25, 3, 32, 32) and X.dtype == torch.float64 and Y.dtype == torch.int64
    Xe, Ye = _expected(batches, [f"data_batch_{i}" for i in range(1, 6)], 4, 25)
    np.testing.assert_array_equal(Y.numpy(), Ye)
    np.testing.assert_array_equal(X.numpy(), Xe)       # row-major: 1024 red, 1024 green, 1024 blue
    assert int(Y.max()) < 4 and sorted(set(Y.tolist())) == [0, 1, 2, 3]
    # the red plane of the first image is the first 1024 bytes of its row
    first = batches["data_batch_1"][0][[i for i, y in enumerate(batches["data_batch_1"][1]) if y < 4][0]]
    np.testing.assert_array_equal(X[0, 0].numpy(), first[:1024].reshape(32, 32) / 255.0)


def test_preprocessing_test_split_and_parent_folder(cifar):
    folder, batches = cifar
    X, Y = cifar10(classes=10, n=40, path=folder.parent)            # the parent of the extracted folder works
    assert X.shape == (40, 3, 32, 32)
    np.testing.assert_allclose(X.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(X.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, rtol=1e-12)
    Xt, Yt = cifar10(classes=10, n=None, path=folder, split="test", center=None, standardize=False)
    np.testing.assert_array_equal(Yt.numpy(), batches["test_batch"][1])
    assert Xt.shape == (PER_BATCH, 3, 32, 32)


def test_errors_name_the_bad_value(cifar, tmp_path):
    folder, _ = cifar
    with pytest.raises(ValueError, match="data_path"):
        cifar10(classes=2, n=4, path=None)
    with pytest.raises(FileNotFoundError, match="missing"):
        cifar10(classes=2, n=4, path=tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar10(classes=2, n=4, path=broken)


@pytest.mark.parametrize("model,kw", [("mlp", {"width": 8}), ("cnn", {"channels": (4, 4)})])
def test_problem_on_the_folder(cifar, model, kw):
    folder, _ = cifar
    prob = pyrod.problem(model=model, data="cifar10", data_path=str(folder), classes=3, n=12, loss="mse",
                         dtype="float64", device="cpu", seed=0, model_kwargs=kw)
    w = prob.w0
    L = float(prob.loss(w))
    assert np.isfinite(L) and prob.grad(w).shape == (prob.dim,)


def _paper_cifar_experiments():
    from pyrod.experiments import EXPERIMENTS, get_experiment
    return [name for name in EXPERIMENTS if get_experiment(name).DEFAULTS["paper"].get("data") == "cifar10"]


class _Built(Exception):
    pass


@pytest.mark.parametrize("name", _paper_cifar_experiments())
def test_paper_scale_passes_data_path(cifar, tmp_path, monkeypatch, name):
    """``--scale paper`` with data_path: the experiment builds its CIFAR-10 problem from that folder (stopped right
    after the first problem is built; n overridden to fit the synthetic folder)."""
    from pyrod.experiments import run_experiment

    folder, _ = cifar
    real = pyrod.problem
    seen = []

    def spy(**kw):
        prob = real(**{**kw, "device": "cpu"})
        seen.append((kw, prob))
        raise _Built
    monkeypatch.setattr(pyrod, "problem", spy)
    with pytest.raises(_Built):
        run_experiment(name, scale="paper", out=tmp_path / name, overrides={"data_path": str(folder), "n": 20})
    kw, prob = seen[0]
    assert kw["data"] == "cifar10" and kw["data_path"] == str(folder)
    assert prob.dim > 0
