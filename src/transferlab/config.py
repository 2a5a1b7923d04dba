"""The configuration's schema: every key's type and default, written once (torch-free).

Hydra composes `conf/`; each group file starts its defaults list with its schema from here
(`/schema/<group>@_here_`, registered in Hydra's ConfigStore on import), so OmegaConf types every value while
composing: `train.lr=abc` or `train.max_epochs=1.5` fails with the key named before any check of ours runs, and a
default lives here only. The YAML files keep what a user reads there: what each key means, and the values that
make a file what it is (a task's dataset and classes, a preset's freeze depth), never a restated default
(tests/test_config.py holds them to that).

What the schema does not do, and `run/setup.py` does: ranges (`lr > 0`), and checks across keys or against the
machine and the data (`freeze <= cut`, devices present, classes in the dataset). Keys whose value is a closed
choice *or* something else stay `Any` and are checked there: `transfer.freeze` (int or "all"),
`<task>.normalize` (a name or {mean, std}), `trainer.devices`, `lease.slots`.

Closed choices are `Choice` enums: a str subclass whose members compare, hash, print and JSON-encode as their
value, so code reading `cfg.transfer.upper` sees "drop". Everything that leaves the config as data (identity,
result.json, W&B, the sweeper's fingerprint) goes through `plain`, which turns them into plain strings.

The root keys (`seed`, `data_seed`, `name`) have no schema: a structured root would have to declare every
top-level key, and `lease`, which only `hydra/launcher=local_parallel` adds (Hydra merges launcher configs before
the primary config), cannot be declared there without existing in every config or being overwritten.
`run/setup.py` checks the seeds.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import II, MISSING, DictConfig, OmegaConf

from transferlab.errors import ConfigError, Problem


class Choice(str, Enum):
    """A closed choice whose members behave as their value ("adamw"), in comparisons, str(), f-strings and JSON."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class FeatureCache(Choice):
    auto = "auto"
    on = "on"
    off = "off"


class Upper(Choice):
    drop = "drop"
    reinit = "reinit"


class Strategy(Choice):
    fixed = "fixed"
    gradual = "gradual"
    lp_ft = "lp_ft"


class BNPolicy(Choice):
    frozen = "frozen"
    train = "train"


class Init(Choice):
    """What the copied blocks [0, cut) hold: the source's weights, or a control arm (transfer/init.py)."""

    source = "source"
    meanvar = "meanvar"  # random, each tensor's mean and variance the source's (Raghu et al. 2019)
    random_frozen = "random_frozen"  # the fresh random init, frozen (Yosinski et al. 2014's random-filter arm)


class Budget(Choice):
    """What `train.*` counts the target fit in (training/budget.py)."""

    epochs = "epochs"
    steps = "steps"


class ValSpacing(Choice):
    """How `train.val_checks` spreads its checks over the fit (training/budget.py)."""

    linear = "linear"
    log = "log"


class Select(Choice):
    """Which epoch's model is tested (training/callbacks.py, RunLocalCheckpoint)."""

    best_val = "best_val"
    last = "last"
    fixed_epoch = "fixed_epoch"
    val_in_budget = "val_in_budget"  # best_val on a validation split carved out of the n labelled examples
    cv = "cv"  # k-fold cross-validation inside the n: steps chosen on the mean fold curve, then all n (run/cv.py)


class Score(Choice):
    """Transferability scores a run can record (`transferlab.scores.METHODS`; tests/test_scores.py holds them equal)."""

    logme = "logme"
    hscore = "hscore"
    nce = "nce"
    leep = "leep"


class TaskKind(Choice):
    digits = "digits"
    iris = "iris"
    torchvision = "torchvision"
    npz = "npz"
    image_folder = "image_folder"
    custom = "custom"  # a loader of your own, named by `_target_` (tasks/custom.py)
    none = "none"  # source=none only: no source task (setup.py refuses it as a target)


class NPolicy(Choice):
    error = "error"
    cap = "cap"


