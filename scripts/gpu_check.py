"""GPU check: what transferlab's GPU options and multi-GPU modes give on this node, sized to finish in 8 minutes.

    python scripts/gpu_check.py --out gpu_check.json                       # on a GPU node (full sizes)
    python scripts/gpu_check.py --out gpu_check.json --update-docs docs/speed.md   # and fill docs/speed.md's table
    python scripts/gpu_check.py --from gpu_check.json --update-docs docs/speed.md  # fill it from an earlier run
    python scripts/gpu_check.py --dry --out /tmp/check.json                # CPU, tiny sizes: every path, no numbers

Writes FILE.json (the device, then one row per measurement: its config, wall time, rate, status) and FILE.md (the
same rows as a Markdown table) next to it. Every measurement runs through the real CLI (`transferlab.train`, a
Hydra multirun where several points are compared), started and timed as whole processes with scripts/benchmark.py's
helpers. A row that cannot run here (one GPU for the DDP row, no bf16 on the GPU) is kept with status `skipped` and
the reason; a row whose run failed has status `failed`, the reason and its log, and makes the exit code 1. What each
row measures: docs/speed.md, "GPU check". `--dry` (a CPU, tiny data, few steps, `trainer.accelerator=cpu`; DDP as
2 CPU processes over gloo) runs every path of the full check, so `make test` keeps it working
(tests/test_gpu_check.py); its numbers say nothing about speed.

Exit codes: 0 every row ok or skipped, 1 a row failed, 2 bad input (one line, nothing run or written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import machine, make_data, timed, tl  # the benchmark's process runner and generated data

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1
BEGIN, END = "<!-- gpu-check:begin", "<!-- gpu-check:end -->"  # docs/speed.md's table lies between these lines
WORK_MARK = ".gpu_check_work"  # the scratch folder's mark: only a folder holding it (or empty) is ever wiped


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is. FULL fits in 8 minutes on one GPU; DRY only exercises the paths on a CPU."""

    backbone: str          # the image rows' network (resnet18; the dry run's small_cnn is the same path, cheaper)
    img_px: int            # resnet18 / DDP: generated images, resized to this side
    img_train: int         # resnet18 / DDP: training images (+ img_eval val and img_eval test)
    img_eval: int
    batch: int
    epochs: tuple[int, int]  # resnet18: the rate is the images of the extra epochs over the extra time
    points_steps: int      # digits points: the optimizer-step floor (the presets' 320)
    group_seeds: int       # the vectorised group's size (and its sequential baseline's points)
    k_points: int          # digits points per K-jobs-per-device sweep
    ks: tuple[int, ...]    # jobs per device
    vit: tuple[str, ...]   # the ViT's overrides (size, patch, width)
    vit_px: int
    vit_n: int             # labelled images per class
    vit_steps: int


FULL = Sizes(backbone="resnet18", img_px=64, img_train=4000, img_eval=200, batch=128, epochs=(3, 6),
             points_steps=320, group_seeds=5, k_points=8, ks=(1, 2, 4),
             vit=("backbone=vit", "backbone.name=vit_small_patch16_224"), vit_px=224, vit_n=20, vit_steps=150)
DRY = Sizes(backbone="small_cnn", img_px=16, img_train=48, img_eval=16, batch=16, epochs=(2, 20), points_steps=4,
            group_seeds=5, k_points=4, ks=(1, 2),
            vit=("backbone=vit_mini", "backbone.patch_size=4", "backbone.kwargs.embed_dim=32",
                 "backbone.kwargs.depth=2", "backbone.kwargs.num_heads=2"),
            vit_px=16, vit_n=2, vit_steps=4)


class BadInput(Exception):
    """Bad command-line input: one line, exit 2, before anything runs or is written."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits 2; one line is enough
        raise BadInput(message)


# ----------------------------------------------------------------------------------------------------- the rows


def row(key: str, label: str, config: list[str], status: str, *, wall_s: float | None = None,
        rate: float | None = None, unit: str | None = None, vs: str | None = None, ratio: float | None = None,
        peak_mb: float | None = None, peak_kind: str | None = None, reason: str | None = None,
        details: dict | None = None) -> dict:
    """One measurement. `ratio` is this row's rate over its baseline row's (`vs`), > 1: faster."""
    assert status in ("ok", "skipped", "failed")
    return {"key": key, "row": label, "config": config, "status": status, "wall_s": wall_s, "rate": rate,
            "unit": unit, "vs": vs, "ratio": ratio, "peak_mem_mb": peak_mb, "peak_mem_kind": peak_kind,
            "reason": reason, "details": details or {}}


def _why(log: Path) -> str:
    """The line that says why a child failed: its last error line, else its last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    errors = [ln for ln in lines if "Error" in ln or "error" in ln or ln.startswith("transferlab:")]
    return ((errors or lines or ["(no output)"])[-1])[:300] + f" (log: {log})"


