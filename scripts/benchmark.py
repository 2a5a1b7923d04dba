"""transferlab against bare PyTorch, measured side by side in one run; prints one table.

    python scripts/benchmark.py                 # the full benchmark (~25 min on 2 CPU cores)
    python scripts/benchmark.py --quick         # a smoke run of every row (fewer epochs and points)

Every timing is a whole process (imports, data, model, training, test, exit), started by this script and measured
as wall time; peak memory is the child's own max RSS (os.wait4). Rows:

1. resnet18 from scratch on 2 000 generated 3x32x32 images (+200 val, 500 test), 5 epochs, batch 128:
   `transferlab.train` vs a bare PyTorch loop doing the same work (AdamW, val every epoch, test the best epoch).
   Run --repeat times in alternating order (this machine's speed drifts by 10-30 % within minutes); medians.
2. 50-epoch linear probe (resnet18, freeze=all) on the same data: transferlab with its feature cache (cold: the
   one trunk pass is included) vs a bare loop that recomputes the frozen trunk every epoch.
3. the same probe in transferlab, cache on vs off.
4. the digits `experiment=freeze_vs_n` sweep with one seed (7 n x (5 depths + scratch) = 42 points): one Hydra
   multirun vs one process per point, both sequential, plus the same multirun with two jobs at once
   (`hydra/launcher=local_parallel`, one CPU core each). Printed below the table: where the time goes, and the
   largest ratio possible at this per-point work (one start-up instead of N, zero cost per job).
5. the fixed cost of one more job inside a multirun: median time from one job's launch to the next's, for tiny
   jobs (1 epoch, ~0.1 s of work), read from the multirun's own log.
6. peak memory of a frozen-prefix run (freeze=all, cached) vs full fine-tuning (freeze=0), resnet18, 3 epochs.
7. a tiny digits point (n_per_class=1 and 5 with the protocol's step floor train.min_steps=320: 320 one-step
   epochs, each with a validation pass) inside a multirun vs a bare PyTorch loop doing the same steps: per point,
   the multirun's launch-to-launch time (job 0, which pays the lazy imports, left out) against the bare loop's
   in-process time for the same epochs, batch size, validation and test split sizes (data, model, training, test;
   imports left out on both sides). Multirun, bare, multirun, bare (alternating); medians over 2 x --tiny-seeds.
8. vectorised seed groups: the digits `experiment=freeze_vs_n` sweep at its 5 seeds (shrunk by --seeds-sweep),
   `hydra.sweeper.vectorize=seeds` vs the same sequential multirun, and vs one process per point (timed on the
   seed-0 points; compared as points per hour). The source models (one per pretrain seed) are cached beforehand.
   On a machine with a GPU the row runs there (the default accelerator) and says so.

9. six tiny digits points (`transfer=scratch`, n_per_class=1,2,5 x seeds 0,1, the presets' 320-step floor) as one
   multirun under today's defaults (validation once per 8 steps, `train.val_every_steps`) vs one process of a bare
   PyTorch loop doing the same points with the same steps and one validation pass per 8 steps: whole processes.
10. the cost of an answer, before vs after issue 24, end to end from an empty cache (source pretraining included):
   the digits `experiment=freeze_vs_n` preset (shrunk by --preset-sweep) and a freeze-depth sweep on 28x28 data
   (generated here: digits 0-4 as the source, 5-9 as the target with its own 524-image val split; small_cnn,
   n = 1, 5, 20, 50, freeze 0, 2, all and scratch, 3 seeds: 48 points). "before": `--before REV` runs the code of
   that git revision (a worktree), else today's code with the old settings (validation after every epoch, no
   vectorised groups); "after": today's presets. Side by side in this run, and the summary's change: each arm's
   mean test accuracy per n, after minus before (the schedule changes which checkpoint is selected).

11. tuned points (issue 26): the digits `experiment=ng_rule_tuned` preset (per-arm learning-rate grids, cv
   selection; shrunk by --tuned-sweep) with each point's candidates stacked (`tune.stack=true`, the default: fold
   fits fold by fold) vs one after the other (`tune.stack=false`), one multirun each from a warm source cache,
   alternating order; the test accuracies' largest difference and whether every point chose the same values; the
   dry run's estimate for the stacked side.

    python scripts/benchmark.py --rows 7          # one row (any comma list of 1-11)
    python scripts/benchmark.py --rows 10 --before 6c5eed6   # row 10 against the code before issue 24
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP_SHRINK = ["seed=0"]  # 7 n x (5 depths + scratch) = 42 points


# ----------------------------------------------------------------------------- data


def make_data(path: Path, n_train=2000, n_val=200, n_test=500, classes=10, seed=0) -> Path:
    """A learnable 10-class image task: per-class smooth colour templates + noise, uint8 NHWC."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(classes, 4, 4, 3))
    templates = coarse.repeat(8, axis=1).repeat(8, axis=2)  # 32 x 32 x 3 blocks of colour

    def draw(n):
        y = np.arange(n) % classes
        rng.shuffle(y)
        x = templates[y] * 0.6 + rng.normal(0, 40, size=(n, 32, 32, 3)) + 50
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        arrays[f"x_{split}"], arrays[f"y_{split}"] = draw(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def make_digits28(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Row 10's 28x28 task pair from sklearn's digits (upscaled, shifted by up to 2 pixels, noisy; uint8 N x 1 x 28
    x 28): the source, digits 0-4 (train only), and the target, digits 5-9 with its own val split of 524 images
    (as a medical set has) and a test split, each split drawn from its own base images."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    d = load_digits()
    base = torch.nn.functional.interpolate(torch.from_numpy(d.images[:, None] / 16.0), size=(24, 24),
                                           mode="bilinear", align_corners=False).numpy()

    def draw(idx, count):
        pick = rng.choice(idx, size=count, replace=count > len(idx))
        out = np.zeros((count, 1, 28, 28))
        for i, j in enumerate(pick):
            dy, dx = rng.integers(0, 5, size=2)
            out[i, 0, dy:dy + 24, dx:dx + 24] = base[j, 0]
        out = np.clip(out * 255 + rng.normal(0, 20, size=out.shape), 0, 255).astype(np.uint8)
        return out, d.target[pick].astype(np.int64)

    low, high = np.flatnonzero(d.target < 5), rng.permutation(np.flatnonzero(d.target >= 5))
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = draw(low, 3000)
    np.savez(folder / "digits28_0to4.npz", x_train=xs, y_train=ys)
    arrays = {}
    for split, idx, count in (("train", high[:500], 2500), ("val", high[500:700], 524), ("test", high[700:], 1000)):
        arrays[f"x_{split}"], y = draw(idx, count)
        arrays[f"y_{split}"] = y - 5
    np.savez(folder / "digits28_5to9.npz", **arrays)
    return folder / "digits28_0to4.npz", folder / "digits28_5to9.npz"


def arm_means(folder: Path) -> dict[str, float]:
    """Mean test accuracy per point folder name without its seed (one arm at one n), over the seeds."""
    by: dict[str, list[float]] = {}
    for p in folder.rglob("result.json"):
        rec = json.loads(p.read_text())
        if rec.get("status") == "ok":
            arm = ",".join(part for part in p.parent.name.split(",") if not part.startswith("seed="))
            by.setdefault(arm, []).append(rec["metrics"]["test/acc"])
    return {k: statistics.mean(v) for k, v in by.items()}


# ----------------------------------------------------------------------------- bare PyTorch (child process)


def bare(kind: str, data: str, epochs: int, batch_size: int, lr: float = 1e-3, wd: float = 1e-4) -> None:
    """The same work as transferlab without it: torchvision resnet18, AdamW, val each epoch, test the best."""
    import copy

    import numpy as np
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    f = np.load(data)
    t = {s: (torch.from_numpy(f[f"x_{s}"]).permute(0, 3, 1, 2).float().div(255).contiguous(),
             torch.from_numpy(f[f"y_{s}"])) for s in ("train", "val", "test")}
    model = torchvision.models.resnet18(num_classes=10)
    if kind == "probe":  # frozen trunk (eval mode), trainable new head; the trunk runs every epoch
        trunk = nn.Sequential(*list(model.children())[:-1]).eval().requires_grad_(False)
        head = model.fc
        params = head.parameters()

        def forward(x):
            with torch.no_grad():
                feats = torch.flatten(trunk(x), 1)
            return head(feats)
        trainable = head
    else:
        params = model.parameters()
        forward = model
        trainable = model
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)

    def evaluate(x, y):
        trainable.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(y), 512):
                correct += int((forward(x[i:i + 512]).argmax(1) == y[i:i + 512]).sum())
        return correct / len(y)

    best, best_state = -1.0, None
    xt, yt = t["train"]
    for _ in range(epochs):
        trainable.train()
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(forward(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        acc = evaluate(*t["val"])
        if acc > best:
            best, best_state = acc, copy.deepcopy(trainable.state_dict())
    trainable.load_state_dict(best_state)
    print(json.dumps({"val": best, "test": evaluate(*t["test"])}))


def bare_digits(points: str, batch_size: int = 32, lr: float = 1e-3, wd: float = 1e-4, val_every: int = 1) -> None:
    """Rows 7 and 9's bare loop: small_cnn's layers in plain PyTorch on sklearn's digits 5-9, AdamW, val after every
    epoch in which the step count passes a multiple of `val_every` (1: every epoch) and after the last, test the
    best. `points`: n:epochs:n_val:n_test:seed,... run in order in this process, each timed from its data on; one
    JSON line per point."""
    import copy

    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    digits = load_digits()

    def block(cin, cout, pool):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), *([nn.MaxPool2d(2)] if pool else []))

    for point in points.split(","):
        n, epochs, n_val, n_test, seed = (int(v) for v in point.split(":"))
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.from_numpy((digits.images.astype(np.float32) / 16.0)[:, None])
        y = torch.from_numpy(digits.target.astype(np.int64))
        x, y = x[y >= 5], y[y >= 5] - 5
        perm = torch.randperm(len(y), generator=gen)
        test, val, pool = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
        train = torch.cat([pool[y[pool] == c][:n] for c in range(5)])
        xt, yt, xv, yv, xs, ys = x[train], y[train], x[val], y[val], x[test], y[test]
        model = nn.Sequential(block(1, 32, True), block(32, 64, True), block(64, 64, False),  # small_cnn, 8x8
                              nn.Sequential(nn.Flatten(), nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(0.2)),
                              nn.Linear(128, 5))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        loss_fn = nn.CrossEntropyLoss()

        def evaluate(xe, ye):
            model.eval()
            with torch.no_grad():
                out = model(xe)
            return float(loss_fn(out, ye)), float((out.argmax(1) == ye).float().mean())

        best, best_state, steps = -1.0, None, 0
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(yt), generator=gen)
            before = steps
            for i in range(0, len(yt), batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                steps += 1
            if steps // val_every == before // val_every and epoch + 1 < epochs:
                continue
            _, acc = evaluate(xv, yv)  # val loss and accuracy, as transferlab records them
            if acc > best:
                best, best_state = acc, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        print(json.dumps({"n": n, "seed": seed, "epochs": epochs, "s": time.perf_counter() - t0,
                          "test": evaluate(xs, ys)[1]}), flush=True)


# ----------------------------------------------------------------------------- measuring


def timed(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run a child; wall seconds and its own peak RSS (MiB). A failure stops the benchmark with its output."""
    full_env = {**os.environ, "TRANSFERLAB_ROOT": str(cwd), "WANDB_MODE": "offline", **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if log:
        out.close()
    if p.returncode != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"benchmark step failed ({p.returncode}): {' '.join(cmd)}\n{tail}")
    return {"s": wall, "rss_mb": usage.ru_maxrss / 1024}


def tl(args: list[str], work: Path, name: str, cache: Path, multirun: bool = False) -> dict:
    base = [sys.executable, "-m", "transferlab.train", *(["-m"] if multirun else []),
            "logger=none", "trainer.enable_progress_bar=false", f"paths.cache_dir={cache}"]
    where = (f"hydra.sweep.dir={work / name}",) if multirun else (f"hydra.run.dir={work / name}",)
    return timed([*base, *args, *where], cwd=work, log=work / f"{name}.log")


def estimated_wall_s(text: str) -> float | None:
    """The wall time a dry run's cost preview printed ("wall time: ~12.3 min (...)"), in seconds."""
    m = re.search(r"wall time: (?:~|at least )?([0-9.]+) (s|min|h)\b", text)
    return None if m is None else float(m[1]) * {"s": 1, "min": 60, "h": 3600}[m[2]]


def job_times(log: Path) -> list[tuple[str, float]]:
    """(overrides, seconds) per multirun job from Hydra's log: launch to the next launch (the last job: to the
    sweep's summary line)."""
    text = log.read_text()
    stamp = r"^\[([0-9-]+ [0-9:,]+)\]\[HYDRA\] "
    launches = [(m[2], dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f"))
                for m in re.finditer(stamp + r"\t#\d+ : (.*)$", text, re.M)]
    ends = [dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for m in re.finditer(stamp + r"sweep .* ok,", text, re.M)]
    marks = [t for _, t in launches] + ends[-1:]
    return [(o, (b - a).total_seconds()) for (o, a), b in zip(launches, marks[1:])]


def result(work: Path, name: str) -> dict:
    return json.loads((work / name / "result.json").read_text())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"load average at start {load[0]:.1f}")


# ----------------------------------------------------------------------------- the benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs/points: a smoke run of every row")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "benchmark"), help="scratch folder (wiped)")
    ap.add_argument("--sweep", nargs="*", default=SWEEP_SHRINK,
                    help="overrides shrinking experiment=freeze_vs_n (default: %(default)s); pass none for all")
    ap.add_argument("--rows", default="1,2,4,5,6,7,8", help="which rows to run, e.g. 1,7 (2 includes 3)")
    ap.add_argument("--seeds-sweep", nargs="*", default=["target.n_per_class=2,10"],
                    help="row 8: overrides shrinking experiment=freeze_vs_n, run at its 5 seeds (default: %(default)s)")
    ap.add_argument("--tiny-seeds", type=int, default=3, help="row 7: seeds per n (medians)")
    ap.add_argument("--repeat", type=int, default=3, help="row 1: bare/transferlab pairs, alternating order")
    ap.add_argument("--preset-sweep", nargs="*", default=[],
                    help="row 10: overrides shrinking experiment=freeze_vs_n (default: the whole preset)")
    ap.add_argument("--tuned-sweep", nargs="*", default=["target.n_per_class=5,20", "seed=0"],
                    help="row 11: overrides that shrink experiment=ng_rule_tuned")
    ap.add_argument("--before", help="row 10: the git revision whose code is 'before' (default: today's code with "
                                     "the settings before issue 24)")
    ap.add_argument("--bare", choices=["scratch", "probe"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--bare-digits", help=argparse.SUPPRESS)
    ap.add_argument("--val-every", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bare_digits:
        return bare_digits(a.bare_digits, val_every=a.val_every)
    if a.bare:
        return bare(a.bare, a.data, a.epochs, a.batch_size)

    scratch_ep, probe_ep, mem_ep, extra_jobs = (2, 10, 1, 4) if a.quick else (5, 50, 3, 10)
    repeat = 1 if a.quick else max(1, a.repeat)
    sweep = a.sweep if not a.quick else ["seed=0", "target.n_per_class=5", "transfer.freeze=0,all",
                                         "train.max_epochs=5"]
    work = Path(a.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = machine()
    data = make_data(work / "gen32.npz")
    img = ["target=npz", f"target.path={data}", "target.name=gen32", "backbone=resnet18", "train.batch_size=128"]
    class Rows(list):
        """Each row is also printed and saved as soon as it is measured (a long run can be read midway)."""

        def append(self, row):
            super().append(row)
            print("| " + " | ".join(row) + " |", file=sys.stderr, flush=True)
            (work / "rows.json").write_text(json.dumps(self, indent=1))

    rows = Rows()
    me = [sys.executable, str(Path(__file__).resolve())]
    want = a.rows.split(",")

    def say(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # 1. scratch: whole process vs bare loop, `repeat` pairs in alternating order, medians
    notes: list[str] = []
    if "1" in want:
        bares, tls = [], []
        for r in range(repeat):
            for who in (("bare", "tl") if r % 2 == 0 else ("tl", "bare")):
                say(f"resnet18 scratch: {'bare loop' if who == 'bare' else 'transferlab'} ({r + 1}/{repeat})")
                if who == "bare":
                    bares.append(timed([*me, "--bare", "scratch", "--data", str(data), "--epochs", str(scratch_ep)],
                                       work, log=work / "bare_scratch.log")["s"])
                else:
                    shutil.rmtree(work / "tl_scratch", ignore_errors=True)
                    tls.append(tl([*img, "transfer=scratch", f"train.max_epochs={scratch_ep}"], work, "tl_scratch",
                                  work / "cache_s")["s"])
        b1, t1 = statistics.median(bares), statistics.median(tls)
        pairwise = statistics.median(t / b for t, b in zip(tls, bares))
        rows.append((f"resnet18 scratch, {scratch_ep} epochs, whole process (median of {repeat})", f"{t1:.1f} s",
                     f"{b1:.1f} s (bare loop)", f"{t1 / b1:.2f} (median pairwise {pairwise:.2f})", "<= 1.10"))
        if repeat > 1:
            notes.append("row 1 runs (s): transferlab " + ", ".join(f"{x:.1f}" for x in tls) + "; bare "
                         + ", ".join(f"{x:.1f}" for x in bares) + "; pairwise ratios "
                         + ", ".join(f"{t / b:.2f}" for t, b in zip(tls, bares)))

    # 2-3. linear probe: cache (cold) vs bare recomputing the trunk; cache on vs off
    if "2" in want:
        probe = [*img, "source=none", "transfer=linear_probe", f"train.max_epochs={probe_ep}"]
        say("linear probe: bare loop")
        b2 = timed([*me, "--bare", "probe", "--data", str(data), "--epochs", str(probe_ep)], work,
                   log=work / "bare_probe.log")
        say("linear probe: transferlab, feature cache on (cold)")
        t2 = tl([*probe, "train.feature_cache=on"], work, "tl_probe_cache", work / "cache_p")
        assert result(work, "tl_probe_cache")["feature_cache"]["status"] == "miss"
        say("linear probe: transferlab, feature cache off")
        t3 = tl([*probe, "train.feature_cache=off"], work, "tl_probe_nocache", work / "cache_p")
        rows.append((f"linear probe resnet18, {probe_ep} epochs: transferlab + cache vs bare", f"{t2['s']:.1f} s",
                     f"{b2['s']:.1f} s (bare loop)", f"{t2['s'] / b2['s']:.2f}", "<= 0.30"))
        rows.append((f"linear probe resnet18, {probe_ep} epochs: cache on vs off", f"{t2['s']:.1f} s",
                     f"{t3['s']:.1f} s (cache off)", f"{t2['s'] / t3['s']:.2f}", ""))

    # 4. sweep: one multirun vs one process per point (source model pretrained once beforehand for all)
    if "4" in want:
        say("digits sweep: warm the source cache")
        tl(["transfer.freeze=all", "train.max_epochs=1", "target.n_per_class=1"], work, "warm", work / "cache_w")
        for c in ("cache_m", "cache_l", "cache_par"):
            shutil.copytree(work / "cache_w", work / c)
        conf = Path(os.environ.get("TRANSFERLAB_CONF", ROOT / "conf"))
        if (conf / "experiment" / "freeze_vs_n.yaml").exists():
            preset = ["experiment=freeze_vs_n"]
        else:  # the preset's grid spelled out (no scratch arm)
            preset = ["target.n_per_class=1,2,5,10,20,50,null", "transfer.freeze=0,1,2,3,all", "seed=0,1,2,3,4"]
            sweep = [o for o in preset if o.split("=")[0] not in {x.split("=")[0] for x in sweep}] + sweep
            preset = []
        label = " ".join(preset + sweep)
        say(f"digits sweep: one multirun ({label})")
        t4 = tl([*preset, *sweep], work, "sweep_multirun", work / "cache_m", multirun=True)
        points = sorted(p.parent for p in (work / "sweep_multirun").rglob("result.json"))
        inside = sum(json.loads((p / "result.json").read_text())["wall_s"] for p in points)
        say(f"digits sweep: one multirun, two jobs at once ({label})")
        t4p = tl([*preset, *sweep, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"], work,
                 "sweep_parallel", work / "cache_par", multirun=True)
        say(f"digits sweep: {len(points)} processes, one per point")
        (work / "sweep_loop").mkdir()
        t0 = time.perf_counter()
        for i, p in enumerate(points):
            import yaml

            overrides = yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text())
            overrides = [o for o in overrides if not o.startswith(("hydra.", "paths.", "logger=", "trainer."))]
            tl([*preset, *overrides], work, f"sweep_loop/{i}", work / "cache_l")
        t5 = time.perf_counter() - t0
        n = len(points)
        rows.append((f"digits freeze_vs_n, {n} points ({label}): one multirun vs one process per point",
                     f"{t4['s']:.1f} s (multirun)", f"{t5:.1f} s ({n} processes)", f"{t5 / t4['s']:.1f}x faster",
                     ">= 10x"))
        rows.append((f"the same multirun, 2 jobs at once (local_parallel, one core each) vs {n} processes",
                     f"{t4p['s']:.1f} s (multirun)", f"{t5:.1f} s ({n} processes)", f"{t5 / t4p['s']:.1f}x faster",
                     ""))
        startup = t5 / n - inside / n  # per point: what a process costs beyond the work inside run()
        multirun_fixed = t4["s"] - inside
        ceiling = t5 / (startup + inside)  # one start-up, then nothing but the points' own work
        notes.append(f"row 4: {n} points; inside run() (data, model, training, test, result) {inside:.1f} s in all, "
                     f"{inside / n:.2f} s per point; the multirun spends {multirun_fixed:.1f} s beyond that "
                     f"(one start-up + {(multirun_fixed - startup) / n:.2f} s per job); a process per point costs "
                     f"{startup:.1f} s beyond its run(). At this per-point work the ratio cannot exceed "
                     f"{ceiling:.1f}x even with zero cost per job.")

    # 5. fixed cost of one more job in a multirun (tiny jobs): launch-to-launch spacing from the multirun's log
    if "5" in want:
        tiny = ["backbone=mlp", "source=none", "transfer.freeze=all", "train.max_epochs=1", "target.n_per_class=1"]
        say("fixed cost per multirun job")
        tl([*tiny, f"seed=range(0,{extra_jobs + 1})"], work, "jobs_n", work / "cache_w", multirun=True)
        stamps = [dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for m in
                  re.finditer(r"^\[([0-9-]+ [0-9:,]+)\]\[HYDRA\] \t#\d+ : ", (work / "jobs_n.log").read_text(), re.M)]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps[1:], stamps[2:])]  # job 0 pays lazy warm-up
        walls = sorted(json.loads(r.read_text())["wall_s"] for r in (work / "jobs_n").rglob("result.json"))
        rows.append((f"one more job in a multirun (tiny jobs, median of {len(gaps)} launch-to-launch gaps)",
                     f"{statistics.median(gaps):.2f} s", f"(inside run(): {walls[len(walls) // 2]:.2f} s median)", "",
                     "<= 0.2 s"))

    # 6. peak memory, frozen prefix (cached) vs full fine-tune
    if "6" in want:
        say("peak memory: frozen prefix vs full fine-tune")
        m1 = tl([*img, "source=none", "transfer=linear_probe", f"train.max_epochs={mem_ep}",
                 "train.feature_cache=on"], work, "mem_frozen", work / "cache_m1")
        m2 = tl([*img, "source=none", "transfer=finetune", "transfer.freeze=0", f"train.max_epochs={mem_ep}"],
                work, "mem_full", work / "cache_m2")
        rows.append((f"peak RSS, resnet18 {mem_ep} epochs: freeze=all (cached) vs freeze=0",
                     f"{m1['rss_mb']:.0f} MiB", f"{m2['rss_mb']:.0f} MiB (full fine-tune)",
                     f"{m1['rss_mb'] / m2['rss_mb']:.2f}", ""))

    # 7. a tiny digits point (n=1, n=5; 320 one-step epochs) inside a multirun vs a bare loop doing the same steps
    if "7" in want:
        seeds = max(2, a.tiny_seeds)
        tiny_n, min_steps = ((1, 5), 320) if not a.quick else ((1, 5), 40)
        say(f"tiny digits points in a multirun (n={tiny_n}, {seeds} seeds, train.min_steps={min_steps})")
        tl(["transfer.freeze=all", "train.max_epochs=1", "target.n_per_class=1"], work, "warm7", work / "cache_t")
        grid = [f"target.n_per_class={','.join(map(str, tiny_n))}", f"seed=range(0,{seeds})",
                f"train.min_steps={min_steps}"]
        bare_pts = []

        def bare_tiny(points: str, tag: str) -> None:
            say(f"tiny digits points: bare loop ({tag})")
            # the first point twice: its first run pays the bare loop's own warm-up (first conv, first AdamW step)
            timed([*me, "--bare-digits", points.split(",")[0] + "," + points], work, log=work / f"bare_{tag}.log")
            bare_pts.extend([json.loads(line) for line in (work / f"bare_{tag}.log").read_text().splitlines()
                             if line.startswith("{")][1:])

        tl(grid, work, "tiny_multirun", work / "cache_t", multirun=True)
        jobs = job_times(work / "tiny_multirun.log")[1:]  # job 0 pays the lazy imports of the first run
        recs = {(r["n_per_class"], r["seed"]): r for r in
                (json.loads(p.read_text()) for p in (work / "tiny_multirun").rglob("result.json"))}
        points = ",".join(f"{r['n_per_class']}:{r['metrics']['epochs']}:{r['n_val']}:{r['n_test']}:{r['seed']}"
                          for _, r in sorted(recs.items()))
        bare_tiny(points, "tiny_after")
        # the multirun again, then nothing else: the two sides alternate (this machine's speed drifts)
        tl(grid, work, "tiny_multirun2", work / "cache_t", multirun=True)
        jobs += job_times(work / "tiny_multirun2.log")[1:]
        bare_tiny(points, "tiny_last")
        for n in tiny_n:
            t_job = statistics.median(s for o, s in jobs if f"target.n_per_class={n} " in f"{o} ")
            t_run = statistics.median(r["wall_s"] for (k, _), r in recs.items() if k == n)
            t_bare = statistics.median(p["s"] for p in bare_pts if p["n"] == n)  # 2 x seeds runs
            ep = {r["metrics"]["epochs"] for (k, _), r in recs.items() if k == n}
            rows.append((f"digits point n={n} ({'/'.join(map(str, sorted(ep)))} epochs of one step + val) in a "
                         f"multirun vs bare loop, median of 2 x {seeds} seeds", f"{t_job:.2f} s per job "
                         f"({t_run:.2f} s in run())", f"{t_bare:.2f} s (bare loop, in-process)",
                         f"{t_job / t_bare:.2f}", "<= 1.3"))
        notes.append("row 7 test accuracy (sanity, different splits): transferlab "
                     + ", ".join(f"n={k} s{sd} {r['metrics']['test/acc']:.3f}" for (k, sd), r in sorted(recs.items()))
                     + "; bare " + ", ".join(f"n={p['n']} s{p['seed']} {p['test']:.3f}" for p in bare_pts))

    # 8. seed groups: freeze_vs_n at 5 seeds, vectorised multirun vs sequential multirun vs one process per point
    if "8" in want:
        import torch

        grid8 = (a.seeds_sweep if not a.quick else ["target.n_per_class=2", "transfer.freeze=0,all",
                                                     "hydra.sweeper.grids.scratch=null", "train.min_steps=40"])
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        label = " ".join(grid8)
        say("seed groups: warm the source cache (one source model per pretrain seed)")
        tl(["transfer.freeze=all", "train.max_epochs=1", "target.n_per_class=1", "seed=range(0,5)"], work, "warm8",
           work / "cache_8", multirun=True)
        say(f"seed groups: vectorised multirun ({label}, 5 seeds, on {device})")
        t_vec = tl(["experiment=freeze_vs_n", *grid8, "hydra.sweeper.vectorize=seeds"], work, "seeds_vec",
                   work / "cache_8", multirun=True)["s"]
        say(f"seed groups: sequential multirun ({label}, 5 seeds)")
        t_seq = tl(["experiment=freeze_vs_n", *grid8], work, "seeds_seq", work / "cache_8", multirun=True)["s"]
        vec = {p.parent.name: json.loads(p.read_text()) for p in (work / "seeds_vec").rglob("result.json")}
        seq = {p.parent.name: json.loads(p.read_text()) for p in (work / "seeds_seq").rglob("result.json")}
        assert vec.keys() == seq.keys(), "the two sweeps ran different points"
        n = len(vec)
        stacked = sum(r["group"] is not None and r["group"]["mode"] == "stacked" for r in vec.values())
        worst = max(abs(vec[k]["metrics"]["test/acc"] - seq[k]["metrics"]["test/acc"]) for k in vec)
        sample = sorted(k for k in seq if k.startswith("seed=0,"))
        say(f"seed groups: one process per point ({len(sample)} seed-0 points)")
        (work / "seeds_loop").mkdir()
        t0 = time.perf_counter()
        for i, k in enumerate(sample):
            import yaml

            overrides = yaml.safe_load((work / "seeds_seq" / k / ".hydra" / "overrides.yaml").read_text())
            overrides = [o for o in overrides if not o.startswith(("hydra.", "paths.", "logger=", "trainer."))]
            tl(["experiment=freeze_vs_n", *overrides], work, f"seeds_loop/{i}", work / "cache_8")
        t_loop = time.perf_counter() - t0
        per_h = lambda count, s: f"{3600 * count / s:.0f} points/h"  # noqa: E731
        rows.append((f"digits freeze_vs_n, {n} points ({label}, 5 seeds) on {device}: vectorised vs sequential "
                     f"multirun", f"{t_vec:.0f} s ({per_h(n, t_vec)})", f"{t_seq:.0f} s ({per_h(n, t_seq)})",
                     f"{t_seq / t_vec:.1f}x faster", ">= 1.5x"))
        rows.append((f"the vectorised multirun vs one process per point (rate over the {len(sample)} seed-0 points)",
                     per_h(n, t_vec), f"{per_h(len(sample), t_loop)} ({t_loop:.0f} s)",
                     f"{(n / t_vec) / (len(sample) / t_loop):.1f}x faster", ">= 6x"))
        notes.append(f"row 8: {stacked} of {n} points trained stacked (the others as their group's sequential "
                     f"fallback); largest test/acc difference between the vectorised and the sequential sweep "
                     f"{worst:.2g}")

    # 9. six tiny points, whole processes: a multirun under the defaults vs a bare process validating every 8 steps
    if "9" in want:
        min_steps = 320 if not a.quick else 40
        grid = ["transfer=scratch", "target.n_per_class=1,2,5", "seed=0,1", f"train.min_steps={min_steps}"]
        tl_s, vec_s, bare_s, recs = [], [], [], {}
        for r in range(2):  # alternating: tl, vectorised, bare, then bare, vectorised, tl
            for who in (("tl", "vec", "bare") if r == 0 else ("bare", "vec", "tl")):
                if who in ("tl", "vec"):
                    say(f"six tiny points: one multirun{', seeds vectorised' if who == 'vec' else ''} ({r + 1}/2)")
                    name = "six_multirun" if who == "tl" else "six_vectorised"
                    shutil.rmtree(work / name, ignore_errors=True)
                    extra = ["hydra.sweeper.vectorize=seeds"] if who == "vec" else []
                    (tl_s if who == "tl" else vec_s).append(
                        tl(grid + extra, work, name, work / "cache_9", multirun=True)["s"])
                    if who == "tl":
                        recs = {(x["n_per_class"], x["seed"]): x for x in
                                (json.loads(p.read_text()) for p in (work / name).rglob("result.json"))}
                    continue
                if not recs:
                    continue  # the bare side needs the multirun's sizes first
                points = ",".join(f"{x['n_per_class']}:{x['metrics']['epochs']}:{x['n_val']}:{x['n_test']}:{x['seed']}"
                                  for _, x in sorted(recs.items()))
                say(f"six tiny points: bare loop, one process, val every 8 steps ({r + 1}/2)")
                bare_s.append(timed([*me, "--bare-digits", points, "--val-every", "8"], work,
                                    log=work / f"bare_six{r}.log")["s"])
        checks = sorted({len(x["metrics"]["val/acc_history"]) for x in recs.values()})
        t9, v9, b9 = statistics.median(tl_s), statistics.median(vec_s), statistics.median(bare_s)
        rows.append((f"six tiny digits points (scratch, n=1,2,5 x 2 seeds, {min_steps}-step floor, "
                     f"{'/'.join(map(str, checks))} validation checks each) as one multirun vs a bare process "
                     f"validating every 8 steps, whole processes (median of 2)", f"{t9:.1f} s", f"{b9:.1f} s (bare)",
                     f"{t9 / b9:.2f}", "<= 1.3"))
        rows.append(("the same six points, one multirun with the seeds vectorised (hydra.sweeper.vectorize=seeds, "
                     "the presets' default: 3 groups of 2)", f"{v9:.1f} s", f"{b9:.1f} s (bare)", f"{v9 / b9:.2f}",
                     ""))
        notes.append("row 9 runs (s): transferlab " + ", ".join(f"{x:.1f}" for x in tl_s) + "; vectorised "
                     + ", ".join(f"{x:.1f}" for x in vec_s) + "; bare " + ", ".join(f"{x:.1f}" for x in bare_s))

    # 10. the cost of an answer, before vs after issue 24, from an empty cache each
    if "10" in want:
        src28, tgt28 = make_digits28(work / "digits28")
        sweeps = {
            "digits freeze_vs_n" + (f" ({' '.join(a.preset_sweep)})" if a.preset_sweep else ""):
                ["experiment=freeze_vs_n", *a.preset_sweep],
            "28x28 freeze_vs_n (48 points: n=1,5,20,50 x freeze 0,2,all + scratch x 3 seeds)":
                ["experiment=freeze_vs_n", "source=npz", f"source.path={src28}", "source.name=digits28_0to4",
                 "target=npz", f"target.path={tgt28}", "target.name=digits28_5to9", "target.n_per_class=1,5,20,50",
                 "transfer.freeze=0,2,all", "seed=range(3)", "pretrain.max_epochs=10"],
        }
        if a.quick:
            sweeps = {k: v + ["target.n_per_class=1,5", "seed=range(2)", "train.min_steps=40"]
                      for k, v in sweeps.items()}
        env_before, old = None, ["train.val_every_steps=1", "hydra.sweeper.vectorize=null"]
        estimates: dict[str, float | None] = {}
        if a.before:
            tree = work / "before_src"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), a.before], check=True,
                           capture_output=True)
            env_before, old = {"PYTHONPATH": str(tree / "src")}, []
        try:
            for i, (label, args) in enumerate(sweeps.items()):
                times = {}
                for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                    say(f"{label}: {side}")
                    extra = old if side == "before" else []
                    base = [sys.executable, "-m", "transferlab.train", "-m", "logger=none",
                            "trainer.enable_progress_bar=false", f"paths.cache_dir={work / f'cache10_{i}_{side}'}"]
                    if side == "after":  # the dry run's estimate first, from the same empty cache (item 2's goal)
                        dry = work / f"sweep10_{i}_dry.log"
                        timed([*base, *args, "hydra.sweeper.dry_run=true",
                               f"hydra.sweep.dir={work / f'sweep10_{i}_after'}"], work, log=dry)
                        estimates[label] = estimated_wall_s(dry.read_text())
                    times[side] = timed([*base, *args, *extra, f"hydra.sweep.dir={work / f'sweep10_{i}_{side}'}"],
                                        work, env=env_before if side == "before" else None,
                                        log=work / f"sweep10_{i}_{side}.log")["s"]
                before, after = (arm_means(work / f"sweep10_{i}_{side}") for side in ("before", "after"))
                n_points = sum(1 for _ in (work / f"sweep10_{i}_after").rglob("result.json"))
                delta = [after[k] - before[k] for k in before if k in after]
                rows.append((f"{label}, {n_points} points, end to end from an empty cache: after vs before issue 24",
                             f"{times['after']:.0f} s", f"{times['before']:.0f} s (before"
                             + (f", code of {a.before})" if a.before else ", old settings)"),
                             f"{times['before'] / times['after']:.1f}x faster", ">= 3x"))
                est = estimates.get(label)
                if est is not None:
                    rows.append((f"{label}: the dry run's wall-time estimate vs the measured sweep",
                                 f"{est:.0f} s (estimate)", f"{times['after']:.0f} s (measured)",
                                 f"{est / times['after'] - 1:+.0%}", "within +-30%"))
                worst = max(delta, key=abs) if delta else float("nan")
                notes.append(f"row 10, {label}: mean test accuracy per arm and n, after minus before, over "
                             f"{len(delta)} cells: mean {statistics.mean(delta):+.4f}, largest {worst:+.4f} "
                             f"(the schedule selects among fewer checks)")
        finally:
            if a.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "before_src")],
                               capture_output=True)

    # 11. tuned points: candidates stacked vs one after the other
    if "11" in want:
        shrink = a.tuned_sweep if not a.quick else ["target.n_per_class=5", "seed=0",
                                                    "hydra.sweeper.grids.finetune=null"]
        args = ["experiment=ng_rule_tuned", *shrink]
        cache = work / "cache_11"
        say("tuned points: the source model first (shared by both sides)")
        tl(["experiment=ng_rule_tuned", "target.n_per_class=2", "train.max_epochs=1", "train.min_steps=null"], work,
           "warm11", cache)
        dry = work / "sweep11_dry.log"
        timed([sys.executable, "-m", "transferlab.train", "-m", "logger=none", "trainer.enable_progress_bar=false",
               f"paths.cache_dir={cache}", *args, "hydra.sweeper.dry_run=true",
               f"hydra.sweep.dir={work / 'sweep11_true'}"], work, log=dry)
        est = estimated_wall_s(dry.read_text())
        times11 = {}
        for stack in ("true", "false"):
            say(f"tuned points: tune.stack={stack}")
            times11[stack] = tl([*args, f"tune.stack={stack}"], work, f"sweep11_{stack}", cache, multirun=True)["s"]
        recs = {st: {p.parent.name: json.loads(p.read_text()) for p in (work / f"sweep11_{st}").rglob("result.json")
                     if p.parent.parent == work / f"sweep11_{st}"} for st in ("true", "false")}
        same = sum(recs["true"][k]["tuning"]["chosen"] == recs["false"][k]["tuning"]["chosen"] for k in recs["true"])
        diff = max(abs(recs["true"][k]["metrics"]["test/acc"] - recs["false"][k]["metrics"]["test/acc"])
                   for k in recs["true"])
        fits = sum(len(r["tuning"]["candidates"]) * (r["cv"]["fits"] if r.get("cv") else 1)
                   for r in recs["true"].values())
        rows.append((f"ng_rule_tuned ({' '.join(shrink)}): {len(recs['true'])} tuned cv points, {fits} fits: "
                     "candidates stacked vs one after the other", f"{times11['true']:.0f} s",
                     f"{times11['false']:.0f} s (tune.stack=false)",
                     f"{times11['false'] / times11['true']:.2f}x faster", ""))
        if est is not None:
            rows.append(("the same stacked sweep: the dry run's wall-time estimate vs measured",
                         f"{est:.0f} s (estimate)", f"{times11['true']:.0f} s (measured)",
                         f"{est / times11['true'] - 1:+.0%}", "within +-30%"))
        notes.append(f"row 11: {same} of {len(recs['true'])} points chose the same values stacked and apart; largest "
                     f"test/acc difference {diff:.4f}")

    acc = ""
    if {"1", "2"} <= set(want):
        bare_acc = {k: json.loads((work / f"bare_{k}.log").read_text().splitlines()[-1])["test"]
                    for k in ("scratch", "probe")}
        tl_acc = {k: result(work, k)["metrics"]["test/acc"]
                  for k in ("tl_scratch", "tl_probe_cache", "tl_probe_nocache")}
        acc = (f"test accuracy (sanity): scratch {tl_acc['tl_scratch']:.3f} vs bare {bare_acc['scratch']:.3f}; probe "
               f"cache {tl_acc['tl_probe_cache']:.3f} / no cache {tl_acc['tl_probe_nocache']:.3f} / bare "
               f"{bare_acc['probe']:.3f}")
    head = ("measurement", "transferlab", "baseline", "ratio", "goal")
    print(f"\ntransferlab benchmark, {started}{' (--quick)' if a.quick else ''}: {where}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    done = dt.datetime.now(dt.timezone.utc).strftime("%H:%M UTC")
    for note in notes:
        print(f"\n{note}")
    print(f"\n{acc}\nfinished {done}, load average at the end {os.getloadavg()[0]:.1f}; "
          f"reproduce: python scripts/benchmark.py{' --quick' if a.quick else ''}")


if __name__ == "__main__":
    main()