class Part(Choice):
    a = "a"
    b = "b"


class TorchvisionDataset(Choice):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    kmnist = "kmnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    svhn = "svhn"


class Cifar100Label(Choice):
    fine = "fine"
    coarse = "coarse"


class NpzLayout(Choice):
    auto = "auto"
    nchw = "nchw"
    nhwc = "nhwc"


class BackboneFamily(Choice):
    small_cnn = "small_cnn"
    mlp = "mlp"
    resnet = "resnet"
    timm = "timm"
    vit = "vit"
    custom = "custom"  # a class or function of your own, named by `_target_` (backbones/custom.py)


class TokenPool(Choice):
    """How the head of a transformer backbone reads its tokens (backbones/timm_vit.py)."""

    cls = "cls"    # the class token
    mean = "mean"  # the mean of the patch tokens (class, register and prompt tokens left out)


class PeftMethod(Choice):
    """Parameter-efficient fine-tuning added to the frozen copied blocks (transfer/peft.py)."""

    none = "none"
    lora = "lora"  # low-rank updates of frozen Linear weights (Hu et al. 2021)
    vpt = "vpt"    # learned prompt tokens (Jia et al. 2022)


class LoggerKind(Choice):
    csv = "csv"
    wandb = "wandb"
    none = "none"


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Accelerator(Choice):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    mps = "mps"


# ---------------------------------------------------------------- optimisation: pretrain (source), train (target)
# What the old spellings of the optimizer keys became (one clear error names the new one: `moved`).
OPTIM_NODES = {
    "optimizer": "a `_target_` node: pick one with {group}/optimizer=<adamw|adam|sgd|lamb> (conf/{group}/optimizer/), "
                 "or give your own: {group}.optimizer._target_=<class>",
    "scheduler": "a `_target_` node or null: pick one with {group}/scheduler=<none|cosine|plateau> "
                 "(conf/{group}/scheduler/), or give your own: {group}.scheduler._target_=<class>",
}
MOVED = {"momentum": "{group}.optimizer.momentum (with {group}/optimizer=sgd)"}


@dataclass
class OptimConfig:
    """What both trainings share; each group sets its own epochs and batch size.

    `optimizer` and `scheduler` are Hydra `_target_` + `_partial_` nodes (training/optim.py completes them with the
    parameter groups and the fit's epochs); which one a group starts with is its defaults list's choice
    (conf/<group>/default.yaml), their arguments are the group files' (conf/<group>/optimizer/*.yaml), so no
    default of theirs lives here. `lr` and `weight_decay` stay keys of the group, not of the node: the framework
    gives them to every parameter group (per block, 1-D parameters without decay)."""

    max_epochs: int = MISSING
    lr: float = 1e-3
    batch_size: int = MISSING
    weight_decay: float = 1e-4
    optimizer: Dict[str, Any] = MISSING
    scheduler: Optional[Dict[str, Any]] = None  # null: no schedule (conf/<group>/scheduler/none.yaml)
    decay_norm_and_bias: bool = False


@dataclass
class PretrainConfig(OptimConfig):
    max_epochs: int = 30
    batch_size: int = 64
    seed: int = II("seed")


@dataclass
class TrainConfig(OptimConfig):
    max_epochs: int = 40
    batch_size: int = 32
    feature_cache: FeatureCache = FeatureCache.auto
    feature_cache_max_gb: float = 4.0  # cached features larger than this are not held (auto: off, logged)
    channels_last: bool = False
    compile: bool = False
    lr_decay: float = 1.0
    # the step budget (training/budget.py) and model selection (training/callbacks.py)
    budget: Budget = Budget.epochs
    min_steps: Optional[int] = None  # null: no floor
    max_steps: Optional[int] = None  # null: no cap (budget=steps: required, the budget itself)
    select: Select = Select.best_val
    select_epoch: Optional[int] = None  # select=fixed_epoch only: the model after this many epochs (1-based)
    # select=val_in_budget only: this fraction of each class's labelled examples (at least 1, at most all but 1)
    # is held out of training to select on, so the n of the x axis is every label the model saw (tasks/budget_val.py)
    val_in_budget_fraction: float = 0.2
    # select=cv only: k folds inside the n (tasks/cv_folds.py); null: min(5, the smallest class's count)
    cv_folds: Optional[int] = None
    # the validation schedule (training/budget.py): at most one check per val_every_steps optimizer steps (every
    # epoch once an epoch is that long; null or 1: every epoch), or val_checks checks spread over the fit
    val_every_steps: Optional[int] = 8
    val_checks: Optional[int] = None  # set: this many checks (val_every_steps is then not read)
    val_spacing: ValSpacing = ValSpacing.linear  # val_checks only: linear | log (dense early)


