"""Tasks read from files: torchvision folders (offline error, real reader), .npz in both namings, image folders."""

import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from conftest import compose_cfg
from transferlab.errors import ConfigError
from transferlab.tasks import build_task
from transferlab.tasks.vision import DATASETS, _online, needed_files


def task(tmp_path: Path, *overrides: str, seed: int = 0):
    cfg = compose_cfg(list(overrides), tmp_path / "run")
    return build_task(cfg.target, key="target", data_seed=seed, data_dir=str(tmp_path / "data"))


def digits_uint8():
    d = load_digits()
    return (d.images * (255 / 16)).round().astype(np.uint8), d.target.astype(np.int64)


# ------------------------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("target", ["mnist", "cifar10_animals", "svhn"])
def test_missing_torchvision_files_without_download_name_file_and_folder(tmp_path, target):
    with pytest.raises(ConfigError) as e:
        task(tmp_path, f"target={target}", "target.download=false")
    (line,) = e.value.problems
    folder, files, _ = needed_files(DATASETS[compose_cfg([f"target={target}"], tmp_path / "r").target.dataset],
                                    (tmp_path / "data").resolve())
    assert str(folder) in line and all(f in line for f in files) and "download=false" in line


def test_offline_download_fails_fast_with_one_clear_line(tmp_path):
    folder, files, url = needed_files(DATASETS["cifar10"], tmp_path)
    if _online(url):
        pytest.skip("a network answers here; this test must not download CIFAR-10")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        task(tmp_path, "target=cifar10", "target.classes=[cat,dog]")
    assert time.perf_counter() - t0 < 15
    (line,) = e.value.problems
    assert "cifar-10-python.tar.gz" in line and str((tmp_path / "data").resolve()) in line and url in line
    assert not list((tmp_path / "data").glob("*.tar.gz"))  # nothing half-downloaded


def test_class_typo_is_reported_before_any_file_access(tmp_path):
    with pytest.raises(ConfigError, match=r"'kitten' is not a class"):
        task(tmp_path, "target=cifar10", "target.classes=[cat,kitten]")
    assert not (tmp_path / "data").exists()


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """MNIST's IDX format: magic (0, 0, type=0x08 uint8, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_mnist_files_in_data_dir_are_read_by_torchvision_with_class_subset_and_adaptation(tmp_path):
    """No download: write real IDX files (digits upscaled to 28x28) where torchvision's MNIST reader looks."""
    x, y = digits_uint8()
    x28 = np.pad(np.kron(x, np.ones((3, 3), dtype=np.uint8)), ((0, 0), (2, 2), (2, 2)))  # 24x24 -> 28x28
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, sl in (("train", slice(0, 1400)), ("t10k", slice(1400, None))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x28[sl])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y[sl])
    t = task(tmp_path, "target=mnist_5to9", "target.n_per_class=10", "target.channels=3", "target.image_size=32")
    assert t.class_names == ["5", "6", "7", "8", "9"] and t.input_shape == (3, 32, 32)
    assert len(t.test_y) == int(np.isin(y[1400:], [5, 6, 7, 8, 9]).sum())  # MNIST's own test split
    assert t.origins["test"][0] == "test" and t.origins["val"][0] == "train"
    assert np.bincount(t.subset()[1].numpy()).tolist() == [10] * 5
    assert 0.0 <= float(t.train_x.min()) and float(t.train_x.max()) <= 1.0


# ------------------------------------------------------------------------------------------------- npz


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_x_y_naming_nhw_uint8_with_test_split(tmp_path):
    x, y = digits_uint8()
    p = _save(tmp_path / "d.npz", x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
    t = task(tmp_path, "target=npz", f"target.path={p}", "target.classes=[1,7]", "target.n_per_class=5")
    assert t.input_shape == (1, 8, 8) and t.class_names == ["1", "7"]
    assert len(t.test_y) == int(np.isin(y[1400:], [1, 7]).sum()) and t.info["naming"] == "x_/y_"
    assert float(t.train_x.max()) <= 1.0 and float(t.train_x.max()) > 0.9  # uint8 scaled to [0, 1]
    assert len(t.val_y) > 0 and t.origins["val"][0] == "train"  # val carved, test is the file's own


def test_npz_medmnist_naming_nhwc_labels_n_by_1_and_names_in_file(tmp_path):
    x, y = digits_uint8()
    rgb = np.repeat(x[..., None], 3, axis=-1)  # N x H x W x 3, as MedMNIST's colour sets
    lab = y[:, None]  # MedMNIST stores labels as N x 1
    p = _save(tmp_path / "med.npz", train_images=rgb[:1000], train_labels=lab[:1000], val_images=rgb[1000:1300],
              val_labels=lab[1000:1300], test_images=rgb[1300:], test_labels=lab[1300:],
              class_names=np.array([f"c{i}" for i in range(10)]))
    t = task(tmp_path, "target=npz", f"target.path={p}", "target.channels=1")
    assert t.input_shape == (1, 8, 8) and t.class_names[:2] == ["c0", "c1"] and t.info["naming"] == "medmnist"
    assert (len(t.train_y), len(t.val_y), len(t.test_y)) == (1000, 300, 497)
    assert {s: a for s, (a, _) in t.origins.items()} == {"train": "train", "val": "val", "test": "test"}


def test_npz_feature_vectors(tmp_path):
    x, y = digits_uint8()
    p = _save(tmp_path / "f.npz", x_train=x.reshape(len(x), -1).astype(np.float64), y_train=y.astype(np.float32))
    t = task(tmp_path, "target=npz", f"target.path={p}", "target.normalize=pool", "backbone=mlp")
    assert t.input_shape == (64,) and len(t.test_y) > 0  # test carved by test_fraction


@pytest.mark.parametrize("arrays,match", [
    ({"images": np.zeros((4, 8, 8))}, r"an .npz with keys x_train,y_train.*or train_images,train_labels.*"
                                      r"it has \['images'\]"),
    ({"x_train": np.zeros((4, 8, 8)), "y_train": np.zeros((4, 3), int)}, "multi-label files are not supported"),
    ({"x_train": np.zeros((4, 8, 8)), "y_train": np.zeros(3, int)}, "as many y_train as x_train"),
    ({"x_train": np.zeros((4, 8, 8)), "y_train": np.zeros(4, int), "x_test": np.zeros((4, 8, 8))},
     "both x_test and y_test, or neither"),
])
def test_bad_npz_files_give_one_clear_error(tmp_path, arrays, match):
    p = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=match) as e:
        task(tmp_path, "target=npz", f"target.path={p}")
    assert len(e.value.problems) == 1


