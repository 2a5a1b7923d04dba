"""The config's own values: ranges and checks across keys that need no data, no machine and no torch.

`run/setup.py` runs them first, with the checks that read the machine and the data; the sweeper runs them
(`check_values`) on every point of a grid before it launches any, so a bad value anywhere in a grid
(`target.n_per_class=5,-3`) is one clear error with nothing run and nothing written, not a failed point after the
good ones trained. Torch-free: the sweeper imports it.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from transferlab.errors import ConfigError, Problem, problem

SEED_MAX = 2**32 - 1  # numpy's and Lightning's bound


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seed_ok(v) -> bool:
    return _is_int(v) and 0 <= v <= SEED_MAX


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------- config-only checks


def check_seeds(cfg: DictConfig) -> list[Problem]:
    """The root keys have no schema (see transferlab.config), so the seeds' type is checked here too."""
    from omegaconf import OmegaConf

    out = []
    seeds = (("seed", cfg, "seed"), ("data_seed", cfg, "data_seed"), ("pretrain.seed", cfg.pretrain, "seed"))
    for key, node, name in seeds:
        if key != "seed" and OmegaConf.is_interpolation(node, name):
            continue  # `${seed}`: already reported as seed
        v = node.get(name)
        if not _seed_ok(v):
            out.append(problem(key, v, f"an integer in 0..{SEED_MAX} (0 is a valid seed)"))
    return out


def check_optim(cfg: DictConfig) -> list[Problem]:
    """Ranges of the optimisation keys (their types are the schema's); the optimizer and scheduler nodes are
    `optim.check`'s."""
    out = []
    for group in ("pretrain", "train"):
        g = cfg[group]
        if g.max_epochs < 1:
            out.append(problem(f"{group}.max_epochs", g.max_epochs, "an integer >= 1"))
        if not _is_num(g.lr) or g.lr <= 0:
            out.append(problem(f"{group}.lr", g.lr, "a finite number > 0"))
        if g.batch_size < 1:
            out.append(problem(f"{group}.batch_size", g.batch_size, "an integer >= 1"))
        if not _is_num(g.weight_decay) or g.weight_decay < 0:
            out.append(problem(f"{group}.weight_decay", g.weight_decay, "a finite number >= 0"))
    return out


def _check_sizes(task: DictConfig, key: str) -> list[Problem]:
    out = []
    for name in ("n_per_class", "n_train"):
        v = task[name]
        if v is not None and v < 1:
            out.append(problem(f"{key}.{name}", v, "null (all) or an integer >= 1"))
    if task.n_per_class is not None and task.n_train is not None:
        out.append(problem(f"{key}.n_train", task.n_train, f"null when {key}.n_per_class is set (pick one)"))
    per_class = task.get("val_per_class")
    if per_class is not None and per_class < 1:
        out.append(problem(f"{key}.val_per_class", per_class, "null (val_size / val_fraction) or an integer >= 1"))
    elif per_class is not None and task.get("val_size") is not None:
        out.append(problem(f"{key}.val_size", task.val_size, f"null when {key}.val_per_class is set (pick one)"))
    cap = task.get("val_cap_per_class")
    if cap is not None and cap < 1:
        out.append(problem(f"{key}.val_cap_per_class", cap, "null (the whole val split) or an integer >= 1"))
    return out


def check_task_sizes(cfg: DictConfig) -> list[Problem]:
    out = _check_sizes(cfg.target, "target")
    if cfg.source.kind != "none":
        out += _check_sizes(cfg.source, "source")
    return out


