"""What trains: block lists, parameter globs (BitFit, norm-only), surgical sets, BN policy, optimizer groups, L2-SP.

No training here: the plan and the net are checked directly on real resnet18 / small_cnn backbones.
"""

import copy
from functools import lru_cache

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import RESNET18, SMALL_CNN, optim, source_state
from transferlab.backbones import build_backbone
from transferlab.errors import ConfigError
from transferlab.training.module import TransferModule
from transferlab.transfer.plan import build_target_net, resolve_plan

SHAPE = (3, 16, 16)
OPTIM = optim(lr=0.1)


def _transfer(**kw):
    return OmegaConf.create({"cut": None, "upper": "drop", "freeze": 0, "trainable": None, "bn": "frozen",
                             "strategy": "fixed", "unfreeze_every": 1, "lp_epochs": 1, "l2sp": 0.0, **kw})


@lru_cache(maxsize=None)
def _built(key: str, seed: int):
    """Building resnet18 costs ~0.5 s on a busy CPU: build each (backbone, seed) once, hand out copies."""
    torch.manual_seed(seed)
    return build_backbone(RESNET18 if key == "resnet" else SMALL_CNN, SHAPE if key == "resnet" else (3, 8, 8))


def _fresh(bb, seed):
    return copy.deepcopy(_built("resnet" if bb is RESNET18 else "small_cnn", seed))


def _net(bb=RESNET18, shape=SHAPE, **kw):
    backbone = _fresh(bb, 1)
    plan = resolve_plan(_transfer(**kw), backbone)
    return build_target_net(backbone, plan, source_state(_fresh(bb, 0)), num_classes=3), plan


def _trainable(net):
    return {n for n, p in net.backbone_parameters() if p.requires_grad}


def test_named_blocks_train_and_the_rest_is_frozen_in_eval_mode():
    net, plan = _net(trainable=["layer3", "layer4"])
    assert plan.frozen == ("stem", "layer1", "layer2") and plan.trainable == ("layer3", "layer4", "head")
    assert plan.freeze_depth is None and plan.label == "trainable=[layer3,layer4]"  # not a freeze depth
    assert {n.split(".")[0] for n in _trainable(net)} == {"layer3", "layer4"}
    net.train()
    for name in ("stem", "layer1", "layer2"):
        assert not any(m.training for m in net.backbone.blocks[name].modules()), name
    assert all(m.training for m in net.backbone.blocks["layer4"].modules())
    assert all(p.requires_grad for p in net.head.parameters())


def test_bitfit_glob_trains_only_biases():
    net, plan = _net(trainable=["*.bias"])
    names = _trainable(net)
    assert names and all(n.endswith(".bias") for n in names)
    # resnet convs have no bias, so exactly the BN biases train
    bn_biases = {f"{m}.bias" for m, mod in net.backbone.blocks.named_modules() if isinstance(mod, _BatchNorm)}
    assert names == bn_biases
    assert plan.frozen == ()  # every block has a BN bias


def test_norm_only_glob_and_exact_parameter_names():
    net, _ = _net(trainable=["*bn*"])
    names = _trainable(net)
    bn_params = {f"{m}.{p}" for m, mod in net.backbone.blocks.named_modules() if isinstance(mod, _BatchNorm)
                 and "downsample" not in m for p in ("weight", "bias")}
    assert names == bn_params  # the glob is over names: downsample.1 (a BN) is not named "bn"
    net_norm, _ = _net(trainable=["@norm"])  # by layer type: includes the downsample BNs "*bn*" misses
    all_bn = {f"{m}.{p}" for m, mod in net_norm.backbone.blocks.named_modules() if isinstance(mod, _BatchNorm)
              for p in ("weight", "bias")}
    assert _trainable(net_norm) == all_bn and len(all_bn) > len(names)
    net2, plan2 = _net(trainable=["layer4.1.conv2.weight", "stem.bn1"])
    assert _trainable(net2) == {"layer4.1.conv2.weight", "stem.bn1.weight", "stem.bn1.bias"}
    assert plan2.frozen == ("layer1", "layer2", "layer3")


def test_surgical_set_trains_an_early_block_while_later_ones_stay_frozen():
    net, plan = _net(trainable=["layer1"], cut=4)
    assert plan.frozen == ("stem", "layer2", "layer3") and plan.trainable == ("layer1", "head")
    assert {n.split(".")[0] for n in _trainable(net)} == {"layer1"}
    net.train()
    assert net.backbone.blocks["layer1"].training and not net.backbone.blocks["layer3"].training
    x = torch.randn(4, *SHAPE)
    net(x).sum().backward()
    assert net.backbone.blocks["layer1"][0].conv1.weight.grad is not None
    assert net.backbone.blocks["layer3"][0].conv1.weight.grad is None


