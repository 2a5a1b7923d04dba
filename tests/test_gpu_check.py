"""scripts/gpu_check.py (issue 27, item 4): its --dry run on this CPU goes through every path of the GPU check
(the real CLI, multiruns, a vectorised group, K jobs per device under the lease, the ViT LoRA point with the memory
probe, DDP on 2 CPU processes), so the full check on a GPU node cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
ROWS = ["resnet18_fp32", "resnet18_bf16", "resnet18_fp32_cl", "resnet18_bf16_cl", "seeds_sequential",
        "seeds_vectorised", "jobs_per_device_1", "jobs_per_device_2", "vit_s16_lora", "ddp_2"]
TWO_CORES = len(os.sched_getaffinity(0)) >= 2


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def table(md: str) -> list[list[str]]:
    """The body rows of the Markdown table, as cells."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_check")
    shutil.copy(ROOT / "docs" / "speed.md", folder / "speed.md")
    p = check("--dry", "--out", str(folder / "check.json"), "--work", str(folder / "work"), "--update-docs",
              str(folder / "speed.md"), cwd=folder)
    return p, folder


def test_dry_run_measures_every_row_through_the_cli_and_writes_json_and_markdown(dry):
    p, folder = dry
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads((folder / "check.json").read_text())
    assert result["dry"] is True and result["schema"] == 1 and result["device"]["name"].startswith("CPU")
    rows = {r["key"]: r for r in result["rows"]}
    assert [r["key"] for r in result["rows"]] == ROWS
    for key, r in rows.items():
        if key == "ddp_2" and not TWO_CORES:
            assert r["status"] == "skipped" and "2 usable cores" in r["reason"]
            continue
        assert r["status"] == "ok", (key, r["reason"])
        assert r["wall_s"] > 0 and r["rate"] > 0 and r["unit"] in ("images/s", "points/h"), (key, r)
        assert r["config"] and all("=" in o for o in r["config"]), key
    # each comparison is against its own baseline row, which is 1.0x
    assert rows["resnet18_fp32"]["ratio"] == pytest.approx(1.0)
    fp32, bf16 = rows["resnet18_fp32"]["rate"], rows["resnet18_bf16"]["rate"]
    assert rows["resnet18_bf16"]["ratio"] == pytest.approx(bf16 / fp32)
    assert "trainer.precision=bf16-mixed" in rows["resnet18_bf16"]["config"]
    assert "train.channels_last=true" in rows["resnet18_fp32_cl"]["config"]
    short, long = result["sizes"]["epochs"]
    w = rows["resnet18_fp32"]["details"]["wall_s_by_epochs"]
    assert w[str(long)] > w[str(short)]
    # the group really trained stacked, the K-jobs sweep really ran under the lease, at most K at once
    assert rows["seeds_vectorised"]["details"]["stacked"] == 5
    assert rows["seeds_sequential"]["details"]["stacked"] == 0
    assert rows["seeds_vectorised"]["ratio"] == pytest.approx(
        rows["seeds_vectorised"]["rate"] / rows["seeds_sequential"]["rate"])
    assert rows["jobs_per_device_1"]["details"]["most_jobs_at_once"] == 1
    assert 1 <= rows["jobs_per_device_2"]["details"]["most_jobs_at_once"] <= 2
    assert rows["jobs_per_device_2"]["details"]["device"] == ["cpu"]
    assert "lease.per_device=2" in rows["jobs_per_device_2"]["config"]
    # the ViT point: LoRA trained, its memory read by the probe in the child process
    vit = rows["vit_s16_lora"]
    assert "peft=lora" in vit["config"] and vit["peak_mem_mb"] > 0 and vit["details"]["probe"]["rss_peak_mb"] > 0
    assert vit["details"]["lora_params"] > 0
    if TWO_CORES:
        ddp = rows["ddp_2"]
        assert "trainer=ddp" in ddp["config"] and ddp["details"]["one_device_wall_s"] > 0
        rec = json.loads((folder / "work" / "ddp" / "result.json").read_text())
        assert rec["status"] == "ok" and rec["config"]["trainer"]["devices"] == 2

    # the Markdown next to it is the same rows, in order, with the same statuses and numbers
    md = (folder / "check.md").read_text()
    assert md.startswith("GPU check: **CPU") and "Dry run" in md
    body = table(md)
    assert [c[0] for c in body] == [r["row"] for r in result["rows"]]
    for cells, r in zip(body, result["rows"]):
        assert cells[1] == r["status"]
        if r["status"] == "ok":
            assert cells[3].endswith(r["unit"])
            assert float(cells[3].split()[0]) == pytest.approx(r["rate"], rel=0.01)
            assert float(cells[2].split()[0]) == pytest.approx(r["wall_s"], rel=0.01)
            if r["ratio"] is not None:  # named by the baseline row's label
                baseline = {x["key"]: x["row"] for x in result["rows"]}.get(r["vs"], r["vs"])
                assert cells[4] == f"{r['ratio']:.2f}x ({baseline})"
        else:
            assert cells[6] == r["reason"]
    assert p.stdout.strip().endswith(f"wrote {folder / 'check.json'} and {folder / 'check.md'}; filled "
                                     f"{folder / 'speed.md'}")
    assert (folder / "speed.md").read_text().count(md) == 1  # the run filled its docs copy's table