def _results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("result.json"))]


def _per_h(points: int, seconds: float) -> float:
    return 3600.0 * points / seconds


class Check:
    """Runs the measurements in `work` and collects their rows."""

    def __init__(self, sizes: Sizes, dry: bool, work: Path):
        self.s, self.dry, self.work = sizes, dry, work
        self.cache = work / "cache"
        self.rows: list[dict] = []
        self.acc = ["trainer.accelerator=cpu"] if dry else []
        self.img: list[str] = []

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def run(self, name: str, args: list[str], multirun: bool = False) -> tuple[dict | None, str | None]:
        """One CLI process (a multirun with `multirun`): (its wall time and peak RSS, None) or (None, why failed)."""
        try:
            return tl([*args, *self.acc], self.work, name, self.cache, multirun=multirun), None
        except SystemExit:  # benchmark.timed stops on a failed child; here the failure is a row
            return None, _why(self.work / f"{name}.log")

    # -------------------------------------------------------------------------------------------- measurements

    def resnet(self, bf16: str | None) -> None:
        """resnet18 from scratch, fp32 vs bf16-mixed, each without and with channels_last: one multirun in which
        every variant runs 1 epoch (warm-up: the first job pays lazy imports, each variant its kernels' set-up),
        then E and 2E epochs; the rate is the extra epochs' training images over the extra wall time, so start-up,
        data, test and the final checkpoint cancel."""
        e1, e2 = self.s.epochs
        data = make_data(self.work / "img.npz", n_train=self.s.img_train, n_val=self.s.img_eval,
                         n_test=self.s.img_eval)
        self.img = ["target=npz", f"target.path={data}", "target.name=gen32", f"target.image_size={self.s.img_px}",
                    f"backbone={self.s.backbone}", "source=none", "transfer=scratch",
                    f"train.batch_size={self.s.batch}"]
        precisions = ["32-true"] + (["bf16-mixed"] if bf16 is None else [])
        variants = [(p, cl) for cl in (False, True) for p in ("32-true", "bf16-mixed")]
        config = [*self.img, f"trainer.precision={','.join(precisions)}", "train.channels_last=false,true",
                  f"train.max_epochs=1,{e1},{e2}"]
        self.say(f"{self.s.backbone}: {' x '.join(precisions)} x channels_last false/true, 1/{e1}/{e2} epochs")
        _, failed = self.run("resnet18", config, multirun=True)
        recs = _results(self.work / "resnet18")  # a sweep with a failed point still has the others' results
        walls = {(r["config"]["trainer"]["precision"], r["config"]["train"]["channels_last"],
                  r["metrics"]["epochs"]): r for r in recs if r.get("status") == "ok"}
        base = None
        for p, cl in variants:
            key = f"resnet18_{'bf16' if p == 'bf16-mixed' else 'fp32'}{'_cl' if cl else ''}"
            label = (f"{self.s.backbone} {'bf16-mixed' if p == 'bf16-mixed' else 'fp32'}"
                     f"{' + channels_last' if cl else ''}")
            cfg = [*self.img, f"trainer.precision={p}", f"train.channels_last={str(cl).lower()}",
                   f"train.max_epochs={e1},{e2}"]
            if p == "bf16-mixed" and bf16 is not None:
                self.rows.append(row(key, label, cfg, "skipped", reason=bf16))
                continue
            a, b = walls.get((p, cl, e1)), walls.get((p, cl, e2))
            if a is None or b is None:
                why = failed or f"no ok result for {e1} and {e2} epochs in {self.work / 'resnet18'}"
                self.rows.append(row(key, label, cfg, "failed", reason=why))
                continue
            extra_s = b["wall_s"] - a["wall_s"]
            images = b["n_train"] * (b["metrics"]["epochs"] - a["metrics"]["epochs"])
            if extra_s <= 0:
                self.rows.append(row(key, label, cfg, "failed", wall_s=b["wall_s"], reason=(
                    f"the {e2}-epoch run ({b['wall_s']:.2f} s) was not slower than the {e1}-epoch run "
                    f"({a['wall_s']:.2f} s): timing noise larger than the work")))
                continue
            rate = images / extra_s
            base = base or (rate if key == "resnet18_fp32" else None)
            self.rows.append(row(key, label, cfg, "ok", wall_s=b["wall_s"], rate=rate, unit="images/s",
                                 vs="resnet18_fp32", ratio=rate / base if base else None,
                                 details={"wall_s_by_epochs": {str(e1): a["wall_s"], str(e2): b["wall_s"]},
                                          "n_train": b["n_train"], "test_acc": b["metrics"].get("test/acc")}))

    def points(self) -> None:
        """Digits points (scratch, n=5 per class, the presets' step floor): a vectorised group of the seeds vs the
        same points one after another; then K jobs sharing one device (`lease.per_device=K`) on more points."""
        point = ["transfer=scratch", "target.n_per_class=5", f"train.min_steps={self.s.points_steps}",
                 f"train.max_epochs={min(40, self.s.points_steps)}"]
        n = self.s.group_seeds
        seq_rate = None
        for key, label, vec in (("seeds_sequential", f"{n} digits points, one after another", "null"),
                                ("seeds_vectorised", f"{n} digits points, one vectorised {n}-seed group", "seeds")):
            cfg = [*point, f"seed=range(0,{n})", f"hydra.sweeper.vectorize={vec}"]
            self.say(f"digits: {label}")
            ran, failed = self.run(key, cfg, multirun=True)
            recs = _results(self.work / key) if ran else []
            ok = [r for r in recs if r.get("status") == "ok"]
            if len(ok) != n:
                self.rows.append(row(key, label, cfg, "failed", reason=failed or f"{len(ok)} of {n} points ok"))
                continue
            stacked = sum(1 for r in ok if (r.get("group") or {}).get("mode") == "stacked")
            if vec == "seeds" and stacked != n:
                self.rows.append(row(key, label, cfg, "failed", wall_s=ran["s"], reason=(
                    f"{stacked} of {n} points trained stacked: {(ok[0].get('group') or {}).get('reason')}")))
                continue
            rate = _per_h(n, ran["s"])
            seq_rate = rate if vec == "null" else seq_rate
            self.rows.append(row(key, label, cfg, "ok", wall_s=ran["s"], rate=rate, unit="points/h",
                                 vs="seeds_sequential", ratio=rate / seq_rate if seq_rate else None,
                                 peak_mb=ran["rss_mb"], peak_kind="process RSS",
                                 details={"points": n, "stacked": stacked,
                                          "runs_s": sum(r["wall_s"] for r in ok)}))
        k_rate = None
        leases = self.work / "leases"
        for k in self.s.ks:
            key, label = f"jobs_per_device_{k}", f"{self.s.k_points} digits points, {k} job{'s' * (k > 1)} per device"
            cfg = [*point, f"seed=range(0,{self.s.k_points})", "hydra.sweeper.vectorize=null",
                   "hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={k}", "lease.slots=1",
                   f"lease.per_device={k}", f"lease.dir={leases / str(k)}"]
            self.say(f"digits: {label}")
            ran, failed = self.run(key, cfg, multirun=True)
            ok = [r for r in (_results(self.work / key) if ran else []) if r.get("status") == "ok"]
            if len(ok) != self.s.k_points:
                self.rows.append(row(key, label, cfg, "failed",
                                     reason=failed or f"{len(ok)} of {self.s.k_points} points ok"))
                continue
            spans = [json.loads(ln) for ln in (leases / str(k) / "leases.jsonl").read_text().splitlines()]
            at_once = max(sum(1 for o in spans if o["start"] <= s["start"] < o["end"]) for s in spans)
            rate = _per_h(self.s.k_points, ran["s"])
            k_rate = k_rate or (rate if k == 1 else None)
            self.rows.append(row(key, label, cfg, "ok", wall_s=ran["s"], rate=rate, unit="points/h",
                                 vs="jobs_per_device_1", ratio=rate / k_rate if k_rate else None,
                                 details={"points": self.s.k_points, "most_jobs_at_once": at_once,
                                          "device": sorted({o["kind"] for o in spans}),
                                          "runs_s": sum(r["wall_s"] for r in ok)}))

    def vit_lora(self, bf16: str | None) -> None:
        """One ViT-S/16 LoRA point (linear probe + LoRA r=4 on qkv and proj, the defaults; batch 64, the PEFT
        preset's step floor; bf16-mixed where the GPU has it, as the preset recommends) on generated images at
        224 px: its time and the peak memory of its process (on a GPU: CUDA's peak allocated, read in the process
        by --probe-peak). Random weights: time and memory do not depend on their values."""
        data = make_data(self.work / "vit.npz", n_train=10 * max(self.s.vit_n, 4), n_val=20, n_test=20)
        cfg = ["target=npz", f"target.path={data}", "target.name=gen32", f"target.image_size={self.s.vit_px}",
               *self.s.vit, "backbone.weights=null", "source=none", "transfer=linear_probe",
               "peft=lora", "peft.rank=4", f"target.n_per_class={self.s.vit_n}", "train.batch_size=64",
               "train.max_epochs=1", f"train.min_steps={self.s.vit_steps}",
               f"trainer.precision={'bf16-mixed' if bf16 is None else '32-true'}"]
        label = "ViT-S/16 LoRA point" + (" (dry: a 2-block, width-32 ViT)" if self.dry else "")
        self.say(f"{label}")
        peak = self.work / "vit_peak.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-peak", str(peak), "--", "logger=none",
               "trainer.enable_progress_bar=false", f"paths.cache_dir={self.cache}", *cfg, *self.acc,
               f"hydra.run.dir={self.work / 'vit'}"]
        try:
            ran = timed(cmd, cwd=self.work, log=self.work / "vit.log")
        except SystemExit:
            self.rows.append(row("vit_s16_lora", label, cfg, "failed", reason=_why(self.work / "vit.log")))
            return
        rec = json.loads((self.work / "vit" / "result.json").read_text())
        probe = json.loads(peak.read_text())
        cuda = probe.get("cuda_peak_allocated_mb")
        images = rec["n_train"] * rec["metrics"]["epochs"]
        self.rows.append(row("vit_s16_lora", label, cfg, "ok", wall_s=rec["wall_s"], rate=images / rec["wall_s"],
                             unit="images/s", peak_mb=cuda if cuda is not None else ran["rss_mb"],
                             peak_kind="CUDA allocated" if cuda is not None else "process RSS",
                             details={"process_s": ran["s"], "n_train": rec["n_train"],
                                      "epochs": rec["metrics"]["epochs"], "probe": probe,
                                      "lora_params": (rec.get("peft") or {}).get("params")}))

    def ddp(self, why_not: str | None) -> None:
        """The resnet18 fp32 2E-epoch point as one DDP run over 2 devices (`trainer=ddp trainer.devices=2`) against
        the same point on one device (the resnet18 multirun's). Both rates are whole runs (images / wall_s), the
        DDP one including its rank processes' start-up."""
        e2 = self.s.epochs[1]
        cfg = [*self.img, f"train.max_epochs={e2}", "trainer=ddp", "trainer.devices=2"]
        label = "DDP on 2 devices" + (" (dry: 2 CPU processes, gloo)" if self.dry else " (2 GPUs)")
        if why_not:
            self.rows.append(row("ddp_2", label, cfg, "skipped", reason=why_not))
            return
        self.say(label)
        ran, failed = self.run("ddp", cfg)
        rec = json.loads((self.work / "ddp" / "result.json").read_text()) if ran else None
        if rec is None or rec.get("status") != "ok":
            self.rows.append(row("ddp_2", label, cfg, "failed", reason=failed or (rec or {}).get("error")))
            return
        one = next((r for r in _results(self.work / "resnet18") if r.get("status") == "ok"
                    and r["config"]["trainer"]["precision"] == "32-true" and not r["config"]["train"]["channels_last"]
                    and r["metrics"]["epochs"] == e2), None)
        rate = rec["n_train"] * rec["metrics"]["epochs"] / rec["wall_s"]
        one_rate = one["n_train"] * one["metrics"]["epochs"] / one["wall_s"] if one else None
        self.rows.append(row("ddp_2", label, cfg, "ok", wall_s=rec["wall_s"], rate=rate, unit="images/s",
                             vs="one device", ratio=rate / one_rate if one_rate else None,
                             peak_mb=ran["rss_mb"], peak_kind="launcher RSS",
                             details={"one_device_wall_s": one["wall_s"] if one else None,
                                      "process_s": ran["s"], "test_acc": rec["metrics"].get("test/acc"),
                                      "one_device_test_acc": one["metrics"].get("test/acc") if one else None}))