def check_budget(cfg: DictConfig) -> list[Problem]:
    """The step budget and model selection keys (training/budget.py, training/callbacks.py), and the matched-compute
    baseline's need for a source it can count."""
    t, out = cfg.train, []
    for name in ("min_steps", "max_steps"):
        v = t[name]
        if v is not None and v < 1:
            out.append(problem(f"train.{name}", v, "null (none) or an integer >= 1"))
    if str(t.budget) == "steps" and t.max_steps is None:
        out.append(problem("train.max_steps", None, "an integer >= 1 with train.budget=steps (the budget itself)"))
    if t.min_steps is not None and t.max_steps is not None and 1 <= t.max_steps < t.min_steps:
        out.append(problem("train.min_steps", t.min_steps, f"at most train.max_steps={t.max_steps}"))
    fixed = str(t.select) == "fixed_epoch"
    if fixed and (t.select_epoch is None or t.select_epoch < 1):
        out.append(problem("train.select_epoch", t.select_epoch, "an integer >= 1 with train.select=fixed_epoch "
                                                                "(the model after that many epochs is tested)"))
    elif not fixed and t.select_epoch is not None:
        out.append(problem("train.select_epoch", t.select_epoch, f"null unless train.select=fixed_epoch "
                                                                f"(train.select={t.select})"))
    f = t.get("val_in_budget_fraction")
    if not _is_num(f) or not 0 < f < 1:
        out.append(problem("train.val_in_budget_fraction", f, "a number in (0, 1): the share of each class's n held "
                                                              "out to select on (train.select=val_in_budget)"))
    n = cfg.target.get("n_per_class")
    if str(t.select) == "val_in_budget" and isinstance(n, int) and n == 1:  # n_train, the pool: setup counts them
        out.append(problem("target.n_per_class", n, "at least 2 per class with train.select=val_in_budget (one "
                                                    "example of each class to train, one to select on); or "
                                                    "another train.select"))
    if str(t.select) == "val_in_budget" and cfg.target.get("val_cap_per_class") is not None:
        out.append(problem("target.val_cap_per_class", cfg.target.val_cap_per_class,
                           "null with train.select=val_in_budget (its val split is carved out of the n examples; "
                           "the dataset's val split is not read)"))
    for name in ("val_every_steps", "val_checks"):
        v = t.get(name)
        if v is not None and v < 1:
            out.append(problem(f"train.{name}", v, "null or an integer >= 1 (training/budget.py: the validation "
                                                   "schedule)"))
    if cfg.trainer.get("check_val_every_n_epoch") is not None:  # the schedule sets it epoch by epoch
        out.append(problem("trainer.check_val_every_n_epoch", cfg.trainer.check_val_every_n_epoch,
                           "unset: validation runs on train.val_every_steps or train.val_checks"))
    if cfg.transfer.get("source_compute") and cfg.source.kind == "none":
        out.append(problem("transfer.source_compute", True, "false with source=none: the backbone's own weights "
                                                            "have no pretraining steps to match (scratch_long needs "
                                                            "a source task)"))
    return out


def check_cv(cfg: DictConfig) -> list[Problem]:
    """`train.select=cv` (run/cv.py, tasks/cv_folds.py): k >= 2 folds, each holding at least one example of every
    class, so n per class >= 2 and >= k. What the config alone can tell (n_per_class); a subset sized by n_train or
    the whole pool is checked on its counts once the data is read (run/setup.py)."""
    t, out = cfg.train, []
    k, cv = t.get("cv_folds"), str(t.select) == "cv"
    if not cv:
        if k is not None:
            out.append(problem("train.cv_folds", k, f"null unless train.select=cv (train.select={t.select})"))
        return out
    if k is not None and k < 2:
        out.append(problem("train.cv_folds", k, "null (min(5, the smallest class's count)) or an integer >= 2 "
                                                "with train.select=cv"))
        return out
    n = cfg.target.get("n_per_class")
    if n is None or n < 1:
        return out  # n_train or the whole pool: setup checks the counts; n < 1: check_task_sizes'
    if n < 2:
        out.append(problem("target.n_per_class", n, "at least 2 with train.select=cv (each of the k >= 2 folds "
                                                    "needs one example of every class); or another train.select"))
    elif k is not None and k > n:
        out.append(problem("train.cv_folds", k, f"an integer in 2..{n} (target.n_per_class={n}: every fold needs "
                                                "one example of every class), or null (min(5, n))"))
    return out


