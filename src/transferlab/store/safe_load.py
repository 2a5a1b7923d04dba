"""The one way to read weights and checkpoints: tensors and plain containers only, never code.

`torch.load(weights_only=True)` refuses any pickle that would import or call something; `.safetensors` files
hold no pickle at all. A refusal becomes a `WeightsError` that says which file and why, so the entry point can
print one clear line instead of a traceback from deep inside the unpickler. Its two kinds are told apart because
callers treat them differently: `UnsafeFileError` (pickled code: someone planted it) and `CorruptFileError`
(damaged bytes: recompute what was derived).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO



class WeightsError(ValueError):
    """A weights/checkpoint file that is missing, corrupt, unsafe or not a state dict."""


class UnsafeFileError(WeightsError):
    """Refused: the file holds pickled code or objects. Never a damaged file of ours: someone put it there, so a
    run dir holding one is refused (ConfigError), while a cache entry holding one is set aside and recomputed."""


class CorruptFileError(WeightsError):
    """Unreadable, truncated, not a torch file, or (`transferlab.store.verified`) bytes that fail their checksum: a
    derived file in this state is recomputed, never used."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load(..., weights_only=True)` (or safetensors); unsafe or unreadable files raise WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location) if isinstance(map_location, str) else "cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"{path}: not a readable safetensors file ({e})") from e
    return load_open(path, path, map_location)


def load_open(source: str | Path | BinaryIO, path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load(source, weights_only=True)` where `source` is `path` or a file already open on it (so a caller
    that hashed those bytes loads the very same bytes); errors name `path`. torch is imported here, not at the top:
    the torch-free readers (result.json through `verified`, the sweeper) import this module's error classes."""
    import torch

    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message starts with "Weights only load failed"; keep its first line (names the global).
        reason = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        if "Weights only load failed" in str(e):
            raise UnsafeFileError(f"{path}: refused: the file holds pickled code/objects, not just tensors "
                                  f"(weights_only=True). {reason}".rstrip()) from e
        raise CorruptFileError(f"{path}: corrupt or not a torch file ({str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        first = (str(e).splitlines()[0] if str(e) else type(e).__name__).split(". ")[0]
        raise CorruptFileError(f"{path}: corrupt or not a torch file ({first})") from e