# The fold design of train.select=cv in words (tasks/cv_folds.py implements it): part of a cv run's identity
# (run/identity.py), so a change of the rule must change this text and with it every cv point's fingerprint.
CV_FOLD_DESIGN = ("stratified by class; fold(c, r) = (rank r in the class's subset order + s + c) mod k, "
                  "s from data_seed; k = train.cv_folds or min(5, smallest class count)")


# ---------------------------------------------------------------- tuning inside a point (run/tuning.py)
# train.* keys a point may not tune, and why: the selection protocol is what judges the candidates (tuning it would
# judge each candidate by its own rule, and val_in_budget_fraction would give each its own validation split), and
# the speed settings cannot change a result (run/identity.py: NEUTRAL), so a grid over them would train copies.
NOT_TUNABLE: dict[str, str] = {
    "select": "the selection protocol that judges the candidates",
    "select_epoch": "the selection protocol that judges the candidates",
    "val_in_budget_fraction": "the validation split every candidate is judged on (one split for all)",
    "cv_folds": "the folds every candidate is judged on (one fold design for all)",
    "feature_cache": "a speed setting (results unchanged)",
    "feature_cache_max_gb": "a speed setting (results unchanged)",
    "channels_last": "a speed setting (results unchanged)",
    "compile": "a speed setting (results unchanged)",
    "optimizer": "a `_target_` node, not a value: compare optimizers as sweep points (-m train/optimizer=adamw,sgd)",
    "scheduler": "a `_target_` node, not a value: compare schedules as sweep points (-m train/scheduler=none,cosine)",
}
_SCALARS = (bool, int, float, str)


def _scalar(tp: Any) -> bool:
    """Is `tp` (or X of Optional[X]) a value type, not a node?"""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp
    return isinstance(tp, type) and (issubclass(tp, _SCALARS) or issubclass(tp, Enum))


def _tune_train_schema() -> type:
    """`tune.train`: one optional list per tunable `train` key, typed like the key's own values (so
    `tune.train.lr=[abc]` fails while composing, as `train.lr=abc` does). Derived from TrainConfig, so a train key
    added there is tunable at once; keys holding a node (not a value) and `NOT_TUNABLE` are left out."""
    hints = typing.get_type_hints(TrainConfig)
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_TUNABLE and _scalar(hints[f.name])]
    return dataclasses.make_dataclass(
        "TuneTrainConfig", [(k, Optional[List[hints[k]]], field(default=None)) for k in keys],  # type: ignore
        namespace={"__doc__": "null: not tuned; a list: the values this point tries (run/tuning.py)"})


TuneTrainConfig = _tune_train_schema()
TUNABLE: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TuneTrainConfig))


def tune_grid(config: Any) -> dict[str, list]:
    """{"train.lr": [1e-4, 1e-3], ...}: the keys a point tunes and their values, in `tune.train`'s order (which
    fixes the candidates' order, run/tuning.py); {} for an untuned point or a config without `tune`. Values as
    plain data (choices as strings); a value that is not a list is kept as it is (run/setup.py refuses it)."""
    node = config.get("tune") if isinstance(config, Mapping) or OmegaConf.is_config(config) else None
    train = (plain(node) or {}).get("train") if node is not None else None
    if not isinstance(train, Mapping):
        return {}
    return {f"train.{k}": v for k, v in train.items() if v is not None}


