"""Real backbones as blocks: torchvision ResNets, timm stages, weights from files, ImageNet offline, end-to-end runs."""

import json

import pytest
import timm
import torch
import torchvision
from omegaconf import OmegaConf

from conftest import RESNET18, ckpt_state, quadrant_images, recomputed_test_acc, same_tensors, source_state
from transferlab.backbones import build_backbone
from transferlab.errors import ConfigError
from transferlab.run.experiment import run
from transferlab.training.callbacks import _BlockSummary
from transferlab.training.module import TransferModule
from transferlab.transfer.network import BACKBONE_PREFIX, block_state
from transferlab.transfer.plan import build_target_net, resolve_plan


def _timm(name: str, weights=None):
    return OmegaConf.create({"family": "timm", "name": name, "weights": weights, "kwargs": {}})


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """A generated 4-class image task, 3x16x16 (conftest.quadrant_images)."""
    return quadrant_images(tmp_path_factory.mktemp("tiny") / "tiny.npz", n=120, size=16)


def test_resnet18_blocks_shapes_and_avg_pool_head():
    torch.manual_seed(0)
    bb = build_backbone(RESNET18, (3, 32, 32))
    assert bb.block_names == ["stem", "layer1", "layer2", "layer3", "layer4"] and bb.pool == "avg"
    assert [s[0] for s in bb.output_shapes()[1:]] == [64, 64, 128, 256, 512]
    ref = torchvision.models.resnet18()
    assert sum(p.numel() for p in bb.parameters()) == sum(p.numel() for n, p in ref.named_parameters()
                                                         if not n.startswith("fc."))
    plan = resolve_plan(OmegaConf.create({"cut": 3, "freeze": 2}), bb)
    net = build_target_net(bb, plan, source_state(bb), 5)
    assert net.head[-1].in_features == 128 and net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    assert net.backbone.block_names == ["stem", "layer1", "layer2"]


@pytest.mark.parametrize("cfg, shape", [(RESNET18, (3, 32, 32)),
                                        (OmegaConf.create({"family": "small_cnn", "name": "small_cnn",
                                                           "channels": [8, 16], "hidden": [32], "dropout": 0.1,
                                                           "weights": None}), (1, 8, 8))])
def test_the_setup_checks_structure_is_the_backbone_on_the_meta_device(cfg, shape):
    """`build_structure` (what `run/setup.prepare` checks the plan against) has the real build's blocks, parameter
    names, modules and output shapes, on the meta device: no tensor initialised, no random number drawn."""
    from transferlab.backbones import build_structure

    meta, real = build_structure(cfg, shape), build_backbone(cfg, shape)
    assert all(p.is_meta for p in meta.parameters())
    assert [n for n, _ in meta.blocks.named_parameters()] == [n for n, _ in real.blocks.named_parameters()]
    assert [type(m) for m in meta.modules()] == [type(m) for m in real.modules()]
    assert meta.output_shapes() == real.output_shapes()
    state = torch.get_rng_state()
    build_structure(cfg, shape)
    assert torch.equal(state, torch.get_rng_state())


def test_a_run_builds_its_backbone_once(make_cfg, monkeypatch):
    """A scratch run builds one real backbone: the setup checks read the structure built on the meta device (before:
    one real backbone for the checks, one for the run)."""
    from importlib import import_module

    from transferlab.backbones import FAMILIES

    resnet = import_module(FAMILIES["resnet"])
    builds = []
    original = resnet.build

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        builds.append(next(out.parameters()).is_meta)
        return out

    monkeypatch.setattr(resnet, "build", counting)
    record = run(make_cfg("transfer=scratch", "backbone=resnet18", "target.n_per_class=2", "train.max_epochs=1",
                          "target.channels=3", "target.image_size=32"))
    assert record["status"] == "ok" and builds == [True, False]  # the checks' structure, then the run's backbone


