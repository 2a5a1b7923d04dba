"""When are two runs the same? The one definition, used by every skip, resume, cache and report grouping.

A run's identity is *everything that can change its result*:
- the whole resolved config, except the short list of keys in `NEUTRAL` (where files go, what is logged, how
  often the resume state is saved, which device slot a job takes, ...). Each neutral key is backed by a test that
  shows equal results when it changes (tests/test_identity.py). Every other key, every `trainer.*` key included
  and keys added with `+key=value`, is identity by default;
- the *content* of every input file the run reads (data files and folders, a weights file; see `inputs`), by
  sha256 of the bytes (`transferlab.store.content`), so new data at the same path is a new run, and the same bytes
  moved to another path are the same run (input locations are neutral because their content is in the identity).
  A backbone or task of one's own (`_target_`) is read code: the module or package it names is hashed the same way
  (`transferlab.own_code`), so editing the class re-runs the run and retrains its source model.

A run that copies no block (`transfer.cut=0`, the scratch baseline) reads no source task and no source model, so
its identity leaves out `source` and `pretrain`: the baseline of two sweeps that differ only in their source is
one run. The matched-compute baseline (`transfer=scratch_long`, `transfer.source_compute=true`) copies nothing
either, but its budget counts the source pretraining's steps, so it keeps them.

The optimizer and scheduler are `_target_` nodes (training/optim.py): their target and every argument are
identity. A node of the built-in group files with the arguments that were fixed before they were nodes reduces to
the fields that named it then (`optimizer: adamw`, `momentum`, `scheduler: none`; `LEGACY_*` below), so a run made
then and the same run made now share one fingerprint and no finished result is recomputed; any other node is in
the identity as it is.

`fingerprint` is the identity's hash: it names a run in result.json, decides whether a sweep point is done,
whether a checkpoint may be resumed, and (minus the seeds, `seed_group_key`, also in result.json) which points the
sweeper trains as one vectorised seed group and which runs the report pools as seeds of one arm. The source-model
cache key is the same idea restricted to what shapes the source model
(`source_fingerprint`).

Light on purpose (no torch): the sweeper fingerprints every point before launching, and with a parallel launcher
its process should not pay for the training stack its workers import anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import util as import_util
from pathlib import Path
from typing import Any, Iterable, Mapping

from transferlab import own_code
from transferlab.config import CV_FOLD_DESIGN, flatten, tune_grid
from transferlab.store import content
from transferlab.transfer import arm
from transferlab.versions import library_version, versions_of

# key -> why it cannot change a result. Each is tested (tests/test_identity.py: changing every one of them at once
# gives the same fingerprint and the same numbers). Nothing else may be added without such a test.
NEUTRAL: dict[str, str] = {
    "name": "the sweep's folder and W&B group name",
    "group": "which vectorised seed group trained the point (hydra.sweeper.vectorize=seeds): each member's "
             "result equals its separate run's within float tolerance (tests/test_stacked.py)",
    "hydra": "Hydra's own settings (launcher, sweeper, output folders)",
    "paths": "where outputs, caches and dataset files live; what is read is fingerprinted by its bytes",
    "logger": "where metrics are logged (csv, W&B or none)",
    "checkpoint": "how often the resume state (last.ckpt) is written",
    "lease": "which device slot of this machine a parallel job takes",
    "train.feature_cache": "frozen-prefix outputs computed once instead of every epoch (equal within float "
                           "tolerance, tests/test_speed.py)",
    "train.feature_cache_max_gb": "whether the feature cache is used (above it: computed every epoch, as with "
                                  "train.feature_cache=off; tests/test_vit_peft.py)",
    "tune.stack": "whether a tuned point's candidates share stacked fits: each candidate equals its fit alone within "
                  "float tolerance (tests/test_stacked.py, tests/test_tuning.py)",
    "transfer.scores": "transferability scores measured on the copied features before training (no gradient, "
                       "eval mode, the random state restored): the trained model is the same",
    "trainer.enable_progress_bar": "terminal output only",
    "trainer.log_every_n_steps": "how often Lightning writes logs; metrics are aggregated per epoch",
    "trainer.accelerator": "which kind of device runs the job (placement, like which GPU)",
    # Input locations: the bytes they point to are part of the identity (see `inputs`).
    "target.path": "the location of the target file; its bytes are fingerprinted",
    "target.root": "the location of the target folder; its images are fingerprinted",
    "source.path": "the location of the source file; its bytes are fingerprinted",
    "source.root": "the location of the source folder; its images are fingerprinted",
}
# trainer.devices is placement too (which GPU), but the *number* of devices changes the effective batch (DDP):
# the identity keeps the count only. Lists [k] and the int 1 are one device.
DEVICES = "trainer.devices"
# Seeds of replication: runs that differ only here are seeds of one arm (pretrain.seed is ${seed} by default).
REPLICATES = ("seed", "data_seed", "pretrain.seed")
# Sample size: the report's x axis.
SAMPLE_SIZE = ("target.n_per_class", "target.n_train")
# What makes an arm of a transfer study (the lines of a figure): what is transferred and how it trains, its
# tuning grid included (run/tuning.py: arms tuned over their own grids are compared in one panel).
ARM_GROUPS = ("transfer", "peft", "source", "pretrain", "tune")
# The selection protocol: `train.select` and the keys only a protocol reads (select_epoch: fixed_epoch;
# val_in_budget_fraction: val_in_budget; cv_folds: cv). Runs that differ only here (and in their seeds) are one arm
# at one n selected in different ways: the report's selection.csv pairs them (analysis/selection_cost.py). A
# protocol with a key of its own lists it here; a key no config has is simply absent.
PROTOCOL = ("train.select", "train.select_epoch", "train.val_in_budget_fraction", "train.cv_folds", "train.cv_design")

# The optimizer and scheduler nodes that train exactly as the names of the old schema did (same class, same
# arguments; lr and weight decay came, and come, from the parameter groups), by the fields those names left in the
# identity. The old schema's `momentum` (0.9) was in every run's identity and read by sgd only; cosine's T_max was,
# and is, the fit's epochs; plateau followed val/acc (mode max) with factor 0.5, patience 2. `pretrain` had no
# scheduler: without one its identity is as before.
LEGACY_MOMENTUM = 0.9
LEGACY_OPTIMIZERS = {"torch.optim.AdamW": ("adamw", ()), "torch.optim.Adam": ("adam", ()),
                     "torch.optim.SGD": ("sgd", ("momentum",))}
LEGACY_SCHEDULERS = {"torch.optim.lr_scheduler.CosineAnnealingLR": ("cosine", {}),
                     "torch.optim.lr_scheduler.ReduceLROnPlateau": ("plateau", {"factor": 0.5, "patience": 2})}
OPTIM_GROUPS = ("train", "pretrain")

# Files each task kind reads (torch-free). torchvision: the folders/files its dataset classes read under
# paths.data_dir (tests/test_identity.py checks them against torchvision).
TORCHVISION_FILES = {
    "mnist": ("MNIST/raw",), "fashion_mnist": ("FashionMNIST/raw",), "kmnist": ("KMNIST/raw",),
    "cifar10": ("cifar-10-batches-py",), "cifar100": ("cifar-100-python",),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
}
SKLEARN_FILES = {"digits": "digits.csv.gz", "iris": "iris.csv"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


# ---------------------------------------------------------------- dotted keys on plain dicts
def _plain(config: Any) -> dict:
    """A resolved plain dict of a DictConfig or mapping (a deep copy either way, choices as plain strings)."""
    from transferlab.config import plain

    return plain(config)


def get(d: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def drop(d: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = d
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def device_count(devices: Any) -> Any:
    """The number of devices a `trainer.devices` value asks for ("auto" when only the machine can tell)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if devices in (-1, "-1", None):
        return "auto"
    return devices


