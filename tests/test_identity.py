"""When are two runs the same? Identity is every key but the neutral ones (each shown neutral here), plus the
content of every input file; the scratch baseline has no source; the source cache and resume follow the same rule."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from transferlab.config import flatten
from transferlab.errors import ConfigError
from transferlab.run import identity
from transferlab.run.experiment import run

# A small, fast run (npz target so that a file path and its content take part).
BASE = ["transfer.freeze=1", "target.n_per_class=5", "train.max_epochs=3", "pretrain.max_epochs=2"]


def _npz(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 30)
    x = (rng.random((len(y), 8, 8)) * 0.3 + (y[:, None, None] / 3.0)).clip(0, 1).astype(np.float32)
    np.savez(path, x_train=x, y_train=y)
    return path


def _fp(cfg) -> str:
    return identity.fingerprint(cfg)


# Every neutral key but the lease, changed at once; the test below checks NEUTRAL is covered exactly.
def _neutral_overrides(tmp_path: Path, data: Path) -> list[str]:
    moved = tmp_path / "elsewhere" / "same_bytes.npz"
    moved.parent.mkdir(exist_ok=True)
    shutil.copy(data, moved)
    return [
        "name=another_name",
        f"paths.cache_dir={tmp_path / 'other_cache'}", f"paths.data_dir={tmp_path / 'data2'}",
        "logger=none", "checkpoint.every_s=3600",
        "train.feature_cache=off", "train.feature_cache_max_gb=0.5", "trainer.enable_progress_bar=true",
        "trainer.log_every_n_steps=50",
        "trainer.accelerator=cpu", f"target.path={moved}", "transfer.scores=[]",
    ]


NEUTRAL_COVERED = {"name", "paths", "logger", "checkpoint", "lease", "train.feature_cache",
                   "train.feature_cache_max_gb", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
                   "trainer.accelerator",
                   "target.path", "hydra", "target.root", "source.path", "source.root", "transfer.scores",
                   "group", "tune.stack"}


def test_the_neutral_list_is_exactly_what_the_tests_cover():
    """A key may only be added to NEUTRAL together with a test that shows it cannot change a result."""
    assert set(identity.NEUTRAL) == NEUTRAL_COVERED
    # hydra: not part of a task's config at all; *.root / source.path: the same rule as target.path (bytes hashed),
    # covered by test_input_content_is_identity_and_its_location_is_not for files and the tree test for folders.
    # group: a vectorised group's members equal their separate runs within float tolerance (tests/test_stacked.py:
    # same fingerprint, curves, selection, test metrics, frozen bytes). tune.stack: a tuned point's candidates, stacked
    # or one after the other, equal their separate runs (tests/test_tuning.py, tests/test_cv.py, tests/test_stacked.py).


def test_neutral_keys_change_neither_fingerprint_nor_numbers(tmp_path):
    from transferlab.run.lease import lease_device

    data = _npz(tmp_path / "t.npz")
    common = [*BASE, "source=digits_all", "target=npz", f"target.path={data}", "source.channels=1",
              "target.image_size=8"]
    a_cfg = compose_cfg([*common, "train.feature_cache=on"], tmp_path / "a", tmp_path / "cache_a")
    b_cfg = compose_cfg([*common, *_neutral_overrides(tmp_path, data)], tmp_path / "b", tmp_path / "cache_b")
    lease = ["+lease.slots=1", f"+lease.dir={tmp_path / 'leases'}"]
    c_cfg = compose_cfg([*common, *lease], tmp_path / "c", tmp_path / "cache_c")
    assert _fp(a_cfg) == _fp(b_cfg) == _fp(c_cfg)
    a, b = run(a_cfg), run(b_cfg)
    assert a["fingerprint"] == b["fingerprint"] == _fp(a_cfg)
    assert a["feature_cache"]["status"] == "miss" and b["feature_cache"]["status"] == "off"
    # a scored the copied features before training (from the feature cache's prefix outputs), b did not
    assert b["scores"] is None and a["scores"]["methods"]["logme"]["value"] is not None
    assert a["scores"]["inputs"]["features"]["from"].startswith("feature cache")
    assert a["source_cache"] == b["source_cache"] == "miss"  # two caches, one source model each, same bytes
    # Bit for bit but for the feature cache, which agrees within float tolerance (tests/test_speed.py).
    assert b["metrics"]["val/acc_history"] == a["metrics"]["val/acc_history"]
    assert b["metrics"]["test/acc"] == a["metrics"]["test/acc"]
    assert b["metrics"]["val/loss_history"] == pytest.approx(a["metrics"]["val/loss_history"], abs=1e-5)

    # The lease pins a parallel job to one core and one thread: placement, like another machine's thread count.
    # Float rounding then differs (source pretraining included), far below what another seed changes.
    with lease_device(c_cfg) as slot:
        assert slot == 0
        c = run(c_cfg)
    other_seed = run(compose_cfg([*common, "seed=1"], tmp_path / "d", tmp_path / "cache_c"))
    placement = np.abs(np.subtract(c["metrics"]["val/loss_history"], a["metrics"]["val/loss_history"])).max()
    replicate = np.abs(np.subtract(other_seed["metrics"]["val/loss_history"],
                                   a["metrics"]["val/loss_history"])).max()
    assert c["fingerprint"] == a["fingerprint"] and placement < 0.1 * replicate, (placement, replicate)


def _perturb(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 2 + 1
    if isinstance(v, str):
        return v + "_x"
    if isinstance(v, list):
        return [*v, 1]
    if v is None:
        return 7
    if isinstance(v, dict):
        return {"k": 1}
    raise AssertionError(type(v))


@pytest.mark.parametrize("choices", [[], ["transfer=gradual", "backbone=resnet18"], ["target=npz", "source=npz"],
                                     ["hydra/launcher=local_parallel"]])
def test_every_other_key_is_identity(tmp_path, choices):
    """Change any leaf of the resolved config (one at a time): the fingerprint changes unless the key is neutral."""
    cfg = compose_cfg(choices, tmp_path / "run")
    plain = OmegaConf.to_container(cfg, resolve=True)
    base = identity.fingerprint(plain, ins={})
    checked = 0
    for key, value in flatten(plain).items():
        changed = OmegaConf.create(plain)
        OmegaConf.update(changed, key, _perturb(value), force_add=True)
        neutral = any(key == n or key.startswith(n + ".") for n in identity.NEUTRAL)
        fp = identity.fingerprint(OmegaConf.to_container(changed), ins={})
        if key == identity.DEVICES:  # placement, but the count is identity: 1 -> 2 devices is another run
            assert fp != base
        elif key.startswith(("source.", "pretrain.")) and identity.copies_nothing(plain):
            assert fp == base, key
        elif (key.startswith("peft.") and key != "peft.method") or key == "train.cv_folds":
            # peft=none reads none of the methods' keys; cv_folds only train.select=cv reads (tests/test_cv.py)
            assert fp == base, key
        else:
            assert (fp == base) == neutral, f"{key}: {'neutral' if neutral else 'identity'} key"
        checked += 1
    assert checked > 40
    # Keys added from the command line (+trainer.gradient_clip_val=0.5) are identity too.
    added = OmegaConf.create(plain)
    OmegaConf.update(added, "trainer.gradient_clip_val", 0.5, force_add=True)
    assert identity.fingerprint(OmegaConf.to_container(added), ins={}) != base


@pytest.mark.parametrize("override", ["trainer.precision=bf16-mixed", "+trainer.gradient_clip_val=0.5",
                                      "+trainer.accumulate_grad_batches=4", "trainer.deterministic=true"])
def test_trainer_settings_are_identity_for_runs_and_the_source_cache(tmp_path, override):
    a, b = compose_cfg([], tmp_path / "r"), compose_cfg([override], tmp_path / "r")
    assert _fp(a) != _fp(b)
    assert identity.source_fingerprint(a, data="d") != identity.source_fingerprint(b, data="d")  # no fp32 source model for a bf16 run


def test_device_placement_is_neutral_but_the_device_count_is_not(tmp_path):
    one = _fp(compose_cfg(["trainer.devices=1"], tmp_path / "r"))
    assert _fp(compose_cfg(["trainer.devices=[0]"], tmp_path / "r")) == one
    assert _fp(compose_cfg(["trainer.devices=[3]", "trainer.accelerator=gpu"], tmp_path / "r")) == one
    assert _fp(compose_cfg(["trainer=ddp"], tmp_path / "r")) != one


def test_input_content_is_identity_and_its_location_is_not(tmp_path):
    data = _npz(tmp_path / "t.npz", seed=0)
    cfg = compose_cfg(["target=npz", f"target.path={data}"], tmp_path / "r")
    before = _fp(cfg)
    copy = tmp_path / "copy.npz"
    shutil.copy(data, copy)
    assert _fp(compose_cfg(["target=npz", f"target.path={copy}"], tmp_path / "r")) == before
    _npz(data, seed=1)  # new data at the same path
    assert _fp(cfg) != before
    assert identity.inputs(cfg)["target"]["sha256"] != identity.inputs(compose_cfg(
        ["target=npz", f"target.path={copy}"], tmp_path / "r"))["target"]["sha256"]


def test_a_weights_file_is_identity_by_content(tmp_path):
    import torch

    w = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(2)}, w)
    cfg = compose_cfg([f"backbone.weights={w}"], tmp_path / "r")
    before = _fp(cfg)
    torch.save({"x": torch.ones(2)}, w)
    assert _fp(cfg) != before
    assert identity.inputs(cfg)["backbone.weights"]["files"] == str(w)


def test_image_folder_identity_covers_every_image_and_class_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (4, 4), color=i * 40).save(root / c / f"{i}.png")
    cfg = compose_cfg(["target=image_folder", f"target.root={root}"], tmp_path / "r")
    before = _fp(cfg)
    (root / "notes.txt").write_text("not an image: not read, not identity")
    assert _fp(cfg) == before
    Image.new("L", (4, 4), color=200).save(root / "a" / "0.png")
    after_edit = _fp(cfg)
    assert after_edit != before
    (root / "b").rename(root / "c")  # a renamed class is another task
    assert _fp(cfg) != after_edit


def test_torchvision_and_sklearn_files_are_the_ones_their_loaders_read(tmp_path):
    import torchvision.datasets as D
    from sklearn.datasets import load_digits  # noqa: F401  (the module whose data file we fingerprint)

    from transferlab.tasks.vision import DATASETS

    for name, spec in DATASETS.items():
        cls = getattr(D, spec.cls)
        if spec.kind == "idx":
            expected = [f"{spec.cls}/raw"]
            assert cls(str(tmp_path), train=True, download=False).raw_folder.endswith(expected[0]) \
                if (tmp_path / expected[0]).exists() else "raw" in cls.raw_folder.fget.__code__.co_consts
        elif spec.kind == "cifar":
            expected = [cls.base_folder]
        else:
            expected = [cls.split_list[s][1] for s in ("train", "test")]
        assert list(identity.TORCHVISION_FILES[name]) == expected, name
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert identity.IMAGE_SUFFIXES == IMG_EXTENSIONS
    digits = identity.task_files({"kind": "digits"}, None)[0]
    assert digits.is_file() and digits.name == "digits.csv.gz"


def test_scratch_has_no_source_in_its_identity_or_record(tmp_path, shared_cache):
    a_cfg = compose_cfg([*BASE[1:], "transfer=scratch", "source=digits_0to4"], tmp_path / "a", shared_cache)
    b_cfg = compose_cfg([*BASE[1:], "transfer=scratch", "source=digits_5to9", "pretrain.lr=0.5"], tmp_path / "b",
                        shared_cache)
    assert _fp(a_cfg) == _fp(b_cfg)
    a, b = run(a_cfg), run(b_cfg)
    assert a["source"] is None and a["source_cache"] == "unused" and "source" not in a["inputs"]
    assert a["metrics"]["val/acc_history"] == b["metrics"]["val/acc_history"]
    assert a["metrics"]["test/acc"] == b["metrics"]["test/acc"]


@pytest.mark.parametrize("override, key", [("transfer.cut=2", "transfer.cut"), ("transfer.freeze=all", "transfer.freeze"),
                                           ("transfer.strategy=gradual", "transfer.strategy"),
                                           ("transfer.l2sp=0.1", "transfer.l2sp")])
def test_scratch_with_a_transfer_setting_is_a_config_error(tmp_path, override, key):
    cfg = compose_cfg(["transfer=scratch", override], tmp_path / "r")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert any(p.startswith(f"{key}=") and "transfer=scratch" in p for p in err.value.problems)
    assert not (tmp_path / "r" / "result.json").exists()


def test_result_records_fingerprint_inputs_and_versions(make_cfg):
    rec = run(make_cfg("target.n_per_class=3", "train.max_epochs=1"))
    assert rec["fingerprint"] == identity.fingerprint(rec["config"], rec["inputs"])
    assert set(rec["inputs"]) == {"target", "source"} and rec["inputs"]["target"]["files"].endswith("digits.csv.gz")
    env = rec["environment"]
    assert env["torch"] and env["lightning"] and env["transferlab"] and env["python"]
    assert "commit" in env and "dirty" in env


def test_a_finished_run_rerun_with_other_trainer_settings_is_refused_not_retested(make_cfg):
    first = run(make_cfg("transfer=scratch", "target.n_per_class=3", "train.max_epochs=2", run="same"))
    with pytest.raises(ConfigError) as err:
        run(make_cfg("transfer=scratch", "target.n_per_class=3", "train.max_epochs=2",
                     "trainer.precision=bf16-mixed", run="same"))
    assert "different configuration" in str(err.value)
    assert Path(first["target_ckpt"]).exists()


def test_content_digest_memo_sees_an_edit_that_keeps_size_and_mtime(tmp_path):
    from transferlab.store import content

    f = tmp_path / "f.bin"
    f.write_bytes(b"a" * 100)
    first = content.file_digest(f)
    st = os.stat(f)
    f.write_bytes(b"b" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: ctime still moves
    assert content.file_digest(f) != first