def test_npz_missing_path_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"target.path='/nope/x.npz': an existing path"):
        task(tmp_path, "target=npz", "target.path=/nope/x.npz")
    with pytest.raises(ConfigError, match=r"target.path=None"):
        task(tmp_path, "target=npz")


# ---------------------------------------------------------------------------------------- image folders


def _write_images(root: Path, x: np.ndarray, y: np.ndarray, names=("zero", "one", "two"), size=None) -> None:
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img)
        if size is not None:
            im = im.resize(size(i))
        im.save(folder / f"{i}.png")


def test_image_folder_with_explicit_splits(tmp_path):
    x, y = digits_uint8()
    keep = np.flatnonzero(y < 3)[:240]
    x, y = x[keep], y[keep]
    _write_images(tmp_path / "imgs" / "train", x[:160], y[:160])
    _write_images(tmp_path / "imgs" / "val", x[160:200], y[160:200])
    _write_images(tmp_path / "imgs" / "test", x[200:], y[200:])
    t = task(tmp_path, "target=image_folder", f"target.root={tmp_path / 'imgs'}", "target.n_per_class=4")
    assert t.class_names == ["one", "two", "zero"] and t.input_shape == (1, 8, 8)  # grey PNGs stay 1 channel
    assert (len(t.train_y), len(t.val_y), len(t.test_y)) == (160, 40, 40) and len(t.train_indices) == 12
    # pixels survive the round trip through PNG exactly
    first = np.asarray(Image.open(sorted((tmp_path / "imgs" / "val" / "one").iterdir())[0]))
    assert any(np.array_equal((v[0].numpy() * 255).round().astype(np.uint8), first) for v in t.val_x)


def test_image_folder_without_splits_is_split_by_ratio_with_split_seed(tmp_path):
    x, y = digits_uint8()
    keep = np.flatnonzero(y < 3)[:200]
    # different sizes and RGB: image_size is required and applied
    rgb = np.repeat(x[keep][..., None], 3, axis=-1)
    _write_images(tmp_path / "imgs", rgb, y[keep], size=lambda i: (8 + i % 3, 8 + i % 2))
    with pytest.raises(ConfigError, match=r"target.image_size=None: an integer: the images have"):
        task(tmp_path, "target=image_folder", f"target.root={tmp_path / 'imgs'}")
    args = ["target=image_folder", f"target.root={tmp_path / 'imgs'}", "target.image_size=12"]
    a = task(tmp_path, *args)
    b = task(tmp_path, *args, "target.split_seed=1")
    assert a.input_shape == (3, 12, 12)
    assert len(a.test_y) == 50 and len(a.val_y) == 30 and len(a.train_y) == 120  # 0.25 then 0.2 of the rest
    assert a.origins["test"][0] == a.origins["val"][0] == "train"
    assert not np.array_equal(a.origins["test"][1], b.origins["test"][1])
    assert np.array_equal(a.origins["test"][1], task(tmp_path, *args, seed=5).origins["test"][1])


def test_image_folder_rejects_class_missing_from_train(tmp_path):
    x, y = digits_uint8()
    _write_images(tmp_path / "imgs" / "train", x[:30], y[:30] % 2)
    _write_images(tmp_path / "imgs" / "test", x[30:40], y[30:40] % 3)
    with pytest.raises(ConfigError, match=r"test/ has \['two'\], not in train/"):
        task(tmp_path, "target=image_folder", f"target.root={tmp_path / 'imgs'}")
    (tmp_path / "imgs" / "train").rename(tmp_path / "imgs" / "training")
    with pytest.raises(ConfigError, match=r"a train/ folder next to val/ and test/"):
        task(tmp_path, "target=image_folder", f"target.root={tmp_path / 'imgs'}")
