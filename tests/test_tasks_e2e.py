"""Bring-your-own-data end to end: source on one .npz file, target on another (different classes, same shape)."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from transferlab.errors import ConfigError
from transferlab.run.experiment import run
from transferlab.run.setup import prepare


def _digit_files(folder: Path) -> tuple[Path, Path]:
    """Digits 0-4 as x_/y_ NHW uint8; digits 5-9 as MedMNIST-style NHWC with N x 1 labels and names."""
    d = load_digits()
    x = (d.images * (255 / 16)).round().astype(np.uint8)
    a, b = d.target < 5, d.target >= 5
    src = folder / "digits_0to4.npz"
    np.savez(src, x_train=x[a][:600], y_train=d.target[a][:600], x_test=x[a][600:], y_test=d.target[a][600:])
    tgt = folder / "digits_5to9.npz"
    xb, yb = x[b][..., None], (d.target[b] - 5)[:, None]
    np.savez(tgt, train_images=xb[:500], train_labels=yb[:500], val_images=xb[500:650], val_labels=yb[500:650],
             test_images=xb[650:], test_labels=yb[650:], class_names=np.array([str(i) for i in range(5, 10)]))
    return src, tgt


def test_source_npz_to_target_npz_runs_end_to_end(make_cfg, tmp_path):
    src, tgt = _digit_files(tmp_path)
    args = ["source=npz", f"source.path={src}", "source.name=digits_0to4_npz", "target=npz", f"target.path={tgt}",
            "target.name=digits_5to9_npz", "target.n_per_class=10", "transfer.cut=2", "transfer.freeze=1"]
    cfg = make_cfg(*args, run="byod")
    rec = run(cfg)
    assert rec["status"] == "ok" and rec["source"] == "digits_0to4_npz" and rec["target"] == "digits_5to9_npz"
    assert rec["source_cache"] == "miss" and rec["source_metrics"]["test/acc"] > 0.5  # source really learned
    assert rec["n_train"] == 50 and len(rec["train_indices"]) == 50
    with np.load(tgt) as f:  # tested on the file's own test images (246); the target learned too (chance: 0.2)
        assert rec["n_test"] == len(f["test_labels"]) and rec["metrics"]["test/acc"] > 0.5
    saved = json.loads((Path(cfg.paths.output_dir) / "result.json").read_text())
    assert saved["config"]["target"]["path"] == str(tgt)
    assert saved["target_data"]["path"] == str(tgt) and saved["target_data"]["naming"] == "medmnist"
    assert saved["target_data"]["input"]["native_shape"] == [1, 8, 8]
    # Same config, edited source file: the cached source model must not be reused.
    with np.load(src) as f:
        arrays = dict(f)
    np.savez(src, **{**arrays, "x_train": arrays["x_train"][::-1].copy(), "y_train": arrays["y_train"][::-1].copy(),
                     "x_test": 255 - arrays["x_test"]})
    again = run(make_cfg(*args, run="edited"))  # identical config: only the data differs
    assert again["source_cache"] == "miss" and again["source_ckpt"] != rec["source_ckpt"]


def test_task_keys_set_the_backbone_input_shape(make_cfg):
    both = ["target.channels=3", "target.image_size=16", "source.channels=3", "source.image_size=16"]
    prep = prepare(make_cfg(*both))
    assert prep.target.input_shape == prep.source.input_shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="source"):
        prepare(make_cfg("target.channels=3", "target.image_size=16"))  # source left at 1 x 8 x 8


def test_one_channel_digits_become_resnet_inputs_by_task_keys(make_cfg):
    """The task, not the backbone, turns 1 x 8 x 8 digits into the 3 x 32 x 32 ImageNet-normalised input."""
    keys = [f"{side}.{k}" for side in ("source", "target")
            for k in ("channels=3", "image_size=32", "normalize=imagenet")]
    prep = prepare(make_cfg("backbone=resnet18", "transfer.cut=3", *keys))
    assert prep.target.input_shape == prep.source.input_shape == (3, 32, 32)
    assert prep.target.info["input"]["mean"] == [0.485, 0.456, 0.406]