def test_the_scratch_folder_is_wiped_only_when_it_is_the_checks_own(dry, tmp_path):
    _, folder = dry
    assert (folder / "work" / ".gpu_check_work").exists()
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "result.json").write_text("{}")
    p = check("--dry", "--out", str(tmp_path / "a.json"), "--work", str(mine), cwd=tmp_path)
    assert p.returncode == 2 and "is no gpu_check scratch folder" in p.stderr and len(p.stderr.splitlines()) == 1
    assert (mine / "result.json").read_text() == "{}" and not (tmp_path / "a.json").exists()
    p = check("--dry", "--out", str(folder / "work" / "a.json"), "--work", str(folder / "work"), cwd=tmp_path)
    assert p.returncode == 2 and "which the check wipes first" in p.stderr


def test_update_docs_fills_the_table_between_the_markers_of_a_copy_of_speed_md(dry, tmp_path):
    _, folder = dry
    docs = tmp_path / "speed.md"
    shutil.copy(ROOT / "docs" / "speed.md", docs)
    before = docs.read_text()
    begin, end = before.index("<!-- gpu-check:begin"), before.index("<!-- gpu-check:end -->")
    for _ in range(2):  # filling twice gives the same file: the markers stay, only the table is replaced
        p = check("--from", str(folder / "check.json"), "--update-docs", str(docs), cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        after = docs.read_text()
        assert after[:begin] == before[:begin]
        assert after.endswith(before[end:])
        inside = after[after.index("\n", begin) + 1:after.index("<!-- gpu-check:end -->")]
        assert inside == (folder / "check.md").read_text()


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_a_row_that_cannot_run_here_is_kept_as_skipped_with_its_reason(tmp_path):
    g = _gpu_check_module()
    c = g.Check(g.DRY, True, tmp_path)
    c.ddp("1 GPU visible; DDP needs 2")
    (r,) = c.rows
    assert (r["key"], r["status"], r["reason"], r["rate"], r["wall_s"]) == ("ddp_2", "skipped",
                                                                         "1 GPU visible; DDP needs 2", None, None)
    md = g.markdown({"device": {"name": "X", "torch": "2", "cuda": None}, "started": "2026-12-07 10:00 UTC",
                     "elapsed_s": 1.0, "commit": None, "command": "c", "dry": False, "rows": c.rows})
    assert table(md) == [[r["row"], "skipped", "", "", "", "", "1 GPU visible; DDP needs 2"]]
    assert not any(tmp_path.iterdir()), "a skipped row runs nothing"


@pytest.mark.parametrize("case", ["unknown flag", "no out", "out folder missing", "out under a file",
                                  "out not json", "docs without markers", "from without docs", "full run, no GPU"])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, case):
    if case == "full run, no GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible: the full check would run")
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers\n")
    args = {"unknown flag": ["--dry", "--out", str(tmp_path / "a.json"), "--fast"],
            "no out": ["--dry"],
            "out folder missing": ["--dry", "--out", str(tmp_path / "nope" / "a.json")],
            "out under a file": ["--dry", "--out", str(plain / "a.json")],
            "out not json": ["--dry", "--out", str(tmp_path / "a.txt")],
            "docs without markers": ["--dry", "--out", str(tmp_path / "a.json"), "--update-docs", str(plain)],
            "from without docs": ["--from", str(tmp_path / "a.json")],
            "full run, no GPU": ["--out", str(tmp_path / "a.json")]}[case]
    p = check(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.py: error: "), p.stderr
    assert p.stdout == ""
    assert [x.name for x in tmp_path.iterdir()] == ["plain.md"] and plain.read_text() == "# no markers\n"


def one_point(config: list[str]) -> tuple[list[str], list[str]]:
    """(the overrides of a row's first point, its hydra/lease overrides): a sweep `a,b` or `range(0,n)` -> its first
    value."""
    point, launch = [], []
    for o in config:
        key, value = o.split("=", 1)
        if key.startswith(("hydra", "lease.")):
            launch.append(o)
            continue
        if value.startswith("range("):
            value = value[len("range("):].split(",")[0]
        elif "," in value and not value.startswith("{"):
            value = value.split(",")[0]
        point.append(f"{key}={value}")
    return point, launch


def test_the_full_checks_configs_compose_and_pass_the_run_checks_on_this_cpu(tmp_path, monkeypatch):
    """The full sizes run only on a GPU node; their overrides (resnet18 at 64 px, ViT-S/16 at 224 px, trainer=ddp on
    2 GPUs, the lease and launcher keys) are composed here and the one-device rows pass the run's own checks and
    builds (`run.setup.prepare`: data, plan, network structure), so a renamed key fails here, not on the GPU."""
    from conftest import compose_cfg

    from transferlab.run import ddp
    from transferlab.run.setup import prepare

    g = _gpu_check_module()
    c = g.Check(g.FULL, False, tmp_path)
    monkeypatch.setattr(c, "run", lambda name, args, multirun=False: (None, "planned, not run"))
    monkeypatch.setattr(g, "timed", lambda *a, **k: (_ for _ in ()).throw(SystemExit("planned, not run")))
    c.resnet(None)
    c.points()
    c.vit_lora(None)
    c.ddp(None)
    assert [r["key"] for r in c.rows] == [*ROWS[:8], "jobs_per_device_4", *ROWS[8:]]
    assert all(r["status"] == "failed" and r["rate"] is None for r in c.rows)  # nothing ran, nothing pretends it did
    composed: dict[tuple, object] = {}
    built = set()
    for r in c.rows:
        point, launch = one_point(r["config"])
        if r["key"].startswith("jobs_per_device"):
            k = r["key"].rsplit("_", 1)[1]
            assert {f"lease.per_device={k}", f"hydra.launcher.n_jobs={k}", "lease.slots=1"} <= set(launch)
        if tuple(point) in composed:  # the digits rows share their point; they differ in launcher and sweeper
            continue
        cfg = composed[tuple(point)] = compose_cfg([*point, "train.max_epochs=1"], tmp_path / "runs" / r["key"])
        if r["key"] == "ddp_2":
            assert cfg.trainer.devices == 2 and cfg.trainer.accelerator == "gpu" and ddp.check(cfg) == []
            continue
        data = tuple(o for o in point if not o.startswith(("trainer.precision=", "train.channels_last=")))
        if data not in built:  # the run's checks and builds, once per network and data
            built.add(data)
            prepare(cfg)
    vit = composed[tuple(one_point(c.rows[-2]["config"])[0])]
    assert (vit.backbone.name, vit.target.image_size, vit.peft.method, vit.backbone.weights,
            vit.trainer.precision) == ("vit_small_patch16_224", 224, "lora", None, "bf16-mixed")
