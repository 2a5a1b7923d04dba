"""Cut/freeze resolution and head sizing over the real backbones (no training)."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SMALL_CNN, source_state
from transferlab.backbones import build_backbone
from transferlab.errors import ConfigError
from transferlab.transfer.network import block_state
from transferlab.transfer.plan import build_target_net, resolve_plan

MLP = OmegaConf.create({"name": "mlp", "hidden": [50, 25], "dropout": 0.0})


def _source_state(cfg, shape):
    torch.manual_seed(123)
    return source_state(build_backbone(cfg, shape))


@pytest.mark.parametrize("bb,shape", [(SMALL_CNN, (1, 8, 8)), (MLP, (1, 8, 8)), (SMALL_CNN, (3, 16, 16))])
@pytest.mark.parametrize("upper", ["drop", "reinit"])
def test_head_input_size_matches_every_cut(bb, shape, upper):
    n_blocks = len(build_backbone(bb, shape))
    state = _source_state(bb, shape)
    for cut in range(0 if upper == "reinit" else 1, n_blocks + 1):
        plan = resolve_plan(OmegaConf.create({"cut": cut, "upper": upper, "freeze": 0}), build_backbone(bb, shape).block_names)
        net = build_target_net(build_backbone(bb, shape), plan, state if cut else None, num_classes=7)
        feat_shape = net.backbone.output_shape(len(net.backbone))
        linear = net.head[-1]
        assert linear.in_features == math.prod(feat_shape), (cut, upper)
        assert net(torch.zeros(3, *shape)).shape == (3, 7)
        assert len(net.backbone) == (cut if upper == "drop" else n_blocks)


def test_copied_blocks_equal_source_and_reinit_blocks_do_not():
    shape = (1, 8, 8)
    state = _source_state(SMALL_CNN, shape)
    plan = resolve_plan(OmegaConf.create({"cut": 2, "upper": "reinit", "freeze": 1}), ["conv1", "conv2", "conv3", "fc1"])
    torch.manual_seed(7)
    net = build_target_net(build_backbone(SMALL_CNN, shape), plan, state, 5)
    for block, module in net.backbone.blocks.items():
        src = block_state(state, block)
        for k, v in module.state_dict().items():
            same = torch.equal(v, src[k])
            if block in ("conv1", "conv2"):
                assert same, (block, k)
            elif v.dim() > 1:  # conv/linear weights (BN weights start at 1 everywhere)
                assert not same, (block, k)
    assert net.frozen == ("conv1",)
    assert plan.trainable == ("conv2", "conv3", "fc1", "head")


def test_frozen_blocks_stay_in_eval_mode_and_without_grad():
    shape = (1, 8, 8)
    plan = resolve_plan(OmegaConf.create({"cut": 3, "upper": "drop", "freeze": 2}), ["conv1", "conv2", "conv3", "fc1"])
    net = build_target_net(build_backbone(SMALL_CNN, shape), plan, _source_state(SMALL_CNN, shape), 5)
    net.train()
    assert not net.backbone.blocks["conv1"].training and not net.backbone.blocks["conv2"][1].training
    assert net.backbone.blocks["conv3"].training
    assert all(not p.requires_grad for p in net.backbone.blocks["conv2"].parameters())
    assert all(p.requires_grad for p in net.backbone.blocks["conv3"].parameters())


@pytest.mark.parametrize("transfer,needle,allowed", [
    ({"cut": 9}, "transfer.cut=9", ["0..4", "conv1"]),
    ({"cut": -1}, "transfer.cut=-1", ["0..4", "conv1"]),
    ({"cut": 2, "freeze": 3}, "transfer.freeze=3", ["0..cut=2", "'all'"]),
    ({"freeze": "some"}, "transfer.freeze='some'", ["0..cut=4", "'all'"]),
    ({"upper": "keep"}, "transfer.upper='keep'", ["'drop'", "'reinit'"]),
    ({"cut": 0, "upper": "drop"}, "transfer.cut=0", ["upper=reinit"]),  # the way to a cut of 0: scratch
])
def test_bad_plans_name_key_value_and_allowed(transfer, needle, allowed):
    with pytest.raises(ConfigError) as e:
        resolve_plan(OmegaConf.create({"cut": None, "upper": "drop", "freeze": 0, **transfer}), ["conv1", "conv2", "conv3", "fc1"])
    (line,) = e.value.problems
    key_value, what_is_allowed = line.split(": ", 1)
    assert key_value == needle, line
    assert all(a in what_is_allowed for a in allowed), line


def test_freeze_all_freezes_every_copied_block():
    plan = resolve_plan(OmegaConf.create({"cut": 3, "upper": "reinit", "freeze": "all"}), ["a", "b", "c", "d"])
    assert plan.frozen == ("a", "b", "c") and plan.trainable == ("d", "head")