def unknown_tune_key(parts: list[str]) -> Problem:
    """The problem line for `tune.<parts...>` naming no tunable key (a typo, a key of another group, or one of
    `NOT_TUNABLE`): what is allowed instead. Shared by composition (`config_error`) and `run/setup.py` (a key
    added with `+tune...`, which OmegaConf lets into the node)."""
    group, key = (parts + [""])[:2]
    if group != "train":
        return Problem("tune", ".".join(parts), "only train.* keys are tuned: tune.train.<key>=[values]")
    why = NOT_TUNABLE.get(key)
    allowed = f"a train key to tune, one of {list(TUNABLE)}"
    return Problem("tune.train", key, f"not tunable: {why}; {allowed}" if why else allowed)


@dataclass
class TuneConfig:
    """Tuning inside a point (run/tuning.py): `tune.train.lr=[1e-4,1e-3]` trains one candidate per value (the
    product over every tuned key), selects one by the point's `train.select` and reports that one's test (the others
    are tested after the choice, for hindsight only: run/hindsight.py)."""

    train: TuneTrainConfig = field(default_factory=TuneTrainConfig)  # type: ignore[valid-type]
    # Candidates that can share one stacked fit train as one (training/stacked.py: they differ only in learning rate
    # or weight decay; under cv, fold by fold); false: one after the other. A speed setting: not in the identity.
    stack: bool = True


# ---------------------------------------------------------------- what is transferred
@dataclass
class TransferConfig:
    name: str = "custom"  # every preset names itself; "custom": a transfer config built by hand (scripts)
    cut: Optional[int] = None
    upper: Upper = Upper.drop
    freeze: Any = 0  # an int f or "all"; checked against cut by the plan
    trainable: Optional[List[str]] = None
    bn: BNPolicy = BNPolicy.frozen
    strategy: Strategy = Strategy.fixed
    unfreeze_every: int = 1
    lp_epochs: int = 5
    l2sp: float = 0.0
    init: Init = Init.source  # control arms: meanvar, random_frozen (transfer/init.py)
    source_compute: bool = False  # scratch_long: add the source pretraining's steps (training/scratch_long.py)
    # transferability scores of the copied features, measured before training (neutral: run/identity.py)
    scores: List[Score] = field(default_factory=lambda: [Score.logme, Score.hscore, Score.nce, Score.leep])


# ---------------------------------------------------------------- tasks (used as `source` and `target`)
@dataclass
class TaskConfig:
    """The keys every task kind shares; kinds with keys of their own subclass it (digits and iris have none).

    One dataclass per kind, not one with every kind's keys: a task's config holds what its loader reads, and
    `+target.foo=1` still adds a key, as it did before there was a schema."""

    kind: TaskKind = MISSING
    name: str = MISSING
    classes: Optional[List[Any]] = None  # names or label ids
    part: Optional[Part] = None
    relabel: Optional[Dict[str, List[Any]]] = None
    n_per_class: Optional[int] = None
    n_train: Optional[int] = None
    n_policy: NPolicy = NPolicy.error
    split_seed: int = 0
    val_fraction: float = 0.2
    val_size: Optional[int] = None
    val_per_class: Optional[int] = None  # instead of val_size/val_fraction: this many val examples of every class
    val_cap_per_class: Optional[int] = None  # at most this many val examples per class, of any val split (the
    #                                          dataset's own included): a fixed, seeded, nested per-class choice
    test_fraction: float = 0.25
    max_per_class: Optional[int] = None
    channels: Optional[int] = None
    image_size: Optional[int] = None
    normalize: Any = "none"  # a name or {mean: [...], std: [...]}


@dataclass
class TorchvisionTask(TaskConfig):
    """`label`/`superclasses` are CIFAR-100's, but the loader reads them for every dataset of this kind (and
    refuses them elsewhere), so they are this kind's keys."""

    dataset: Optional[TorchvisionDataset] = None
    download: bool = True
    val_fraction: float = 0.1  # datasets with tens of thousands of examples: a smaller share is enough
    label: Cifar100Label = Cifar100Label.fine
    superclasses: Optional[List[str]] = None