@pytest.mark.parametrize("kw,needles", [
    ({"trainable": ["layer9"]}, ["transfer.trainable='layer9'", "stem", "layer4", "matches nothing"]),
    ({"trainable": ["layer4"], "cut": 3}, ["transfer.trainable='layer4'", "beyond the cut", "layer2"]),
    ({"trainable": []}, ["transfer.trainable=[]", "linear_probe", "stem"]),
    ({"trainable": ["layer4"], "freeze": 2}, ["transfer.trainable=['layer4']", "freeze=2"]),
    ({"trainable": "layer4"}, ["transfer.trainable='layer4'", "a list"]),
    ({"bn": "adaptive"}, ["transfer.bn='adaptive'", "frozen", "train"]),
    ({"strategy": "chain_thaw"}, ["transfer.strategy='chain_thaw'", "gradual", "lp_ft"]),
    ({"unfreeze_every": 0, "strategy": "gradual"}, ["transfer.unfreeze_every=0"]),
    ({"lp_epochs": -1, "strategy": "lp_ft"}, ["transfer.lp_epochs=-1"]),
    ({"l2sp": -0.1}, ["transfer.l2sp=-0.1"]),
    ({"l2sp": 0.1, "cut": 0, "upper": "reinit"}, ["transfer.l2sp=0.1", "cut=0"]),
    ({"strategy": "gradual", "freeze": "all"}, ["transfer.strategy='gradual'", "freeze"]),
])
def test_bad_trainable_sets_fail_with_one_clear_line(kw, needles):
    with pytest.raises(ConfigError) as e:
        resolve_plan(_transfer(**kw), _built("resnet", 0))
    text = str(e.value)
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.mark.parametrize("bn,expect_train", [("frozen", False), ("train", True)])
def test_bn_policy_decides_bn_layers_whose_own_parameters_are_frozen(bn, expect_train):
    net, _ = _net(trainable=["*conv*"], bn=bn)  # convs train, BN affine parameters do not
    net.train()
    bns = [m for m in net.backbone.blocks["layer2"].modules() if isinstance(m, _BatchNorm)]
    assert bns and all(m.training == expect_train for m in bns)
    # blocks frozen as a whole are in eval mode under both policies
    net2, _ = _net(freeze=2, bn=bn)
    net2.train()
    assert not any(m.training for m in net2.backbone.blocks["layer1"].modules())
    assert any(m.training for m in net2.backbone.blocks["layer2"].modules())


def test_param_groups_hold_only_trainable_params_with_discriminative_rates():
    net, plan = _net(freeze=2, cut=4)
    module = TransferModule(net, 3, {**OPTIM, "lr_decay": 0.5}, plan=plan)
    groups = {g["name"]: g for g in module.param_groups()}
    # each block's 1-D parameters (BN weights and biases, the head's bias) in a no-decay group at the block's rate
    assert list(groups) == ["head", "head.no_decay", "layer3", "layer3.no_decay", "layer2", "layer2.no_decay"]
    assert groups["head"]["lr"] == 0.1 and groups["layer3"]["lr"] == 0.05 and groups["layer2"]["lr"] == 0.025
    assert all(groups[f"{b}.no_decay"]["lr"] == groups[b]["lr"] for b in ("head", "layer3", "layer2"))
    in_opt = {id(p) for g in groups.values() for p in g["params"]}
    for n, p in net.backbone_parameters():
        assert (id(p) in in_opt) == (n.split(".")[0] in ("layer2", "layer3")), n
    opt = module.configure_optimizers()
    assert len(opt.param_groups) == 6
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


def _params_with_weight_decay(module, zero: bool) -> set[str]:
    names = {id(p): f"head.{n}" for n, p in module.net.head.named_parameters()}
    names.update({id(p): n for n, p in module.net.backbone_parameters()})
    return {names[id(p)] for g in module.param_groups() for p in g["params"] if (g["weight_decay"] == 0.0) == zero}