def check_checkpoint(cfg: DictConfig) -> list[Problem]:
    every = cfg.checkpoint.every_s
    if not _is_num(every) or every < 0:
        return [problem("checkpoint.every_s", every, "a number of seconds >= 0 (0 = after every epoch)")]
    return []


def check_custom_files(cfg: DictConfig) -> list[Problem]:
    """A task of your own whose loader takes `data_dir` must list what it reads in `files` (tasks/custom.py,
    `reads_data_dir`): told here from the module's source, so a sweep refuses before it skips any point as done
    (the identity holds the loader's code and `files`, not the data it reads)."""
    from transferlab import own_code

    out = []
    for key in ("target", "source"):
        task = cfg.get(key)
        if task is None or str(task.get("kind")) != "custom" or list(task.get("files") or []):
            continue
        if "data_dir" in (own_code.named_parameters(task.get("_target_")) or set()):
            out.append(own_code.unlisted_data(task.get("_target_"), key, cfg.paths.get("data_dir")))
    return out


def check_cv_scheduler(cfg: DictConfig) -> list[Problem]:
    """Under train.select=cv no validation split shapes the model (run/cv.py): a scheduler that follows val/acc
    would have none to follow in the fit on all n. Told here for torch's schedulers, by name (torch-free); a
    scheduler class of your own is judged when the run sets up (`run.setup`, which imports it)."""
    from transferlab.training import optim as optim_nodes

    target = optim_nodes.target(cfg.train.get("scheduler"))
    if str(cfg.train.select) != "cv" or target is None or not target.startswith(optim_nodes.TORCH_SCHEDULERS):
        return []
    if not optim_nodes.reads_metric(cfg.train.get("scheduler")):
        return []
    return [problem("train.scheduler", target, "a scheduler that does not read val/acc with train.select=cv (the "
                                               "fit on all n has no validation split to read): train/scheduler=none "
                                               "or cosine")]


def check_added_keys(cfg: DictConfig) -> list[Problem]:
    """A key added with `+` to a group whose schema does not have it (`config.added_keys`): a typo would run as if
    it were not there."""
    from transferlab.config import added_keys

    return added_keys(cfg)


VALUE_CHECKS = [check_added_keys, check_seeds, check_optim, check_budget, check_task_sizes, check_cv, check_checkpoint,
                check_custom_files, check_cv_scheduler]


def tune_problems(cfg: DictConfig) -> list[Problem]:
    """A tuned point (`tune.train.*`, run/tuning.py): the grid's own problems (`tuning.check_grid`), then every
    candidate's values through the checks above on the candidate's config, a problem with a tuned key named by the
    `tune.*` key that gave the value and listed once. So a bad value inside a grid is refused before a sweep
    launches anything, as any bad value is; what needs the data is checked when the point runs."""
    from transferlab.config import tune_grid
    from transferlab.run import tuning

    problems = tuning.check_grid(cfg)
    if problems or not tune_grid(cfg):
        return problems
    found: dict[str, Problem] = {}
    for values in tuning.candidates(cfg):
        ccfg = tuning.candidate_config(cfg, values, str(cfg.paths.output_dir))
        for p in _run_checks(ccfg):
            p = Problem(f"tune.{p.key}", p.value, p.allowed) if p.key in values else p
            found.setdefault(str(p), p)
    return list(found.values())


def _run_checks(cfg: DictConfig) -> list[Problem]:
    out: list[Problem] = []
    for check in VALUE_CHECKS:
        try:
            out += check(cfg)
        except ConfigError as e:
            out += e.items
    return out


def value_problems(cfg: DictConfig) -> list[Problem]:
    """Every problem `VALUE_CHECKS` find in `cfg` (a check may also raise ConfigError: its problems count), then
    a tuned point's grid and candidates (`tune_problems`)."""
    out = _run_checks(cfg)
    return out + [p for p in tune_problems(cfg) if str(p) not in {str(q) for q in out}]


def check_values(cfg: DictConfig) -> None:
    """ConfigError listing every problem of `cfg`'s own values, or nothing."""
    found = value_problems(cfg)
    if found:
        raise ConfigError(found)
