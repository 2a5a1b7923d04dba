"""Vision transformers as blocks and PEFT as a trainable-set choice: a random-init ViT-Ti (timm's
`vit_tiny_patch16_224`, narrowed to width 32 and depth 3 through backbone.kwargs) on 32x32 inputs with patch 4.

Blocks, cut and head; weights (timm's keys, resampled position embeddings, ImageNet offline); trainable sets and
layer-wise decay; LoRA and VPT change only what they add (plus the head), frozen bytes stay the source's, the merged
LoRA model computes what the unmerged one does; the feature cache stops before PEFT and equals no cache; bad PEFT
and pool settings are one line each before training; `all_depths` sweeps; a shrunk `experiment=peft_vs_n` with its
report (slow).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from omegaconf import OmegaConf

from conftest import (
    ckpt_state,
    cli_problems,
    quadrant_images,
    recomputed_test_acc,
    run_cli,
    same_tensors,
    source_state,
)
from transferlab.backbones import block_count, build_backbone
from transferlab.errors import ConfigError
from transferlab.run.experiment import run
from transferlab.run.setup import prepare
from transferlab.store import feature_cache
from transferlab.training.module import TransferModule
from transferlab.transfer.network import BACKBONE_PREFIX, block_state
from transferlab.transfer.plan import build_target_net, resolve_plan

pytestmark = pytest.mark.usefixtures("fresh_feature_memory")

NAME = "vit_tiny_patch16_224"
KWARGS = {"embed_dim": 32, "depth": 3, "num_heads": 2}
SHAPE = (3, 32, 32)
# The same ViT from the command line (conf/backbone/vit.yaml).
VIT = ["backbone=vit", "backbone.patch_size=4", "+backbone.kwargs={embed_dim:32,depth:3,num_heads:2}"]
QUICK = ["train.max_epochs=3", "train.batch_size=16", "train.lr=0.003", "target.n_per_class=10", "logger=none"]


def _vit(**kw):
    return OmegaConf.create({"family": "vit", "name": NAME, "weights": None, "pool": "cls", "img_size": None,
                             "patch_size": 4, "kwargs": dict(KWARGS), **kw})


def _timm_model(img_size=32, patch_size=4, **kw):
    return timm.create_model(NAME, pretrained=False, img_size=img_size, patch_size=patch_size, **KWARGS, **kw)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A generated 4-class image task, 3x32x32 (conftest.quadrant_images)."""
    return quadrant_images(tmp_path_factory.mktemp("images") / "images.npz", n=160, size=32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(weights file, its tensors as a source state): a seeded random ViT, the source model of the runs here."""
    torch.manual_seed(7)
    bb = build_backbone(_vit(), SHAPE)
    path = tmp_path_factory.mktemp("weights") / "vit.pt"
    torch.save(bb.blocks.state_dict(), path)
    return path, source_state(bb)


@pytest.fixture
def vit_cfg(make_cfg, images, weights):
    """A run on the image task from the weights file (source=none: the file is the source model)."""
    def _make(*overrides: str, run: str = "run"):
        return make_cfg("source=none", "target=npz", f"target.path={images}", "target.name=images", *VIT,
                        f"backbone.weights={weights[0]}", *QUICK, *overrides, run=run)
    return _make


def _initial_net(cfg, source):
    """The target net exactly as the run built it before training (same seed, same source weights)."""
    prep = prepare(cfg)
    L.seed_everything(int(cfg.seed), verbose=False)
    bb = build_backbone(cfg.backbone, prep.target.input_shape, load_weights=False)
    return build_target_net(bb, prep.plan, source, prep.target.num_classes, seed=int(cfg.seed)), prep


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


# ------------------------------------------------------------------ blocks, cut, head, weights


def test_vit_blocks_reproduce_timm_and_cut_k_keeps_k_blocks():
    torch.manual_seed(0)
    bb = build_backbone(_vit(), SHAPE)
    assert bb.block_names == ["embed", "block0", "block1", "block2", "norm"] and len(bb) == block_count(_vit())
    assert bb.output_shapes()[1:] == [(65, 32)] * 5  # 8x8 patches + the class token, width 32
    assert {"embed.cls_token", "embed.pos_embed", "embed.patch_embed.proj.weight"} <= set(bb.blocks.state_dict())
    # timm's own model with the same tensors (its keys) computes the same tokens
    from transferlab.backbones.weights import load_into, to_native_keys
    model = _timm_model()
    load_into(bb, model.state_dict(), "timm")
    assert same_tensors(to_native_keys(bb, bb.blocks.state_dict()),
                        {k: v for k, v in model.state_dict().items() if not k.startswith("head")})
    model.eval(), bb.eval()
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(bb(x), model.forward_features(x), atol=1e-6)
    for cut in (1, 3, 5):
        plan = resolve_plan(OmegaConf.create({"cut": cut, "freeze": 0}), bb)
        net = build_target_net(copy.deepcopy(bb), plan, source_state(bb), 4)
        assert net.backbone.block_names == bb.block_names[:cut]
        assert net.head[-1].in_features == 32 and net(x).shape == (2, 4)
    mean = build_target_net(build_backbone(_vit(pool="mean"), SHAPE), resolve_plan(OmegaConf.create({}), bb),
                            source_state(bb), 4)
    assert mean.head[0].kind == "mean" and mean.head[0].skip == 1  # the class token is left out of the mean
    with pytest.raises(ConfigError, match="backbone=vit backbone.name=test_vit"):
        build_backbone(OmegaConf.create({"family": "timm", "name": "test_vit", "weights": None, "kwargs": {}}), SHAPE)


def test_weights_in_timm_keys_for_another_image_and_patch_size_are_resampled(tmp_path):
    torch.manual_seed(1)
    big = _timm_model(img_size=48, patch_size=8)  # a 6x6 grid and 8x8 patches; the backbone has 8x8 and 4x4
    path = tmp_path / "vit48.pt"
    torch.save({"model": big.state_dict()}, path)  # a timm/DeiT training script's checkpoint layout
    bb = build_backbone(_vit(weights=str(path)), SHAPE)
    got = bb.blocks.state_dict()
    assert got["embed.pos_embed"].shape == (1, 65, 32) and got["embed.patch_embed.proj.weight"].shape[-2:] == (4, 4)
    assert torch.equal(got["embed.cls_token"], big.cls_token) and torch.equal(got["block2.mlp.fc2.weight"],
                                                                               big.blocks[2].mlp.fc2.weight)
    assert torch.equal(got["embed.pos_embed"][:, :1], big.pos_embed[:, :1])  # the class token's own position


def test_imagenet_offline_is_one_line_naming_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        build_backbone(_vit(weights="imagenet"), SHAPE)
    assert len(e.value.problems) == 1
    line = e.value.problems[0]
    assert line.startswith("backbone.weights='imagenet'") and "HF_HOME" in line and str(tmp_path / "hf") in line
    assert "timm/vit_tiny_patch16_224" in line


def test_trainable_sets_globs_norm_and_layerwise_decay_over_transformer_blocks():
    torch.manual_seed(0)
    bb = build_backbone(_vit(), SHAPE)
    params = [n for n, _ in bb.blocks.named_parameters()]
    attn = resolve_plan(OmegaConf.create({"trainable": ["*.attn.*"]}), bb)
    assert attn.train_params == {p for p in params if ".attn." in p} and attn.frozen == ("embed", "norm")
    mlp = resolve_plan(OmegaConf.create({"trainable": ["*.mlp.*"]}), bb)
    assert mlp.train_params == {p for p in params if ".mlp." in p}
    bias = resolve_plan(OmegaConf.create({"trainable": ["*.bias"]}), bb)
    assert bias.train_params == {p for p in params if p.endswith(".bias")}
    norm = resolve_plan(OmegaConf.create({"trainable": ["@norm"]}), bb)  # LayerNorms by type: norm1, norm2, norm
    assert norm.train_params == {p for p in params if ".norm1." in p or ".norm2." in p or p.startswith("norm.")}
    plan = resolve_plan(OmegaConf.create({"freeze": 0}), bb)
    net = build_target_net(copy.deepcopy(bb), plan, source_state(bb), 4)
    module = TransferModule(net, 4, {"lr": 0.1, "weight_decay": 0.05, "lr_decay": 0.5, "decay_norm_and_bias": False},
                            plan=plan)
    groups = {g["name"]: g for g in module.param_groups()}
    order = ["head", "norm", "block2", "block1", "block0", "embed"]  # depth from the top
    for depth, block in enumerate(order):
        assert groups[f"{block}.no_decay"]["lr"] == pytest.approx(0.1 * 0.5 ** depth), block
    embed_decay = {id(p) for p in groups["embed"]["params"]}
    embed = dict(net.backbone.blocks.named_parameters())
    assert id(embed["embed.patch_embed.proj.weight"]) in embed_decay
    assert not {id(embed["embed.cls_token"]), id(embed["embed.pos_embed"])} & embed_decay  # as timm: no decay


# ------------------------------------------------------------------ PEFT modules


def _lora_net(pool="cls", rank=4):
    torch.manual_seed(0)
    bb = build_backbone(_vit(pool=pool), SHAPE)
    plan = resolve_plan(OmegaConf.create({"freeze": "all"}), bb, peft=OmegaConf.create({"method": "lora",
                                                                                        "rank": rank}))
    return build_target_net(copy.deepcopy(bb), plan, source_state(bb), 4), plan, bb


def test_lora_merged_into_the_weights_gives_the_same_outputs_in_a_plain_timm_model():
    from transferlab.transfer import peft
    from transferlab.transfer.lora import LoRALinear

    net, plan, bb = _lora_net()
    layers = [m for m in net.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 6 and plan.peft.sites[:2] == ("block0.attn.qkv", "block0.attn.proj")
    x = torch.randn(3, *SHAPE)
    net.eval()
    with torch.no_grad():
        before = net(x)
        for m in layers:  # as after training: B is no longer zero
            m.lora_b.normal_(0, 0.5)
        after = net(x)
    assert not torch.allclose(before, after, atol=1e-3), "the LoRA update changes nothing: the test could not fail"
    state = peft.merged_state(net)
    assert not any("lora" in k for k in state) and "blocks.0.attn.qkv.weight" in state and "head.weight" in state
    plain = _timm_model(num_classes=4)
    plain.load_state_dict(state, strict=True)  # a plain timm model loads it: no key missing or left over
    plain.eval()
    with torch.no_grad():
        assert (plain(x) - after).abs().max() <= 1e-5  # absolute: allclose would add a relative tolerance
    # the frozen weights themselves are untouched by merging
    assert torch.equal(net.backbone.blocks["block1"].attn.qkv.weight, bb.blocks["block1"].attn.qkv.weight)


def test_peft_parameters_are_what_the_plan_trains_and_the_head_starts_as_without_them():
    net, plan, bb = _lora_net(rank=2)
    trainable = {n for n, p in net.backbone_parameters() if p.requires_grad}
    assert trainable == plan.peft.params == plan.train_params
    assert plan.adapted == ("block0", "block1", "block2") and plan.frozen == ("embed", "norm")
    assert plan.freeze_depth == 5 and plan.label == "freeze=5 lora r=2" and plan.fixed_prefix()[0] == 1
    probe_plan = resolve_plan(OmegaConf.create({"freeze": "all"}), bb)
    torch.manual_seed(5)
    probe = build_target_net(copy.deepcopy(bb), probe_plan, source_state(bb), 4)
    torch.manual_seed(5)
    adapted = build_target_net(copy.deepcopy(bb), plan, source_state(bb), 4)
    assert torch.equal(probe.head[-1].weight, adapted.head[-1].weight)  # LoRA draws from a stream of its own


def test_vpt_prompts_enter_after_the_class_token_shallow_and_deep():
    torch.manual_seed(0)
    bb = build_backbone(_vit(pool="mean"), SHAPE)
    for deep, sites in ((False, ("block0",)), (True, ("block0", "block1", "block2"))):
        plan = resolve_plan(OmegaConf.create({"freeze": "all"}), bb,
                            peft=OmegaConf.create({"method": "vpt", "prompts": 5, "deep": deep}))
        net = build_target_net(copy.deepcopy(bb), plan, source_state(bb), 4)
        assert plan.peft.sites == sites and plan.fixed_prefix()[0] == 1
        assert net.backbone.output_shapes()[-1] == (65 + 5, 32) and net.head[0].skip == 1 + 5
        x = torch.randn(2, *SHAPE)
        tokens = net.backbone(x, 0, 2)  # after block0: class token, 5 prompts, 64 patches
        assert tokens.shape == (2, 70, 32)
        copied = copy.deepcopy(net)  # the pre-hook survives copies (checkpoints, scores, merged saves)
        net.eval(), copied.eval()
        with torch.no_grad():
            assert torch.equal(net(x), copied(x))
        assert {n for n, p in net.backbone_parameters() if p.requires_grad} == {f"{s}.vpt.tokens" for s in sites}


# ------------------------------------------------------------------ runs: what changes, what stays


def test_frozen_transformer_blocks_stay_byte_identical_to_the_source(vit_cfg, weights):
    cfg = vit_cfg("transfer.freeze=2")
    rec = run(cfg)
    assert rec["status"] == "ok" and rec["frozen_blocks"] == ["embed", "block0"]
    target, source = ckpt_state(rec["target_ckpt"]), weights[1]
    for block in ("embed", "block0"):  # position embedding, class token, patch embedding, the first block
        assert block_state(source, block) and same_tensors(block_state(target, block), block_state(source, block))
    assert not same_tensors(block_state(target, "block1"), block_state(source, "block1"))
    assert rec["metrics"]["test/acc"] == pytest.approx(recomputed_test_acc(cfg, rec["target_ckpt"]), abs=1e-6)
    assert rec["peft"] == {"method": "none"}


def test_lora_run_changes_only_lora_and_the_head_and_saves_the_merged_model(vit_cfg, weights):
    from safetensors.torch import load_file

    cfg = vit_cfg("transfer=linear_probe", "peft=lora", "peft.rank=2", "peft.merge_on_save=true")
    rec = run(cfg)
    initial, prep = _initial_net(cfg, weights[1])
    before = {f"net.{k}": v for k, v in initial.state_dict().items()}
    after = {k: v for k, v in ckpt_state(rec["target_ckpt"]).items() if k.startswith("net.")}
    changed = _changed(before, after)
    lora = {k for k in after if ".lora_" in k}
    head = {k for k in after if k.startswith("net.head.")}
    assert changed <= lora | head and head <= changed
    assert any(k.endswith("lora_b") for k in changed), "LoRA did not train"
    for k, v in weights[1].items():  # every frozen source tensor, bit for bit
        assert torch.equal(after[k], v), k
    p = rec["peft"]
    per_block = 2 * (32 + 96) + 2 * (32 + 32)  # rank 2 on qkv (32 -> 96) and proj (32 -> 32): A and B
    assert p["method"] == "lora" and p["rank"] == 2 and p["sites"] == 6 and p["params"] == 3 * per_block
    assert rec["trainable_params"] == p["params"] + 4 * 32 + 4  # LoRA and the head: all that trains
    assert rec["total_params"] == sum(v.numel() for v in weights[1].values()) + rec["trainable_params"]
    assert "lora r=2" in rec["trainable_set"]
    # the merged file: a plain timm model with it computes the tested model's outputs
    plain = _timm_model(num_classes=4)
    plain.load_state_dict(load_file(p["merged"]), strict=True)
    tested = copy.deepcopy(initial)
    tested.load_state_dict({k[4:]: v for k, v in after.items()})
    plain.eval(), tested.eval()
    x = prep.target.test_x[:8]
    with torch.no_grad():
        assert (plain(x) - tested(x)).abs().max() <= 1e-5


def test_vpt_run_changes_only_the_prompts_and_the_head(vit_cfg, weights):
    # the cache insists: it must stop before block0, whose prompts train, and the run still changes nothing else
    cfg = vit_cfg("transfer=linear_probe", "peft=vpt", "peft.prompts=4", "peft.deep=true", "train.feature_cache=on")
    rec = run(cfg)
    initial, _ = _initial_net(cfg, weights[1])
    before = {f"net.{k}": v for k, v in initial.state_dict().items()}
    after = {k: v for k, v in ckpt_state(rec["target_ckpt"]).items() if k.startswith("net.")}
    changed = _changed(before, after)
    prompts = {f"{BACKBONE_PREFIX}block{i}.vpt.tokens" for i in range(3)}
    head = {k for k in after if k.startswith("net.head.")}
    assert changed <= prompts | head and head <= changed and prompts & changed
    assert rec["peft"]["params"] == 3 * 4 * 32 and rec["trainable_params"] == 3 * 4 * 32 + 4 * 32 + 4
    cache = rec["feature_cache"]  # used (miss, or hit: another test's run may have stored `embed`'s tokens)
    assert cache["status"] in ("miss", "hit", "memory") and cache["depth"] == 1, cache  # only `embed`


# ------------------------------------------------------------------ feature cache


def test_feature_cache_of_a_frozen_transformer_prefix_equals_no_cache(vit_cfg):
    on = run(vit_cfg("transfer.freeze=3", "train.feature_cache=on", run="on"))
    off = run(vit_cfg("transfer.freeze=3", "train.feature_cache=off", run="off"))
    assert on["feature_cache"]["status"] == "miss" and on["feature_cache"]["depth"] == 3
    m_on, m_off = on["metrics"], off["metrics"]
    assert m_on["val/acc_history"] == pytest.approx(m_off["val/acc_history"], abs=1e-6)
    assert m_on["val/loss_history"] == pytest.approx(m_off["val/loss_history"], rel=1e-4, abs=1e-5)
    assert m_on["test/acc"] == pytest.approx(m_off["test/acc"], abs=1e-6)
    assert len(set(m_on["val/loss_history"])) > 1, "nothing trained: this test could not fail"


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_linear_probe_caches_the_pooled_vector_and_equals_no_cache(vit_cfg, pool, tmp_path):
    """Every block frozen: the cache holds the head's input (one D-vector per example: the class token or the
    token mean), not the T x D tokens, under a key of its own; the fit equals the uncached one."""
    from transferlab.store.verified import load_and_check

    on = run(vit_cfg("transfer=linear_probe", f"backbone.pool={pool}", "train.feature_cache=on", run=f"on_{pool}"))
    off = run(vit_cfg("transfer=linear_probe", f"backbone.pool={pool}", "train.feature_cache=off",
                      run=f"off_{pool}"))
    cache = on["feature_cache"]
    assert cache["status"] == "miss" and cache["pooled"] is True and cache["depth"] == on["cut"]
    feats, why = load_and_check(Path(cache["path"]))
    assert why is None and feats["train"].shape[1:] == (32,), feats["train"].shape  # width 32, not 65 x 32 tokens
    m_on, m_off = on["metrics"], off["metrics"]
    assert m_on["val/loss_history"] == pytest.approx(m_off["val/loss_history"], rel=1e-4, abs=1e-5)
    assert m_on["test/acc"] == pytest.approx(m_off["test/acc"], abs=1e-6)
    assert len(set(m_on["val/loss_history"])) > 1, "nothing trained: this test could not fail"
    tokens = run(vit_cfg("transfer.freeze=3", "train.feature_cache=on", f"backbone.pool={pool}", run=f"t_{pool}"))
    assert tokens["feature_cache"]["pooled"] is False  # a block above the cache trains: tokens, not pooled


def test_feature_cache_stops_before_peft_and_falls_back_above_its_limit(vit_cfg, caplog):
    cfg = vit_cfg("transfer=linear_probe", "peft=lora", "train.feature_cache=on")
    prep = prepare(cfg)
    assert prep.plan.fixed_prefix() == (1, "block block0 carries peft=lora parameters")
    # tokens after `embed`: 160 examples x 65 x 32 floats; a limit below that falls back with one logged reason
    small = vit_cfg("transfer.freeze=3", "train.feature_cache_max_gb=0.000001", run="small")
    feature_cache._logged.clear()
    with caplog.at_level(logging.INFO, logger="transferlab.store.feature_cache"):
        rec = run(small)
    assert rec["status"] == "ok" and rec["feature_cache"]["status"] == "off"
    reason = rec["feature_cache"]["reason"]
    assert "[65, 32] per example" in reason and "train.feature_cache_max_gb=1e-06" in reason
    assert sum(reason in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------ bad inputs: one line each, before training


@pytest.mark.parametrize("overrides, line", [
    (("peft=lora", "peft.targets=[nothing_here]", "transfer=linear_probe"),
     "peft.targets='nothing_here': names of Linear layers in the blocks (['qkv', 'proj', 'fc1', 'fc2'])"),
    (("peft=lora", "peft.rank=0", "transfer=linear_probe"), "peft.rank=0: an integer >= 1"),
    (("peft=lora", "transfer.freeze=0"), "peft='lora': frozen target layers to adapt"),
    (("peft=vpt", "peft.prompts=0", "transfer=linear_probe"), "peft.prompts=0: an integer >= 1"),
    (("backbone.pool=cls", "+backbone.kwargs.class_token=false", "+backbone.kwargs.global_pool=avg",
      "+backbone.kwargs.fc_norm=false"),
     f"backbone.pool='cls': mean (backbone.name={NAME} has no class token)"),
    (("backbone.img_size=64",), "backbone.img_size=64: null or 32"),
    (("backbone.patch_size=5",), "backbone.patch_size=5: null or an integer >= 1 that divides"),
])
def test_bad_vit_and_peft_settings_are_one_line_each_before_training(vit_cfg, overrides, line):
    with pytest.raises(ConfigError) as e:
        prepare(vit_cfg(*overrides))
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(line), e.value.problems


def test_vpt_on_a_cnn_is_one_line(make_cfg):
    with pytest.raises(ConfigError) as e:
        prepare(make_cfg("peft=vpt", "transfer=linear_probe"))
    assert e.value.problems == ["peft='vpt': none or lora with this backbone: VPT inserts prompt tokens, which needs "
                                "a transformer backbone (backbone=vit)"]


@pytest.mark.parametrize("overrides, line", [
    (("peft=lora", "peft.targets=[nothing_here]", "transfer=linear_probe", *VIT), "peft.targets='nothing_here': "),
    (("peft=lora", "peft.rank=-1", "transfer=linear_probe", *VIT), "peft.rank=-1: an integer >= 1"),
    (("peft=vpt", "transfer=linear_probe"), "peft='vpt': none or lora with this backbone"),
    (("backbone.pool=cls", "+backbone.kwargs.class_token=false", "+backbone.kwargs.global_pool=avg",
      "+backbone.kwargs.fc_norm=false", *VIT), "backbone.pool='cls': mean ("),
])
def test_bad_peft_inputs_stop_the_cli_with_one_line_before_anything_trains(tmp_path, images, overrides, line):
    """The issue's four bad inputs, as a user meets them: exit 2, one problem line, no checkpoint or result
    (the source task, small_cnn's digits for the CNN case, is not pretrained either)."""
    target = ["source=none", "target=npz", f"target.path={images}"] if "backbone=vit" in overrides else []
    out = run_cli(*target, *overrides, "logger=none", cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = cli_problems(out.stderr)
    assert len(lines) == 1 and lines[0].startswith(line), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("*.ckpt"))


def test_identity_keeps_only_the_methods_own_keys(make_cfg):
    from transferlab.run import identity

    base = identity.fingerprint(make_cfg())
    assert identity.fingerprint(make_cfg("peft.rank=32")) == base          # peft=none reads no PEFT key
    lora = identity.fingerprint(make_cfg("peft=lora"))
    assert lora != base and identity.fingerprint(make_cfg("peft=lora", "peft.prompts=3")) == lora
    assert identity.fingerprint(make_cfg("peft=lora", "peft.rank=3")) != lora


# ------------------------------------------------------------------ sweeps


def test_freeze_vs_n_takes_every_freeze_depth_of_any_backbone(tmp_path, images):
    out = run_cli("-m", "experiment=freeze_vs_n", "hydra.sweeper.dry_run=true", "seed=0", "target.n_per_class=5",
                  "source=none", "target=npz", f"target.path={images}", *VIT, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    depths = sorted(ln.split("transfer.freeze=")[1] for ln in out.stdout.splitlines()
                    if ln.startswith("run ") and "transfer.freeze=" in ln)
    assert depths == ["0", "1", "2", "3", "4", "all"], out.stdout  # 5 blocks: embed, block0..2, norm
    with pytest.raises(ConfigError, match=r"transfer.freeze='all_depths': .* a sweep value: -m"):
        resolve_plan(OmegaConf.create({"freeze": "all_depths"}), ["embed", "block0", "norm"])  # one run: one depth


def test_peft_presets_expand_to_the_documented_arms():
    from test_sweeps import _expand

    for name in ("peft_vs_n", "peft_vit_animals"):
        points, _ = _expand(name)
        assert len(points) == 7 * 6 * 5, name  # n x (probe, BitFit, LoRA r=4 and 16, VPT, fine-tune) x seeds
        arms = {tuple(o for o in p.overrides if not o.startswith(("seed=", "target.n_per_class="))) for p in points}
        assert {a for a in arms if "peft=lora" in a} == {("transfer=linear_probe", "peft=lora", f"peft.rank={r}")
                                                         for r in (4, 16)}
        assert ("transfer=finetune", "transfer.trainable=[*.bias]") in arms and len(arms) == 6


@pytest.mark.slow
def test_peft_vs_n_shrunk_end_to_end_with_its_report(tmp_path, images):
    sweep = run_cli("-m", "experiment=peft_vs_n", "source=none", "target=npz", f"target.path={images}",
                    "target.name=images", "backbone.patch_size=4", "seed=0", "target.n_per_class=2,10",
                    "train.max_epochs=2", "train.min_steps=null", "logger=none", "trainer.enable_progress_bar=false",
                    cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "sweep peft_vs_n: 12 ok, 0 failed, 0 skipped" in sweep.stdout
    sweep_dir = tmp_path / "outputs" / "sweeps" / "peft_vs_n"
    records = [json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")]
    methods = sorted({(r["peft"]["method"], r["peft"].get("rank"), r["trainable_set"]) for r in records})
    assert methods == [("lora", 4, "freeze=6 lora r=4"), ("lora", 16, "freeze=6 lora r=16"),
                       ("none", None, "freeze=0"), ("none", None, "freeze=6"),
                       ("none", None, "trainable=[*.bias]"), ("vpt", None, "freeze=6 vpt p=10")]
    report = run_cli(str(sweep_dir), module="transferlab.report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = (sweep_dir / "summary.csv").read_text()
    for arm in ("freeze=6 (all) lora r=4", "freeze=6 (all) lora r=16", "freeze=6 (all) vpt p=10",
                "trainable=[*.bias]", "freeze=0"):
        assert f",{arm}," in summary, arm
    assert (sweep_dir / "report.html").exists()


def test_feature_key_names_architecture_settings_the_tensors_do_not_show(vit_cfg, weights):
    """num_heads splits the same qkv weight into other heads: the same tensors, other block outputs. A cache entry
    of the 2-head net must not be handed to the 4-head one (it was: equal keys, and the 4-head run trained on the
    2-head features with status ok)."""
    keys, states = [], []
    for heads in (2, 4):
        cfg = vit_cfg("transfer.freeze=3", f"backbone.kwargs.num_heads={heads}", run=f"h{heads}")
        net, prep = _initial_net(cfg, weights[1])
        depth, _ = prep.plan.fixed_prefix()
        assert depth == 3
        keys.append(feature_cache.feature_key(cfg, prep.target, net, depth))
        states.append(net.backbone.blocks.state_dict())
    assert not _changed(*states), "the same tensors in both nets: only the key's other parts can tell them apart"
    assert keys[0] != keys[1]