def copies_nothing(config: Mapping) -> bool:
    """transfer.cut=0: nothing is copied (scratch, scratch_long), so no source model is read
    (`transfer.arm.copies_nothing`, the one rule)."""
    return arm.copies_nothing(get(config, "transfer.cut"))


def is_baseline(config: Mapping) -> bool:
    """The scratch baseline the report pairs transfer arms with (`transfer.arm.is_baseline`, the one rule)."""
    return arm.is_baseline(get(config, "transfer.cut"), get(config, "transfer.source_compute"))


def reads_no_source(config: Mapping) -> bool:
    """Nothing is copied and nothing is counted from the source (scratch_long counts its pretraining's steps)."""
    return copies_nothing(config) and get(config, "transfer.source_compute") is not True


# ---------------------------------------------------------------- the identity
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _legacy_optimizer(n: Any) -> dict | None:
    """{"optimizer": name, "momentum": m} for a node the old schema named, else None."""
    if not isinstance(n, dict) or n.get("_partial_") is not True or n.get("_target_") not in LEGACY_OPTIMIZERS:
        return None
    name, args = LEGACY_OPTIMIZERS[n["_target_"]]
    given = {k: v for k, v in n.items() if k not in ("_target_", "_partial_")}
    if set(given) != set(args) or not all(_is_number(v) for v in given.values()):
        return None
    return {"optimizer": name, "momentum": float(given.get("momentum", LEGACY_MOMENTUM))}


