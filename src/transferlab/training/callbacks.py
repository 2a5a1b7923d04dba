"""Small Lightning hook objects: per-epoch metric history and a per-block model summary."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import ModelSummary as Summary
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from transferlab.transfer.network import BACKBONE_PREFIX


class MetricHistory(L.Callback):
    """Records `val/acc` (and loss) after every validation epoch, for learning curves in result.json."""

    def __init__(self, keys: tuple[str, ...] = ("val/acc", "val/loss")):
        self.keys = keys
        self.history: dict[str, list[float]] = {k: [] for k in keys}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the epoch-end hooks: the module logs its epoch metrics in its own on_validation_epoch_end
        if trainer.sanity_checking:
            return
        for k in self.keys:
            if k in trainer.callback_metrics:
                self.history[k].append(float(trainer.callback_metrics[k]))

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        self.history = {k: list(v) for k, v in state_dict["history"].items()}


class _BlockSummary(Summary):
    """Lightning's summary, one row per backbone block and the head, with trainable and frozen counts."""

    def summarize(self):
        full = super().summarize()
        return {k: v for k, v in full.items()
                if k == "net.head" or (k.startswith(BACKBONE_PREFIX) and "." not in k[len(BACKBONE_PREFIX):])}

    def _get_summary_data(self):
        arrays = super()._get_summary_data()
        modules = [layer._module for layer in self._layer_summary.values()]
        trainable = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in modules]
        frozen = [sum(p.numel() for p in m.parameters() if not p.requires_grad) for m in modules]
        arrays = [a for a in arrays if a[0] != "FLOPs"]
        arrays.insert(4, ("Trainable", [get_human_readable_count(n) for n in trainable]))
        arrays.insert(5, ("Frozen", [get_human_readable_count(n) for n in frozen]))
        return arrays


class BlockModelSummary(ModelSummary):
    """Prints total vs trainable parameters per block at fit start (Heaton's summary)."""

    def __init__(self):
        super().__init__(max_depth=-1)

    def _summary(self, trainer, pl_module):
        return _BlockSummary(pl_module, max_depth=-1)