@pytest.mark.parametrize("fmt", ["torchvision", "checkpoint"])
def test_resnet_weights_file_loads_exactly(tmp_path, fmt):
    torch.manual_seed(3)
    ref = torchvision.models.resnet18()
    path = tmp_path / "w.pt"
    if fmt == "torchvision":  # the library model's own keys: conv1.weight, layer1.0..., fc (dropped)
        torch.save(ref.state_dict(), path)
    else:  # a Lightning checkpoint of one of our runs
        torch.manual_seed(4)
        ours = build_backbone(RESNET18, (3, 16, 16))
        torch.save({"state_dict": source_state(ours), "epoch": 3}, path)
    bb = build_backbone(OmegaConf.merge(RESNET18, {"weights": str(path)}), (3, 16, 16))
    got = bb.blocks.state_dict()
    if fmt == "torchvision":
        assert torch.equal(got["stem.conv1.weight"], ref.conv1.weight)
        assert torch.equal(got["stem.bn1.running_var"], ref.bn1.running_var)
        assert torch.equal(got["layer3.1.conv2.weight"], ref.layer3[1].conv2.weight)
    else:
        assert same_tensors(got, ours.blocks.state_dict())
    random = build_backbone(RESNET18, (3, 16, 16), load_weights=True)
    assert not torch.equal(random.blocks.state_dict()["stem.conv1.weight"], got["stem.conv1.weight"])


def test_timm_weights_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    model = timm.create_model("test_convnext", pretrained=False)
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    bb = build_backbone(_timm("test_convnext", str(path)), (3, 32, 32))
    assert torch.equal(bb.blocks.state_dict()["stage0.stem.0.weight"], model.stem[0].weight)


def test_bad_weights_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match=r"backbone.weights=.*nope.pt.*existing weights file"):
        build_backbone(OmegaConf.merge(RESNET18, {"weights": str(tmp_path / "nope.pt")}), (3, 16, 16))
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), other)
    with pytest.raises(ConfigError) as e:
        build_backbone(OmegaConf.merge(RESNET18, {"weights": str(other)}), (3, 16, 16))
    assert "missing" in str(e.value) and "stem" in str(e.value) and "file keys look like" in str(e.value)


def test_imagenet_offline_says_where_the_file_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        build_backbone(OmegaConf.merge(RESNET18, {"weights": "imagenet"}), (3, 16, 16))
    msg = str(e.value)
    assert len(e.value.problems) == 1 and "TORCH_HOME" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    with pytest.raises(ConfigError) as e:
        build_backbone(_timm("test_efficientnet", "imagenet"), (3, 16, 16))
    assert len(e.value.problems) == 1 and "HF_HOME" in str(e.value) and "timm/test_efficientnet" in str(e.value)
    with pytest.raises(ConfigError, match="ImageNet weights exist for"):
        build_backbone(OmegaConf.create({"name": "mlp", "hidden": [4], "weights": "imagenet"}), (1, 4, 4))


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext", "test_byobnet"])
def test_timm_stages_are_blocks_that_reproduce_timm_features(name):
    torch.manual_seed(0)
    bb = build_backbone(_timm(name), (3, 32, 32))
    model = timm.create_model(name, pretrained=False)
    assert bb.block_names == [f"stage{i}" for i in range(len(model.feature_info))]
    assert [s[0] for s in bb.output_shapes()[1:]] == [f["num_chs"] for f in model.feature_info]
    # same weights, same outputs: load the full timm model's state into the blocks (native keys)
    from transferlab.backbones.weights import load_into
    load_into(bb, model.state_dict(), "test")
    model.eval(), bb.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        out = x
        for block, expected in zip(bb.blocks.values(), ref):
            out = block(out)
            assert torch.allclose(out, expected, atol=1e-5)


def test_timm_models_that_are_not_stage_sequences_are_refused():
    with pytest.raises(ConfigError, match="backbone.name='test_vit'"):
        build_backbone(_timm("test_vit"), (3, 32, 32))
    with pytest.raises(ConfigError, match="backbone.name='no_such_net'"):
        build_backbone(_timm("no_such_net"), (3, 32, 32))