def _legacy_scheduler(n: Any) -> str | None:
    """The old schema's name of a scheduler node ("none" for no node: null, or none.yaml's `_target_: null`), else
    None."""
    if n is None or n == {} or n == {"_target_": None, "_partial_": True}:
        return "none"
    if not isinstance(n, dict) or n.get("_partial_") is not True or n.get("_target_") not in LEGACY_SCHEDULERS:
        return None
    name, args = LEGACY_SCHEDULERS[n["_target_"]]
    given = {k: v for k, v in n.items() if k not in ("_target_", "_partial_")}
    return name if given == args else None


def optim_identity(group: dict, name: str) -> dict:
    """`train` or `pretrain` (plain) with its optimizer and scheduler nodes as the identity holds them (see the
    module docstring): a built-in node the old schema named by its old fields, any other node whole."""
    g = dict(group)
    legacy = _legacy_optimizer(g.get("optimizer"))
    if legacy is not None:
        g.update(legacy)
    scheduler = _legacy_scheduler(g.get("scheduler"))
    if scheduler == "none" and name == "pretrain":
        g.pop("scheduler", None)  # a pretraining without a schedule, as before it could have one
    elif scheduler is not None:
        g["scheduler"] = scheduler
    return g


def identity_config(config: Any) -> dict:
    """The resolved config as far as it can change a result: neutral keys out, devices as a count, no source for
    a run that copies nothing, only the PEFT method's own keys of `peft` (none of them with `peft=none`: a run
    as before PEFT existed), the optimizer and scheduler nodes as `optim_identity` holds them, and of `tune` only
    the tuned keys' grids, which replace those keys' `train` values (no `tune` at all for an untuned point: a run as
    before tuning existed), and `train.cv_folds` only under train.select=cv, which adds its fold design
    (`config.CV_FOLD_DESIGN`; any other run: as before cv existed)."""
    c = _plain(config)
    for key in NEUTRAL:
        drop(c, key)
    for name in OPTIM_GROUPS:
        if isinstance(c.get(name), dict):
            c[name] = optim_identity(c[name], name)
    grid = tune_grid(c)
    if grid:  # a tuned point: the grid is its identity, the tuned keys' own values are never read
        c["tune"] = {"train": {k.split(".", 1)[1]: v for k, v in grid.items()}}
        for key in grid:
            drop(c, key)
    else:  # untuned (every tune.train key null): a run as before tuning existed, its fingerprint unchanged
        c.pop("tune", None)
    if isinstance(c.get("train"), dict):  # cv's folds: only a cv run reads them (others: as before cv existed)
        if str(c["train"].get("select")) == "cv":
            c["train"]["cv_design"] = CV_FOLD_DESIGN
        else:
            c["train"].pop("cv_folds", None)
    if isinstance(c.get("trainer"), dict) and DEVICES.split(".")[1] in c["trainer"]:
        c["trainer"]["devices"] = device_count(c["trainer"]["devices"])
    if reads_no_source(c):
        for group in ("source", "pretrain"):
            c.pop(group, None)
    if isinstance(c.get("peft"), dict):  # a PEFT method's own keys; none: a run as before PEFT existed
        from transferlab.config import PEFT_KEYS

        keys = PEFT_KEYS.get(str(c["peft"].get("method")))
        if keys == ():
            c.pop("peft")
        elif keys is not None:
            c["peft"] = {k: v for k, v in c["peft"].items() if k == "method" or k in keys}
    weights = get(c, "backbone.weights")
    if weights is not None and str(weights) != "imagenet":
        c["backbone"]["weights"] = "file"  # its bytes are in the inputs; the path is where they live
    return c


def _sklearn_file(name: str) -> Path | None:
    spec = import_util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def task_files(task: Mapping, data_dir: str | None) -> list[Path] | None:
    """The files and folders a task of this config reads (None: nothing outside the config)."""
    kind = str(task.get("kind"))
    if kind in SKLEARN_FILES:
        f = _sklearn_file(SKLEARN_FILES[kind])
        return [f] if f is not None else None
    if kind == "npz" and task.get("path"):
        return [Path(os.path.expanduser(str(task["path"])))]
    if kind == "image_folder" and task.get("root"):
        return [Path(os.path.expanduser(str(task["root"])))]
    if kind == "torchvision" and task.get("dataset") in TORCHVISION_FILES and data_dir:
        root = Path(os.path.expanduser(str(data_dir)))
        return [root / rel for rel in TORCHVISION_FILES[str(task["dataset"])]]
    if kind == "custom":  # your loader's code, then the files it says it reads
        code = own_code.code_path(task.get("_target_"))
        return [code or Path(str(task.get("_target_")))] + [Path(os.path.expanduser(str(f)))
                                                            for f in task.get("files") or []]
    return None


