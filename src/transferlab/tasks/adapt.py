"""Input adaptation stated in the task config: `channels`, `image_size`, `normalize`.

A backbone states what it needs (e.g. 3-channel 32x32 for a CIFAR ResNet); the task config says how its images
get there, so `target.channels=3 target.image_size=32` always produces N x 3 x 32 x 32 tensors. Nothing here is
implicit: a value of null keeps the native property. Normalisation statistics come from the train pool only
(never val/test), so they are fixed across seeds and n.

`normalize` values: `none` (inputs as read), `pool` (train-pool mean/std per channel or feature), `imagenet`,
`{mean: [...], std: [...]}`; all of them expect images in [0, 1], which `arrays.check_inputs` enforces.
`prenormalized` is for inputs the user already standardised (any range): they are used exactly as given and
the [0, 1] check is skipped. It is a name of its own, not a silent default, so 0..255 floats stored by mistake
still fail with the fix instead of training on inputs 255 times too large.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from transferlab.errors import ConfigError, Problem, problem

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
NORMALIZE = ("none", "pool", "imagenet", "prenormalized")
_CHUNK = 4096  # examples per resize call: bounds peak memory on 50k-image pools


def _norm_kind(v) -> str | None:
    """'none' | 'pool' | 'imagenet' | 'prenormalized' | 'explicit', or None if invalid."""
    if v is None or v is False or v == "none":
        return "none"
    if isinstance(v, str):
        return v if v in NORMALIZE else None
    if hasattr(v, "get") and v.get("mean") is not None and v.get("std") is not None:
        return "explicit"
    return None


def check_task_keys(cfg, key: str) -> list[Problem]:
    """Problems with the keys every task kind shares (one line each), before any data is read: ranges, and
    `normalize`, a name or {mean, std} (the schema holds the types)."""
    out = []
    ch = cfg.channels
    if ch is not None and ch not in (1, 3):
        out.append(problem(f"{key}.channels", ch, "null (native), 1 or 3"))
    size = cfg.image_size
    if size is not None and size < 1:
        out.append(problem(f"{key}.image_size", size, "null (native) or an integer >= 1 (square side in pixels)"))
    norm = cfg.normalize
    kind = _norm_kind(norm)
    if kind is None:
        out.append(problem(f"{key}.normalize", norm, f"one of {list(NORMALIZE)} or {{mean: [...], std: [...]}}"))
    elif kind == "explicit" and any(float(s) <= 0 for s in norm.get("std")):
        out.append(problem(f"{key}.normalize.std", list(norm.get("std")), "every std > 0"))
    for frac in ("val_fraction", "test_fraction"):
        if not 0 < cfg[frac] < 1:
            out.append(problem(f"{key}.{frac}", cfg[frac], "a fraction strictly between 0 and 1"))
    for count in ("val_size", "max_per_class"):
        if cfg[count] is not None and cfg[count] < 1:
            out.append(problem(f"{key}.{count}", cfg[count], "null or an integer >= 1"))
    return out


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    parts = [F.interpolate(x[i:i + _CHUNK], size=(size, size), mode="bilinear", align_corners=False,
                           antialias=True) for i in range(0, len(x), _CHUNK)]
    return torch.cat(parts) if parts else x.new_zeros((0, x.shape[1], size, size))


def _channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:  # grey -> RGB by repetition (what torchvision's Grayscale(3) does)
        return x.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:  # RGB -> grey with ITU-R 601 luma weights (PIL's "L" conversion)
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"cannot map {have} channels to {channels}")


class Adapter:
    """Maps arrays in the task's native form (N x C x H x W in [0, 1], or N x D features) to backbone inputs.

    `fit_transform` on the train pool (normalisation statistics), then applied unchanged to val and test.
    `normalize=prenormalized`: images the user standardised already (outside [0, 1]) pass unchanged, with no range
    check (`range_checked` is False); every other value expects images in [0, 1].
    """

    def __init__(self, cfg, key: str):
        self.key = key
        self.channels = cfg.channels
        self.image_size = cfg.image_size
        self.norm_cfg = cfg.normalize
        self.norm = _norm_kind(self.norm_cfg)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.native_shape: tuple[int, ...] | None = None

    @property
    def range_checked(self) -> bool:
        """Whether images must be in [0, 1] (all normalize values but prenormalized)."""
        return self.norm != "prenormalized"

    def shown_norm(self):
        """The normalize value as the user wrote it, for error lines."""
        if self.norm == "explicit":
            return {"mean": [float(v) for v in self.norm_cfg["mean"]], "std": [float(v) for v in self.norm_cfg["std"]]}
        return self.norm

    def _shape_only(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            if self.channels is not None or self.image_size is not None:
                raise ConfigError(problem(f"{self.key}.channels/image_size", [self.channels, self.image_size],
                                          f"null for feature-vector tasks (inputs are N x {x.shape[1]})"))
            return x
        if x.dim() != 4:
            raise ConfigError(problem(self.key, tuple(x.shape), "images N x C x H x W or features N x D"))
        if self.channels is not None:
            try:
                x = _channels(x, int(self.channels))
            except ValueError as e:
                raise ConfigError(problem(f"{self.key}.channels", self.channels, str(e))) from None
        if self.image_size is not None:
            x = _resize(x, int(self.image_size))
        return x

    def fit_transform(self, pool: torch.Tensor) -> torch.Tensor:
        """Adapt the train pool and take normalisation statistics from it (never from val/test)."""
        self.native_shape = tuple(pool.shape[1:])
        x = self._shape_only(pool)
        dims = [0] if x.dim() == 2 else [0, 2, 3]
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1, 1)
        if self.norm == "pool":
            if len(x) < 2:
                raise ConfigError(problem(f"{self.key}.normalize", "pool", "a train pool of >= 2 examples"))
            self.mean = x.mean(dims).view(shape)
            self.std = x.std(dims).clamp_min(1e-6).view(shape)  # constant features stay finite
        elif self.norm in ("imagenet", "explicit"):
            src = IMAGENET if self.norm == "imagenet" else self.norm_cfg
            mean = torch.tensor([float(v) for v in src["mean"]])
            std = torch.tensor([float(v) for v in src["std"]])
            n = x.shape[1]
            if len(mean) != n or len(std) != n:
                shown = "imagenet" if self.norm == "imagenet" else {"mean": mean.tolist(), "std": std.tolist()}
                raise ConfigError(problem(f"{self.key}.normalize", shown, f"{len(mean)} channel statistics but "
                                          f"inputs have {n} channels (set {self.key}.channels={len(mean)})"))
            self.mean, self.std = mean.view(shape), std.view(shape)
        return self._normalize(x)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(self._shape_only(x))

    def describe(self) -> dict[str, Any]:
        """What was done to the inputs, for the result record."""
        return {
            "native_shape": list(self.native_shape or ()),
            "channels": self.channels, "image_size": self.image_size, "normalize": self.norm,
            "mean": None if self.mean is None else [round(float(v), 6) for v in self.mean.flatten()],
            "std": None if self.std is None else [round(float(v), 6) for v in self.std.flatten()],
        }