def test_model_summary_lists_resnet18_blocks_with_trainable_and_frozen_counts():
    torch.manual_seed(0)
    bb = build_backbone(RESNET18, (3, 16, 16))
    plan = resolve_plan(OmegaConf.create({"cut": 4, "freeze": 2}), bb)
    net = build_target_net(bb, plan, source_state(bb), 4)
    summary = _BlockSummary(TransferModule(net, 4, {"lr": 0.01}, plan=plan), max_depth=-1)
    data = {k: [str(v).strip() for v in vals] for k, vals in summary._get_summary_data()}
    rows = data["Name"]
    assert rows == [f"{BACKBONE_PREFIX}{b}" for b in ("stem", "layer1", "layer2", "layer3")] + ["net.head"]
    counts = {b: sum(p.numel() for p in net.backbone.blocks[b].parameters()) for b in ("stem", "layer1", "layer2")}
    assert data["Trainable"][0] == "0" and data["Frozen"][0] != "0"          # stem frozen
    assert data["Trainable"][2] != "0" and data["Frozen"][2] == "0"          # layer2 trains
    from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count
    assert data["Frozen"][1] == get_human_readable_count(counts["layer1"]).strip()
    assert data["Trainable"][2] == get_human_readable_count(counts["layer2"]).strip()
    text = str(summary)
    assert "Trainable" in text and "Frozen" in text and "layer3" in text


def _weights_file(cfg, path, shape=(3, 16, 16)):
    """A weights file of a seeded random backbone (block-relative keys); returns its tensors as a source state."""
    torch.manual_seed(11)
    bb = build_backbone(cfg, shape)
    torch.save(bb.blocks.state_dict(), path)
    return source_state(bb)


@pytest.mark.parametrize("backbone,extra", [("resnet18", []), ("timm", ["backbone.name=test_efficientnet"])])
def test_run_from_local_weights_file_with_cut3_freeze2(make_cfg, tiny_images, tmp_path, backbone, extra):
    cfg_bb = RESNET18 if backbone == "resnet18" else _timm("test_efficientnet")
    weights = tmp_path / "weights.pt"
    source = _weights_file(cfg_bb, weights)
    cfg = make_cfg("source=none", "target=npz", f"target.path={tiny_images}", "target.name=tiny",
                   f"backbone={backbone}", *extra, f"backbone.weights={weights}", "transfer.cut=3",
                   "transfer.freeze=2", "train.max_epochs=2", "train.batch_size=16", "train.lr=0.01",
                   "logger=none")
    rec = run(cfg)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and rec["cut"] == 3 and len(result["frozen_blocks"]) == 2
    assert len(result["metrics"]["val/acc_history"]) == 2
    # test/acc is the best checkpoint's accuracy on the test split, recomputed here from the file
    assert result["metrics"]["test/acc"] == pytest.approx(recomputed_test_acc(cfg, rec["target_ckpt"]), abs=1e-6)
    target = ckpt_state(rec["target_ckpt"])
    frozen, trained = result["frozen_blocks"], result["trainable_blocks"][0]
    for block in frozen:  # weights and BN buffers straight from the file, bit for bit
        assert block_state(source, block) and same_tensors(block_state(target, block), block_state(source, block))
    src = block_state(source, trained)
    assert any(not torch.equal(v, src[k]) for k, v in block_state(target, trained).items()
               if v.is_floating_point()), "the trainable block did not move"
    kept = {k[len(BACKBONE_PREFIX):].split(".")[0] for k in target if k.startswith(BACKBONE_PREFIX)}
    assert len(kept) == 3, kept  # cut=3 with upper=drop keeps three blocks


def test_source_task_trains_further_from_the_weights_file(make_cfg, tiny_images, tmp_path):
    """backbone.weights + a source task: pretraining starts from the file (here at a negligible lr, so the
    transferred conv weights are still the file's), then the target run copies the source model."""
    weights = tmp_path / "weights.pt"
    source = _weights_file(RESNET18, weights)
    rec = run(make_cfg("source=npz", f"source.path={tiny_images}", "source.name=tiny_src", "target=npz",
                       f"target.path={tiny_images}", "target.name=tiny", "backbone=resnet18",
                       f"backbone.weights={weights}", "pretrain.max_epochs=1", "pretrain.lr=1e-9",
                       "transfer.cut=2", "transfer.freeze=all", "train.max_epochs=1", "logger=none"))
    assert rec["status"] == "ok" and rec["source_cache"] == "miss"
    target = ckpt_state(rec["target_ckpt"])
    for k in ("stem.conv1.weight", "layer1.0.conv1.weight"):
        assert torch.allclose(target[BACKBONE_PREFIX + k], source[BACKBONE_PREFIX + k], atol=1e-6), k