def _task_digest(files: list[Path], kind: str, task: Mapping) -> str:
    if kind == "image_folder":
        return content.tree_digest(files[0], IMAGE_SUFFIXES)
    if kind == "custom":
        parts = [own_code.code_digest(task.get("_target_"))] + [content.tree_digest(f) for f in files[1:]]
        return content.MISSING if content.MISSING in parts else hashlib.sha256("\n".join(parts).encode()).hexdigest()
    if len(files) == 1:
        return content.tree_digest(files[0])
    return content.paths_digest(files)


def _weights_input(backbone: Mapping) -> dict[str, str] | None:
    weights = backbone.get("weights")
    if weights is None:
        return None
    if str(weights) == "imagenet":
        # The library version fixes which file "imagenet" resolves to (torchvision's DEFAULT, timm's hub tag).
        lib = "timm" if str(backbone.get("family")) in ("timm", "vit") else "torchvision"
        return {"files": f"imagenet ({lib} {library_version(lib)})", "sha256": f"{lib}=={library_version(lib)}"}
    return {"files": str(weights), "sha256": content.file_digest(str(weights))}


def _code_input(backbone: Mapping) -> dict[str, str] | None:
    """A backbone of your own (`backbone._target_`): the code of the module or package it names (`own_code`)."""
    if str(backbone.get("family")) != "custom":
        return None
    target = backbone.get("_target_")
    return {"files": str(own_code.code_path(target) or target), "sha256": own_code.code_digest(target)}


def inputs(config: Any) -> dict[str, dict[str, str]]:
    """{role: {"files": where, "sha256": content}} of every file the run reads: target (and source unless it copies
    nothing) data, a backbone weights file, and the code of a backbone or task of your own (`_target_`: its module
    file or package, `own_code.code_digest`; a task's `files` too). Missing files get "missing" (the run then fails
    at setup)."""
    c = _plain(config)
    data_dir = get(c, "paths.data_dir")
    out: dict[str, dict[str, str]] = {}
    roles = ["target"] if reads_no_source(c) else ["target", "source"]
    for role in roles:
        task = c.get(role) or {}
        files = task_files(task, data_dir)
        if files:
            out[role] = {"files": ", ".join(str(f) for f in files),
                         "sha256": _task_digest(files, str(task.get("kind")), task)}
    weights = _weights_input(c.get("backbone") or {})
    if weights is not None:
        out["backbone.weights"] = weights
    code = _code_input(c.get("backbone") or {})
    if code is not None:
        out["backbone.code"] = code
    out.update(nested_code_inputs(c, ["backbone", *roles]))
    out.update(optim_code_inputs(c))
    return out


def nested_code_inputs(c: Mapping, owners: list[str]) -> dict[str, dict[str, str]]:
    """The code of every `_target_` node of your own inside a custom backbone's or task's kwargs
    (`own_code.nested_targets`), keyed `<owner>.kwargs.<path>.code`."""
    out = {}
    for owner in owners:
        node = c.get(owner) or {}
        if not isinstance(node, Mapping) or not own_code.is_set(node.get("_target_")):
            continue
        for key, target in own_code.nested_targets(node.get("kwargs") or {}, f"{owner}.kwargs"):
            out[f"{key}.code"] = {"files": str(own_code.code_path(target) or target),
                                  "sha256": own_code.code_digest(target)}
    return out