# ------------------------------------------------------------------------------------------------- the device


def device(dry: bool) -> dict:
    """What ran the check: the GPU (name, memory, compute capability, bf16), or the CPU in a dry run."""
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()
           if torch.cuda.is_available() else 0, "host": platform.node(), "machine": machine()}
    if not dry:
        props = torch.cuda.get_device_properties(0)
        try:  # native bf16 only: torch also answers True where it would emulate it (slowly) on older GPUs
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            bf16 = torch.cuda.is_bf16_supported()
        out.update(name=torch.cuda.get_device_name(0), memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=bool(bf16))
    else:
        out.update(name=f"CPU ({out['machine'].split(',')[0]})", memory_gb=None, capability=None, bf16=True)
    return out


def commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


# ------------------------------------------------------------------------------------------------- the output


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return ""
    text = f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return f"{text} {unit}".strip()


def markdown(result: dict) -> str:
    """The rows as one Markdown table under a line naming the device, the date and the code."""
    d = result["device"]
    head = (f"GPU check: **{d['name']}**" + (f" ({d['memory_gb']} GB, compute {d['capability']})"
                                              if d.get("memory_gb") else "")
            + f", {result['started'][:10]}, torch {d['torch']}" + (f", CUDA {d['cuda']}" if d.get("cuda") else "")
            + (f", transferlab {result['commit']}" if result.get("commit") else "")
            + f"; {result['elapsed_s']:.0f} s in all (`{result['command']}`)")
    if result["dry"]:
        head += ". Dry run: CPU, tiny sizes; it checks the paths, its numbers say nothing about speed."
    lines = [head, "", "| measurement | status | wall | rate | vs baseline | peak memory | note |",
             "|---|---|---|---|---|---|---|"]
    labels = {r["key"]: r["row"] for r in result["rows"]}
    for r in result["rows"]:
        ratio = f"{r['ratio']:.2f}x ({labels.get(r['vs'], r['vs'])})" if r.get("ratio") is not None else ""
        peak = f"{_num(r['peak_mem_mb'], 'MiB')} ({r['peak_mem_kind']})" if r.get("peak_mem_mb") is not None else ""
        note = r.get("reason") or ""
        det = r.get("details") or {}
        if r["status"] == "ok" and "most_jobs_at_once" in det:
            note = f"most jobs at once on the device: {det['most_jobs_at_once']}"
        elif r["status"] == "ok" and "stacked" in det and r["key"] == "seeds_vectorised":
            note = f"{det['stacked']} of {det['points']} points stacked"
        cells = [r["row"], r["status"], _num(r["wall_s"], "s"), _num(r["rate"], r.get("unit") or ""), ratio, peak,
                 note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update_docs(path: Path, table: str) -> None:
    """Replace what lies between the marker lines of `path` with `table` (written atomically)."""
    text = path.read_text()
    start, end = _markers(path, text)
    keep_to = text.index("\n", start) + 1  # the begin marker's whole line stays
    new = text[:keep_to] + table + text[end:]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    tmp.replace(path)


def _markers(path: Path, text: str) -> tuple[int, int]:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise BadInput(f"--update-docs {path}: no '{BEGIN} ... -->' line followed by a '{END}' line to fill")
    return start, end


def _check_writable(out: Path) -> None:
    if out.is_dir():
        raise BadInput(f"--out {out}: is a folder; give a file name such as {out / 'gpu_check.json'}")
    if out.suffix != ".json":
        raise BadInput(f"--out {out}: must end in .json (the Markdown table goes to {out.with_suffix('.md')})")
    folder = out.parent
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gpu_check-")
    except OSError as e:
        raise BadInput(f"--out {out}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


# ------------------------------------------------------------------------------------------------- the probe


def probe_peak(out: str, args: list[str]) -> None:
    """`transferlab.train ARGS` in this process, as the CLI runs it, writing the process's peak CUDA memory (and
    RSS) to `out` when it exits. The CLI runs the exit hooks before its fast exit (train.cli), so atexit works."""
    import atexit
    import resource

    def write() -> None:
        torch = sys.modules.get("torch")  # no import here: a run that failed early never loaded it
        peak = {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if torch is not None and torch.cuda.is_initialized():
            peak["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            peak["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        Path(out).write_text(json.dumps(peak))

    atexit.register(write)
    from transferlab import train

    sys.argv = [train.__file__, *args]
    train.cli()


# ------------------------------------------------------------------------------------------------- main


def parse(argv: list[str]) -> argparse.Namespace:
    ap = Parser(prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="the JSON to write (FILE.json; the Markdown table goes to FILE.md)")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes: run every path, measure nothing")
    ap.add_argument("--update-docs", metavar="MD", help="also put the table between the gpu-check markers of MD "
                                                        "(docs/speed.md)")
    ap.add_argument("--from", dest="from_json", metavar="JSON", help="no run: the table of an earlier run's JSON "
                                                                     "(with --update-docs)")
    ap.add_argument("--work", help="scratch folder, wiped first (default: outputs/gpu_check)")
    ap.add_argument("--probe-peak", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe-peak"]:  # the ViT row's child: transferlab.train with a memory probe
        probe_peak(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    started = time.perf_counter()
    try:
        a = parse(argv)
        docs = Path(a.update_docs) if a.update_docs else None
        if docs is not None:
            if not docs.is_file():
                raise BadInput(f"--update-docs {docs}: no such file")
            _markers(docs, docs.read_text())
        if a.from_json:
            if docs is None or a.out or a.dry:
                raise BadInput("--from JSON takes --update-docs MD and nothing else (it runs nothing)")
            try:
                result = json.loads(Path(a.from_json).read_text())
                if result.get("schema") != SCHEMA or not isinstance(result.get("rows"), list):
                    raise ValueError("not a gpu_check result")
            except (OSError, ValueError) as e:
                raise BadInput(f"--from {a.from_json}: not a readable gpu_check JSON ({e})") from None
            update_docs(docs, markdown(result))
            print(f"filled {docs} from {a.from_json}")
            return 0
        if not a.out:
            raise BadInput("--out FILE.json is required")
        out = Path(a.out).resolve()
        _check_writable(out)
        work = Path(a.work).resolve() if a.work else ROOT / "outputs" / "gpu_check"
        if work.exists() and (not work.is_dir() or (any(work.iterdir()) and not (work / WORK_MARK).exists())):
            raise BadInput(f"--work {work}: exists and is no gpu_check scratch folder (it would be wiped); "
                           "give a new or empty folder")
        if out.is_relative_to(work):
            raise BadInput(f"--out {out}: inside --work {work}, which the check wipes first")
        import torch

        if not a.dry and not torch.cuda.is_available():
            raise BadInput("no CUDA GPU visible (torch.cuda.is_available() is False): run on a GPU node, or --dry "
                           "on a CPU to check the paths")
    except BadInput as e:
        print(f"gpu_check.py: error: {e}", file=sys.stderr)
        return 2

    sizes = DRY if a.dry else FULL
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / WORK_MARK).write_text("a scratch folder of scripts/gpu_check.py: the next check wipes it\n")
    when = dt.datetime.now(dt.timezone.utc)
    dev = device(a.dry)
    check = Check(sizes, a.dry, work)
    check.say(f"gpu check on {dev['name']}{' (dry)' if a.dry else ''}, work folder {work}")
    bf16 = None if dev["bf16"] else (f"{dev['name']} (compute {dev['capability']}) has no native bf16 "
                                      "(torch.cuda.is_bf16_supported(including_emulation=False) is False)")
    if a.dry:
        why_not = None if len(os.sched_getaffinity(0)) >= 2 else "2 CPU processes need 2 usable cores"
    else:
        why_not = None if dev["gpus"] >= 2 else f"{dev['gpus']} GPU visible; DDP needs 2"
    for name, measure in (("resnet18", lambda: check.resnet(bf16)), ("points", check.points),
                          ("vit_s16_lora", lambda: check.vit_lora(bf16)), ("ddp_2", lambda: check.ddp(why_not))):
        try:
            measure()
        except Exception as e:  # noqa: BLE001 - a measurement the check could not read is a failed row, not a stop
            check.rows.append(row(name, name, [], "failed", reason=f"the check itself failed: {type(e).__name__}: {e}"))
    result = {"schema": SCHEMA, "dry": a.dry, "started": when.strftime("%Y-%m-%d %H:%M UTC"),
              "elapsed_s": time.perf_counter() - started, "commit": commit(),
              "command": "python scripts/gpu_check.py " + " ".join(argv), "device": dev, "sizes": sizes.__dict__,
              "work": str(work), "rows": check.rows}
    table = markdown(result)
    out.write_text(json.dumps(result, indent=1, default=list) + "\n")
    out.with_suffix(".md").write_text(table)
    if docs is not None:
        update_docs(docs, table)
    print(table)
    failed = [r["key"] for r in check.rows if r["status"] == "failed"]
    print(f"wrote {out} and {out.with_suffix('.md')}" + (f"; filled {docs}" if docs else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