@dataclass
class NpzTask(TaskConfig):
    path: Optional[str] = None
    layout: NpzLayout = NpzLayout.auto
    class_names: Optional[List[str]] = None


@dataclass
class ImageFolderTask(TaskConfig):
    root: Optional[str] = None


@dataclass
class CustomTask(TaskConfig):
    """A task whose data comes from a function of your own (tasks/custom.py): `_target_` is its import path, called
    with `kwargs`; every shared key above (classes, splits, n_per_class, normalize, ...) applies to what it returns.
    The run's identity holds the code of `_target_`'s module (or package) and the bytes of `files`."""

    kind: TaskKind = TaskKind.custom
    _target_: str = MISSING
    kwargs: Dict[str, Any] = field(default_factory=dict)
    files: List[str] = field(default_factory=list)  # what the function reads: their bytes are in the identity


@dataclass
class NoSource:
    """source=none: no task, the backbone's own weights are the source."""

    kind: TaskKind = MISSING
    name: str = MISSING


# ---------------------------------------------------------------- backbones (one dataclass per family)
@dataclass
class BackboneConfig:
    name: str = MISSING
    weights: Optional[str] = None  # null = random init | imagenet (resnet, timm) | path to a state dict


@dataclass
class SmallCNNBackbone(BackboneConfig):
    channels: List[int] = field(default_factory=lambda: [32, 64, 64])
    hidden: List[int] = field(default_factory=lambda: [128])
    dropout: float = 0.2


@dataclass
class MLPBackbone(BackboneConfig):
    hidden: List[int] = field(default_factory=lambda: [50, 25])
    dropout: float = 0.0


@dataclass
class ResNetBackbone(BackboneConfig):
    family: BackboneFamily = BackboneFamily.resnet


@dataclass
class TimmBackbone(BackboneConfig):
    family: BackboneFamily = BackboneFamily.timm
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VitBackbone(BackboneConfig):
    family: BackboneFamily = BackboneFamily.vit
    pool: TokenPool = TokenPool.cls
    img_size: Optional[int] = None  # null: the task's input size (a set value must equal it)
    patch_size: Optional[int] = None  # null: the model's own
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CustomBackbone(BackboneConfig):
    """A backbone of your own (backbones/custom.py): `_target_` is the import path of a class or function, called
    with `kwargs` (and `input_shape=`, when it takes that argument), returning a module with ordered named
    `blocks` and its `input_shape`. `name` labels it in results (null: the `_target_`)."""

    family: BackboneFamily = BackboneFamily.custom
    name: Optional[str] = None
    _target_: str = MISSING
    kwargs: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- parameter-efficient fine-tuning
@dataclass
class PeftConfig:
    """One schema for every method, so a sweep over `peft=lora,vpt` takes any of these keys from the command line;
    a run's identity keeps only its own method's keys (`PEFT_KEYS`, run/identity.py)."""

    method: PeftMethod = PeftMethod.none
    rank: int = 8  # lora: the rank r of the update B A
    alpha: float = 8.0  # lora: the update is scaled by alpha / rank
    targets: List[str] = field(default_factory=lambda: ["qkv", "proj"])  # lora: Linear layers (names or globs)
    merge_on_save: bool = False  # lora: also write the tested model with LoRA folded in (merged.safetensors)
    prompts: int = 10  # vpt: prompt tokens per prompted block
    deep: bool = False  # vpt: false = shallow (before the first transformer block) | true = new prompts per block
    dropout: float = 0.0  # lora: on the branch's input | vpt: on the prompt tokens


# The keys each method reads (the rest of `peft` is ignored by it and left out of the run's identity).
PEFT_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "lora": ("rank", "alpha", "dropout", "targets", "merge_on_save"),
    "vpt": ("prompts", "deep", "dropout"),
}


