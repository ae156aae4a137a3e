"""The random state and train loader position in every checkpoint, for exact resumes."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from experiments.errors import UserError, printable


class ResumeState(Callback):
    """Saves what a Lightning checkpoint lacks for an exact resume, and puts it back.

    Lightning saves no random state, and restores a train loader's position only from a
    checkpoint taken inside an epoch, not from one taken at its end. This saves the random number
    generators (Python, NumPy, torch, CUDA) and the train loader's position in every checkpoint, so
    that dropout, shuffling and every other random draw after a resume are the ones the run would
    have made without the interruption. Stored as lists and tensors, so the checkpoint still loads
    with ``torch.load(weights_only=True)``. Put back when training starts rather than when the
    checkpoint is read, so that nothing Lightning does in between can draw from them first.
    """

    KEY = "resume_state"

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        kind, keys, position, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "train_loaders": [loader.state_dict() for loader in _train_loaders(trainer)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[self.KEY] = state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._to_restore = checkpoint.get(self.KEY)

    @classmethod
    def check(cls, checkpoint: dict[str, Any], path: Any) -> None:
        """Refuse, in one line, a checkpoint whose saved random state or loader positions could
        not be put back (a damaged or crafted file): tried on generators of their own, so that
        nothing of this process changes, before anything is trained or written."""
        import random

        import numpy as np
        import torch

        state = checkpoint.get(cls.KEY)
        if state is None:
            return
        try:
            random.Random().setstate(state["python"])
            kind, keys, position, has_gauss, cached = state["numpy"]
            np.random.RandomState().set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
            torch.Generator().set_state(state["torch"])
            if not all(isinstance(s, torch.Tensor) for s in state.get("cuda", [])):
                raise TypeError("the CUDA states are not tensors")
            loaders = state["train_loaders"]
            if not isinstance(loaders, list) or not all(isinstance(s, dict) for s in loaders):
                raise TypeError("the train loader positions are not a list of mappings")
        except Exception as err:  # noqa: BLE001 - whatever is wrong with it, it is the file's fault
            raise UserError(
                f"checkpoint {path} holds a damaged {cls.KEY} ({type(err).__name__}: {printable(str(err))[:120]}); "
                "continue from a checkpoint that a run wrote"
            ) from None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        import random

        import numpy as np
        import torch

        state, self._to_restore = self._to_restore, None
        random.setstate(state["python"])
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        for loader, loader_state in zip(_train_loaders(trainer), state["train_loaders"]):
            loader.load_state_dict(loader_state)


def _train_loaders(trainer: L.Trainer) -> list[Any]:
    """The train loaders that can save their position (only their iterators have started)."""
    loaders = trainer.train_dataloader
    candidates = (
        list(loaders.values()) if isinstance(loaders, dict) else loaders if isinstance(loaders, list) else [loaders]
    )
    return [d for d in candidates if hasattr(d, "state_dict") and hasattr(d, "load_state_dict")]
