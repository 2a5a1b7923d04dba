"""Inputs are checked at setup: NaN/inf anywhere, and float images outside [0, 1], are one clear error.

Before these checks a NaN in every test image gave `status: ok` with a NaN test loss, an inf in val steered model
selection, and 0..255 float images trained silently on inputs 255 times too large.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris

from conftest import cli_problems, compose_cfg, run_cli
from transferlab.errors import ConfigError
from transferlab.tasks import build_task
from transferlab.tasks.arrays import task_from_arrays


def digits01() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as float32 N x 8 x 8 in [0, 1] (valid images, same shape as the digits source)."""
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def task(tmp_path: Path, *overrides: str):
    cfg = compose_cfg(list(overrides), tmp_path / "run")
    return build_task(cfg.target, key="target", data_seed=0, data_dir=str(tmp_path / "data"))


def one_line(err: pytest.ExceptionInfo) -> str:
    (line,) = err.value.problems
    assert "\n" not in line and ": " in line, line
    return line


# --------------------------------------------------------------------------------------------- non-finite


def test_nan_in_x_test_fails_the_cli_with_exit_2_one_line_and_nothing_written(tmp_path):
    x, y = digits01()
    x_test = x[1400:].copy()
    x_test[[3, 10, 42], 4, 4] = np.nan
    p = npz(tmp_path / "data.npz", x_train=x[:1400], y_train=y[:1400], x_test=x_test, y_test=y[1400:])
    out = run_cli("target=npz", f"target.path={p}", "target.name=nan_test", "target.n_per_class=5",
                  "pretrain.max_epochs=1", "train.max_epochs=1", cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = cli_problems(out.stderr)
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("target=") and "x_test (test split)" in lines[0], lines
    assert f"3 of {len(x_test)} examples hold NaN/inf" in lines[0] and "rows 3, 10, 42" in lines[0], lines
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("*.ckpt"))
    assert not (tmp_path / "outputs" / "cache").exists()


def test_inf_in_x_val_is_one_error_naming_the_split(tmp_path):
    x, y = digits01()
    x_val = x[1000:1400].copy()
    x_val[7] = np.inf  # a whole image
    x_val[9, 0, 0] = -np.inf
    p = npz(tmp_path / "d.npz", x_train=x[:1000], y_train=y[:1000], x_val=x_val, y_val=y[1000:1400])
    with pytest.raises(ConfigError) as e:
        task(tmp_path, "target=npz", f"target.path={p}")
    line = one_line(e)
    assert line.startswith("target=") and "x_val (val split)" in line
    assert f"2 of {len(x_val)} examples hold NaN/inf (65 values; rows 7, 9)" in line, line


def test_nan_in_a_train_array_is_found_for_any_task_kind(tmp_path):
    """task_from_arrays is where every kind ends: no file names, the split is still named."""
    x, y = digits01()
    x = x[:, None].copy()
    x[5, 0, 1, 1] = np.nan
    cfg = compose_cfg(["target=digits_all"], tmp_path / "run").target
    with pytest.raises(ConfigError) as e:
        task_from_arrays(cfg, key="source", data_seed=0, x=x, y=y, class_names=[str(i) for i in range(10)])
    line = one_line(e)
    assert line.startswith("source=") and "train inputs: 1 of 1797 examples hold NaN/inf (1 value; rows 5)" in line


@pytest.mark.parametrize("case", ["beyond-float32", "tiny-std"])
def test_inputs_that_overflow_float32_are_an_error(tmp_path, case):
    """Finite in the file is not enough: float64 values past float32's range, or a normalisation with a tiny
    std, would reach the model as inf."""
    x, y = digits01()
    if case == "beyond-float32":
        feats = x.reshape(len(x), -1).astype(np.float64)
        feats[11, 3] = 1e300
        p = npz(tmp_path / "f.npz", x_train=feats, y_train=y)
        with pytest.raises(ConfigError) as e:
            task(tmp_path, "target=npz", f"target.path={p}", "backbone=mlp")
        assert "x_train (train split): 1 of 1797 examples" in one_line(e) and "float32" in one_line(e)
    else:
        p = npz(tmp_path / "d.npz", x_train=x, y_train=y)
        with pytest.raises(ConfigError) as e:
            task(tmp_path, "target=npz", f"target.path={p}", "target.normalize={mean:[0.5],std:[1e-45]}")
        assert one_line(e).startswith("target.normalize=") and "NaN/inf" in one_line(e)


# ------------------------------------------------------------------------------------------- image range


@pytest.mark.parametrize("normalize", ["none", "pool", "imagenet", "{mean:[0.5],std:[0.25]}"])
def test_float_images_in_0_255_are_an_error_with_the_fix(tmp_path, normalize):
    """Every normalize value but prenormalized expects [0, 1] images (statistics are for that range)."""
    x, y = digits01()
    p = npz(tmp_path / "d.npz", x_train=x[:1400] * 255, y_train=y[:1400], x_test=x[1400:] * 255, y_test=y[1400:])
    extra = ["target.channels=3"] if normalize == "imagenet" else []
    with pytest.raises(ConfigError) as e:
        task(tmp_path, "target=npz", f"target.path={p}", f"target.normalize={normalize}", *extra)
    line = one_line(e)
    assert line.startswith("target=") and "x_train (train split): float32 images in [0, 255]" in line, line
    assert "x_test (test split): float32 images in [0, 255]" in line
    assert "store uint8" in line and "divide by 255" in line and "target.normalize=prenormalized" in line


def test_prenormalized_takes_standardised_images_as_they_are(tmp_path):
    x, y = digits01()
    z = ((x - x.mean()) / x.std()).astype(np.float32)  # the user's own standardisation: about -0.8 .. 1.8
    p = npz(tmp_path / "z.npz", x_train=z, y_train=y)
    with pytest.raises(ConfigError, match=r"set target.normalize=prenormalized"):
        task(tmp_path, "target=npz", f"target.path={p}")
    t = task(tmp_path, "target=npz", f"target.path={p}", "target.normalize=prenormalized")
    assert t.info["input"]["normalize"] == "prenormalized" and t.info["input"]["mean"] is None
    pool = torch.as_tensor(z[t.origins["train"][1]])[:, None]
    assert torch.equal(t.train_x, pool)  # used exactly as given
    assert float(t.train_x.min()) < 0 and float(t.train_x.max()) > 1


def test_feature_vectors_have_no_range_check(tmp_path):
    """Iris in centimetres (about 0.1 .. 7.9) is a valid tabular task, with or without standardisation.
    (A guard against over-reach: this also passed before the checks existed.)"""
    iris = load_iris()
    p = npz(tmp_path / "iris.npz", x_train=iris.data.astype(np.float32), y_train=iris.target)
    for normalize in ("none", "pool"):
        t = task(tmp_path, "target=npz", f"target.path={p}", f"target.normalize={normalize}", "backbone=mlp")
        assert t.input_shape == (4,)
    assert float(task(tmp_path, "target=iris", "target.normalize=none").train_x.max()) > 1