def peft_label(peft: Mapping | None) -> str | None:
    """A PEFT method as an arm's label says it ('lora r=4', 'vpt p=10 deep'), from the `peft` config or record;
    None without one (none, or a record made before PEFT existed)."""
    method = str((peft or {}).get("method") or "none")
    if method == "lora":
        return f"lora r={peft['rank']}"
    if method == "vpt":
        return f"vpt p={peft['prompts']}" + (" deep" if peft.get("deep") else "")
    return None


# ---------------------------------------------------------------- Lightning, checkpoints, logging, paths, lease
@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer; keys Lightning takes that are not here are added with `+trainer.<key>=...`."""

    accelerator: Accelerator = Accelerator.auto
    devices: Any = 1  # an int, a list of device ids, auto or -1
    deterministic: Any = False  # Lightning also takes "warn"
    enable_progress_bar: bool = True
    log_every_n_steps: int = 1
    num_sanity_val_steps: int = 0
    precision: str = "32-true"  # values such as bf16-mixed are no identifiers, so no enum: training/options.py


@dataclass
class DDPTrainerConfig(TrainerConfig):
    """One run over several devices of a node; transferlab starts the ranks (run/ddp.py)."""

    strategy: str = "ddp"
    sync_batchnorm: Optional[bool] = None  # null: on with GPUs, off on CPUs (torch's SyncBatchNorm is GPU-only)


@dataclass
class CheckpointConfig:
    every_s: float = 60.0


@dataclass
class LoggerConfig:
    kind: LoggerKind = MISSING  # every logger file names itself


@dataclass
class WandbConfig:
    project: str = "transferlab"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline
    group: Optional[str] = II("name")  # null: the sweep name as well
    tags: List[str] = field(default_factory=list)
    init_timeout: float = 30.0


@dataclass
class WandbLoggerConfig(LoggerConfig):
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PathsConfig:
    root_dir: str = "${oc.env:TRANSFERLAB_ROOT,.}"
    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "${paths.root_dir}/outputs/cache"
    data_dir: str = "${paths.root_dir}/data"


@dataclass
class LeaseConfig:
    slots: Any = "auto"  # null (off), auto or an int
    per_device: int = 1  # jobs sharing each device: slots x per_device leases in all (run/lease.py)
    dir: str = "${oc.env:TMPDIR,/tmp}/transferlab-leases"
    poll_s: float = 0.2


# ConfigStore name under `schema/` -> dataclass. The group files in conf/ start from these.
SCHEMAS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "train": TrainConfig,
    "transfer": TransferConfig,
    "task/base": TaskConfig,
    "task/torchvision": TorchvisionTask,
    "task/npz": NpzTask,
    "task/image_folder": ImageFolderTask,
    "task/custom": CustomTask,
    "task/none": NoSource,
    "backbone/small_cnn": SmallCNNBackbone,
    "backbone/mlp": MLPBackbone,
    "backbone/resnet": ResNetBackbone,
    "backbone/timm": TimmBackbone,
    "backbone/vit": VitBackbone,
    "backbone/custom": CustomBackbone,
    "peft": PeftConfig,
    "tune": TuneConfig,
    "trainer/default": TrainerConfig,
    "trainer/ddp": DDPTrainerConfig,
    "checkpoint": CheckpointConfig,
    "logger/base": LoggerConfig,
    "logger/wandb": WandbLoggerConfig,
    "paths": PathsConfig,
    "lease": LeaseConfig,
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore as `schema/<name>` (idempotent). Runs on import of this module,
    which `hydra_plugins.transferlab_plugins` imports: Hydra imports that package whenever it starts (CLI, compose
    API, sweep workers), so every composition of conf/ finds the schemas."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        group, _, option = f"schema/{name}".rpartition("/")
        cs.store(group=group, name=option, node=node, provider="transferlab")


register()


# ---------------------------------------------------------------- config -> data
def _strings(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {k: _strings(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strings(v) for v in obj]
    return obj  # containers are rebuilt above: the result shares no dict or list with the input


def plain(config: Any) -> Any:
    """The resolved config as plain data (dicts, lists, str/int/float/bool/None): the one conversion used for
    identity, result.json, W&B and the sweeper's fingerprint, so they all see "drop", never Upper.drop."""
    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    return _strings(config)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted leaf keys of nested plain data (identity, labels, W&B). Lists and
    empty mappings are leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def cli_value(v: Any) -> str:
    """A config value as it is written on the command line: null, true, 0.001, [5,6,7]."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)
    return str(v)


def typed(schema: type, config: Any, key: str) -> DictConfig:
    """`config` (a mapping, possibly partial: tests, scripts) completed with `schema`'s defaults and typed by it.
    A value the schema refuses is a ConfigError naming `key.<field>`. A config composed by Hydra is already typed
    and is returned as is."""
    if isinstance(config, DictConfig) and issubclass(OmegaConf.get_type(config) or object, schema):
        return config
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(OmegaConf.structured(schema), config)  # type: ignore[return-value]
    except OmegaConfBaseException as e:  # a refused value becomes a ConfigError; an unknown key propagates
        error = config_error(e, prefix=key)
        if error is None:
            raise
        raise error from None


# ---------------------------------------------------------------- OmegaConf's refusals as problems
def _optional_of(tp: Any) -> Any:
    """X for Optional[X], else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return None


