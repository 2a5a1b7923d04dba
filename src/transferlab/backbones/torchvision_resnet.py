"""torchvision ResNets as blocks: stem (conv1-bn1-relu-maxpool), layer1..layer4; the head sits on a global avg pool.

`backbone.name` picks the architecture (resnet18/34/50/101/152, resnext*, wide_resnet*). Inputs with other than
3 channels get a matching first conv (random weights only: ImageNet weights need 3 channels, which the task's
`channels` key provides).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from transferlab.backbones.base import BlockBackbone, split_sequential
from transferlab.errors import ConfigError, Problem, problem

BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
         "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def build(cfg, input_shape: tuple[int, ...]) -> BlockBackbone:
    name = str(cfg.name)
    if name not in ARCHS:
        raise ConfigError(problem("backbone.name", name, f"one of {list(ARCHS)} (or backbone=timm for others)"))
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs C x H x W inputs, got {input_shape}")
    model = torchvision.models.get_model(name, weights=None)
    if input_shape[0] != 3:
        model.conv1 = nn.Conv2d(input_shape[0], model.conv1.out_channels, 7, 2, 3, bias=False)
    return split_sequential(model, ["maxpool", "layer1", "layer2", "layer3", "layer4"], BLOCKS, input_shape,
                            pool="avg")


def imagenet_state(cfg) -> dict[str, torch.Tensor]:
    """torchvision's DEFAULT ImageNet weights from the torch hub cache; offline and uncached -> one clear error."""
    weights = torchvision.models.get_model_weights(str(cfg.name)).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / os.path.basename(weights.url)
    if not path.exists():
        if os.environ.get("TRANSFERLAB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0")) not in ("", "0"):
            raise ConfigError(_missing(cfg, weights.url, path, "offline"))
        path.parent.mkdir(parents=True, exist_ok=True)
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)  # a firewalled network fails in seconds instead of hanging
        try:
            torch.hub.download_url_to_file(weights.url, str(path), progress=False)
        except Exception as e:  # no network, proxy, disk...
            raise ConfigError(_missing(cfg, weights.url, path, f"{type(e).__name__}: {e}")) from e
        finally:
            socket.setdefaulttimeout(old)
    return torch.load(path, map_location="cpu", weights_only=True)


def _missing(cfg, url: str, path: Path, why: str) -> Problem:
    return problem("backbone.weights", "imagenet",
                   f"{cfg.name} ImageNet weights are not cached and cannot be downloaded ({why}); download {url} "
                   f"to {path} (the cache is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to move it), "
                   f"or pass backbone.weights=<path to a state dict>")