def optim_code_inputs(c: Mapping) -> dict[str, dict[str, str]]:
    """The code of an optimizer or scheduler of your own (`train.optimizer._target_=mypkg.opt.MyOpt`, outside
    torch and timm: `training.optim.own_target`), keyed `<group>.<kind>.code`, and of own `_target_` nodes inside
    its arguments, keyed by their path (`pretrain.*` only when the run reads its source)."""
    from transferlab.training.optim import KEYS, own_target

    out = {}
    for key in KEYS:
        if key.startswith("pretrain.") and reads_no_source(c):
            continue
        node = get(c, key)
        path = own_target(node)
        if path is not None:
            out[f"{key}.code"] = {"files": str(own_code.code_path(path) or path), "sha256": own_code.code_digest(path)}
        if isinstance(node, Mapping):  # own `_target_` nodes in its arguments (a wrapped optimizer, a chain of
            #                            schedulers): `instantiate` builds them too
            args = {k: v for k, v in node.items() if k != "_target_"}
            for where, target in own_code.nested_targets(args, key):
                out[f"{where}.code"] = {"files": str(own_code.code_path(target) or target),
                                        "sha256": own_code.code_digest(target)}
    return out


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _input_digests(ins: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    return {role: str(v.get("sha256")) for role, v in ins.items()}


def fingerprint(config: Any, ins: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The run's identity hash (16 hex): identity config + input contents. Pass `ins` when already computed."""
    c = _plain(config)
    ins = inputs(c) if ins is None else ins
    return _digest({"config": identity_config(c), "inputs": _input_digests(ins)})


def group_config(config: Any, ins: Mapping[str, Mapping[str, str]],
                 without: Iterable[str] = REPLICATES) -> tuple[dict, dict[str, str]]:
    """(identity config, input digests) with some keys left out; an input role named in `without` (e.g. `source`)
    goes with its config group. What `group_key` hashes, as data (the report labels groups by what differs)."""
    without = tuple(without)
    c = identity_config(config)
    for key in without:
        drop(c, key)
    return c, {role: d for role, d in _input_digests(ins).items() if role not in without}


def group_key(config: Any, ins: Mapping[str, Mapping[str, str]], without: Iterable[str] = REPLICATES) -> str:
    """The identity hash with some keys left out, e.g. the seeds (runs pooled as seeds of one arm), or the seeds,
    the sample size and the arm keys (runs drawn in one panel of the report)."""
    c, digests = group_config(config, ins, without)
    return _digest({"config": c, "inputs": digests})


def seed_group_key(config: Any, ins: Mapping[str, Mapping[str, str]]) -> str:
    """The identity without the replicate keys (`REPLICATES`): runs with equal keys are seeds of one arm at one n.
    Recorded in result.json (`seed_group`); the sweeper forms vectorised seed groups by it (sweep/groups.py) and the
    report pools seeds by it (its `arm_key`)."""
    return group_key(config, ins, without=REPLICATES)


def replicate_values(config: Any) -> dict[str, Any]:
    """{key: value} of every replicate key as the resolved config holds it (`data_seed` and `pretrain.seed`
    default to `${seed}`): what makes one seed-group member's config from another's."""
    c = _plain(config)
    return {key: get(c, key) for key in REPLICATES}


# The code that makes a source model's weights: its training loop, kernels and layer definitions (in its cache key).
SOURCE_MADE_BY = ("transferlab", "torch", "torchvision", "timm", "lightning")


def source_fingerprint(config: Any, ins: Mapping[str, Mapping[str, str]] | None = None, data: str | None = None) -> str:
    """The source-model cache key: what shapes the source model (source task and its files, backbone and its
    weights file, pretraining and trainer settings incl. the pretraining seed, the versions of `SOURCE_MADE_BY`),
    plus the source data as loaded (`TaskData.fingerprint()`, when given), so an edited or differently-located
    user file, or a library upgrade, never reuses a stale model (two environments sharing a cache each keep their
    own entry, as feature-cache entries do) and changing target or transfer settings never retrains it. The
    trainer settings are those the pretraining runs with: one device, no DDP keys (`ddp.single_device`: a DDP
    run's launcher pretrains). Not part of the run's own identity: an upgrade does not void finished runs."""
    from transferlab.run.ddp import single_device

    c = identity_config(config)
    ins = inputs(config) if ins is None else ins
    part = {k: c.get(k) for k in ("source", "backbone", "pretrain", "trainer")}
    if isinstance(part["trainer"], dict):
        part["trainer"] = single_device(part["trainer"], machine=False)
    files = {k: v for k, v in _input_digests(ins).items() if k in ("source", "backbone.weights", "backbone.code")
             # an own pretraining optimizer's or scheduler's code; own `_target_` nodes in the backbone's or the
             # source task's kwargs
             or k.startswith(("pretrain.", "backbone.kwargs.", "source.kwargs."))}
    return _digest({"config": part, "inputs": files, "data": data, "made_by": versions_of(SOURCE_MADE_BY)})


def differing_keys(configs: Iterable[Mapping]) -> list[str]:
    """Dotted leaf keys whose value differs between these identity configs (for labels like `train.lr=0.01`)."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