def _describe(tp: Any) -> str:
    """What a schema type allows, in the words of the problem lines."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _optional_of(tp) is not None:
        return "null or " + _describe(_optional_of(tp))
    if isinstance(tp, type) and issubclass(tp, Choice):
        return f"one of {tp.values()}"
    if origin in (list, List):
        return "a list" + (f" of {_describe(args[0]).split(' ', 1)[-1]}s" if args and args[0] in (int, str) else "")
    if origin in (dict, Dict):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} keys"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a valid value")


def _field_type(object_type: Any, key: Any) -> Any:
    if not (isinstance(object_type, type) and dataclasses.is_dataclass(object_type)):
        return None
    try:
        return typing.get_type_hints(object_type).get(str(key))
    except (NameError, TypeError):  # pragma: no cover - every schema type is importable here
        return None


def _moved(exc: BaseException, prefix: str) -> ConfigError | None:
    """The ConfigError for a key that moved (`train.momentum=0.9`: now `train.optimizer.momentum`), found in `exc`
    or its causes; None otherwise. The value is read from Hydra's message ("use +train.momentum=0.9"), the only
    place it is."""
    import re

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    seen: BaseException | None = exc
    value = None
    while seen is not None:
        given = re.search(r"use \+(\S+?)=(.*)$", str(seen), re.MULTILINE)
        value = given.group(2) if given and value is None else value
        if isinstance(seen, (ConfigAttributeError, ConfigKeyError)):
            key = ".".join(k for k in (prefix, str(getattr(seen, "full_key", "") or "")) if k)
            group, _, name = key.rpartition(".")
            if name in MOVED and group in ("train", "pretrain"):
                return ConfigError(Problem(key, value, f"moved to {MOVED[name].format(group=group)}"))
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def unknown_key(owner: Any, full_key: str) -> Problem | None:
    """The problem line for a key that `owner`, its group's schema, does not have (a typo: `transfer.frezee=1`):
    the nearest key and the group's keys. None when `owner` is no schema (a dict of your own kwargs takes any key)
    or has the key."""
    import difflib

    if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
        return None
    group, _, name = full_key.rpartition(".")
    names = [f.name for f in dataclasses.fields(owner)]
    if not name or name in names:
        return None
    keys = [n for n in names if not n.startswith("_")]  # `_target_` and the like: not offered as a near key
    near = difflib.get_close_matches(name, keys, n=1)
    hint = f"; did you mean {'.'.join(k for k in (group, near[0]) if k)}?" if near else ""
    if group in PASSED_ON:  # a Trainer argument of Lightning's is added, not set
        hint += f"; an argument of Lightning's Trainer is added with +{group}.{name}=<value>"
    return Problem(group or "config", name, f"no such key in {group or 'the config'}{hint} (its keys: "
                                            f"{', '.join(keys)})")


PASSED_ON = ("trainer",)  # typed groups whose added keys (`+trainer.gradient_clip_val=1.0`) go on to a library


def added_keys(cfg: Any) -> list[Problem]:
    """Keys added with `+group.key=value` to a group whose schema does not have them: Hydra's `+` opens the node
    and adds the key, nothing reads it, and the run would go on as if it were not there (`+transfer.frezee=1`).
    Not for `PASSED_ON` groups, `tune` (`tuning.check_grid` names what can be tuned) and nodes without a schema
    (optimizer and scheduler nodes, your own component's kwargs), which take any key."""
    out: list[Problem] = []

    def walk(node: Any, path: str) -> None:
        owner = OmegaConf.get_type(node)
        for key in node.keys():
            full = f"{path}.{key}" if path else str(key)
            if not path and key in (*PASSED_ON, "tune", "hydra"):
                continue
            unresolved = OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key)
            found = unknown_key(owner, full) if path else None
            if found is not None and key in MOVED and path in ("train", "pretrain"):  # `+train.momentum=0.9`
                found = Problem(full, None if unresolved else node[key], f"moved to {MOVED[key].format(group=path)}")
            if found is not None:
                out.append(found)
            elif not unresolved and isinstance(node[key], DictConfig):  # nothing resolved on the way
                walk(node[key], full)

    if isinstance(cfg, DictConfig):
        walk(cfg, "")
    return out