@pytest.mark.parametrize("bb, n_decay, n_no_decay", [
    ("small_cnn", 5, 8),   # 3 conv weights (no conv bias), fc1 and head weights | 3 BN x (weight, bias), 2 biases
    ("resnet", 21, 41),    # 20 conv weights + head weight | 20 BN x (weight, bias) + head bias
])
def test_no_weight_decay_on_one_dimensional_parameters_unless_asked(bb, n_decay, n_no_decay):
    net, plan = _net(bb=SMALL_CNN if bb == "small_cnn" else RESNET18)
    module = TransferModule(net, 3, OPTIM, plan=plan)
    no_decay, decay = _params_with_weight_decay(module, True), _params_with_weight_decay(module, False)
    assert (len(decay), len(no_decay)) == (n_decay, n_no_decay)
    params = {**{f"head.{n}": p for n, p in net.head.named_parameters()}, **dict(net.backbone_parameters())}
    assert no_decay == {n for n, p in params.items() if p.ndim == 1} and decay == set(params) - no_decay
    assert all(g["weight_decay"] == 0.01 for g in module.param_groups() if not g["name"].endswith(".no_decay"))
    # train.decay_norm_and_bias=true: today's groups, one per block, every parameter decayed
    old = TransferModule(net, 3, {**OPTIM, "decay_norm_and_bias": True}, plan=plan)
    assert [g["name"] for g in old.param_groups()] == ["head", *reversed(net.backbone.block_names)]
    assert _params_with_weight_decay(old, True) == set() and _params_with_weight_decay(old, False) == set(params)
    # BitFit: every backbone parameter that trains is a bias, so nothing but the head's weight is decayed
    bitfit, plan = _net(bb=SMALL_CNN if bb == "small_cnn" else RESNET18, trainable=["*.bias"])
    decayed = _params_with_weight_decay(TransferModule(bitfit, 3, OPTIM, plan=plan), False)
    assert decayed == {f"head.{n}" for n, p in bitfit.head.named_parameters() if n.endswith("weight")}


def test_gradual_plan_keeps_every_eventual_param_in_the_optimizer_from_the_start():
    net, plan = _net(cut=3, strategy="gradual", unfreeze_every=2)
    assert plan.unfreeze_order == ("layer2", "layer1", "stem")
    assert [plan.unfreeze_epoch(b) for b in ("head", "layer2", "layer1", "stem")] == [0, 2, 4, 6]
    module = TransferModule(net, 3, OPTIM, plan=plan)
    assert [g["name"] for g in module.param_groups()] == [f"{b}{kind}" for b in ("head", "layer2", "layer1", "stem")
                                                          for kind in ("", ".no_decay")]


def test_l2sp_penalty_pulls_toward_source_and_replaces_weight_decay():
    net, plan = _net(bb=SMALL_CNN, shape=(3, 8, 8), cut=3, upper="reinit", freeze=1, l2sp=0.5)
    module = TransferModule(net, 3, OPTIM, plan=plan)
    assert set(module.l2sp.anchor) == {n for n, _ in net.backbone_parameters() if n.split(".")[0] in ("conv2", "conv3")}
    assert module.l2sp.penalty(net.backbone_parameters(), 0).item() == 0.0
    w = net.backbone.blocks["conv2"][0].weight
    with torch.no_grad():
        w.add_(1.0)
    expected = 0.5 * 0.5 * w.numel()
    assert module.l2sp.penalty(net.backbone_parameters(), 0).item() == pytest.approx(expected, rel=1e-5)
    module.l2sp.penalty(net.backbone_parameters(), 0).backward()
    assert torch.allclose(w.grad, torch.full_like(w, 0.5))  # alpha * (w - w0): back toward the source
    groups = {g["name"]: g for g in module.param_groups()}
    assert groups["conv2.l2sp"]["weight_decay"] == 0.0 and groups["fc1"]["weight_decay"] == 0.01
    assert "fc1.l2sp" not in groups  # fc1 is re-initialised (above the cut), not transferred
    assert "conv2" not in groups and "conv2.no_decay" not in groups  # transferred: all under the penalty
    assert groups["fc1.no_decay"]["weight_decay"] == 0.0 and len(groups["fc1.no_decay"]["params"]) == 1  # bias


@pytest.mark.parametrize("overrides,needle", [
    (["transfer.trainable=[conv9]"], "transfer.trainable='conv9': a block name ['conv1', 'conv2', 'conv3', 'fc1']"),
    (["transfer=gradual", "train.max_epochs=4"], "transfer.unfreeze_every=1: small enough to release all 4"),
    (["transfer=lp_ft", "transfer.lp_epochs=4", "train.max_epochs=4"], "transfer.lp_epochs=4: fewer than"),
    (["train.lr_decay=1.5"], "train.lr_decay=1.5"),
    (["train.scheduler._target_=torch.optim.lr_scheduler.OneCycle"],
     "train.scheduler._target_='torch.optim.lr_scheduler.OneCycle': an importable scheduler class or factory"),
])
def test_config_level_errors_come_before_any_training(make_cfg, overrides, needle):
    from transferlab.run.setup import prepare

    with pytest.raises(ConfigError) as e:
        prepare(make_cfg(*overrides))
    assert any(needle in p for p in e.value.problems), e.value.problems
    assert len(e.value.problems) == 1