def config_error(exc: BaseException, prefix: str = "") -> ConfigError | None:
    """The ConfigError for a value the schema refused (a wrong type, a value outside an enum), found in `exc` or
    its causes (Hydra wraps OmegaConf's error while composing), for an unknown key under `tune` (what can be tuned
    instead) or in another typed group (`unknown_key`); None for anything else: a key in a free-form node or a
    missing config file keeps Hydra's own message. `prefix` is prepended to the key (a group typed on its own)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    moved = _moved(exc, prefix)
    if moved is not None:
        return moved
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ValidationError):
        unknown = isinstance(seen, (ConfigKeyError, ConfigAttributeError))
        if unknown and str(getattr(seen, "full_key", "") or "").startswith("tune."):
            return ConfigError(unknown_tune_key(str(seen.full_key).split(".")[1:]))  # an unknown key to tune
        typo = unknown_key(getattr(seen, "object_type", None),
                           ".".join(k for k in (prefix, str(getattr(seen, "full_key", "") or "")) if k))
        if unknown and typo is not None:  # a key its group's schema does not have
            return ConfigError(typo)
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    full_key = str(getattr(seen, "full_key", "") or getattr(seen, "key", "") or "")
    key = ".".join(k for k in (prefix, full_key) if k)
    group, _, name = key.rpartition(".")
    if name in OPTIM_NODES and group in ("train", "pretrain"):  # the old spelling `train.optimizer=sgd`
        return ConfigError(Problem(key, getattr(seen, "value", None), OPTIM_NODES[name].format(group=group)))
    tp = _field_type(getattr(seen, "object_type", None), getattr(seen, "key", None))
    value = getattr(seen, "value", None)
    allowed = _describe(tp) if tp is not None else str(getattr(seen, "msg", seen)).splitlines()[0]
    choice = _optional_of(tp) or tp
    if key.startswith("tune.train.") and key.count(".") == 2 and not isinstance(value, (list, tuple)):
        allowed = "a list of the values to try, e.g. tune.train.lr=[1e-4,1e-3] (null: not tuned)"
    if isinstance(value, bool) and isinstance(choice, type) and issubclass(choice, Choice):
        allowed += " (true/false, and on/off/yes/no unquoted in YAML, are booleans: quote them)"
    return ConfigError(Problem(key or "config", value, allowed))
