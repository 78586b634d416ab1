"""The run's models: built fresh (seeded) or from a checkpoint, saved atomically.

A checkpoint is ``{"model": state_dict, "spec": ModelSpec.model_dump(), "cycle": c}``;
``load_checkpoint`` needs nothing else to rebuild the model. A model whose weights are not
all finite (a diverged training) is never written.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from balseg.errors import RunDirError, TrainingDivergedError
from balseg.fsutil import atomic_write_bytes
from balseg.models.segmenter import MCDropoutSegmenter, ModelSpec, build_model
from balseg.seeding import model_init_seed


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _non_finite(model: torch.nn.Module) -> str | None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's dict; an unreadable file is a RunDirError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        # a file that is not a zip archive fails in the (weights-only) unpickler, whose
        # message is many lines of advice about weights_only that do not apply here
        why = ("damaged, or not written by torch.save" if isinstance(err, pickle.UnpicklingError)
               else str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise RunDirError(f"{path}: not a readable checkpoint ({why}); delete it to retrain"
                          " that cycle") from err
    if not isinstance(state, dict) or "model" not in state or "spec" not in state:
        raise RunDirError(f"{path}: not a balseg checkpoint (no model or spec)")
    return state


def load_checkpoint(path: Path, device: torch.device | str = "cpu"
                    ) -> tuple[MCDropoutSegmenter, ModelSpec, int]:
    """(model in eval mode, its spec, its cycle) from a checkpoint file alone."""
    state = read_checkpoint(path)
    spec = ModelSpec(**state["spec"])
    model = build_model(spec.model_copy(update={"encoder_weights": None}))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), spec, int(state.get("cycle", -1))


class ModelFactory:
    """Builds the loop's models for one spec and seed (the 'model' collaborator).

    ``fresh()`` is the seeded initial model (the same weights on every rank and every
    resume); ``load(path)`` a checkpoint's weights in such a model; ``save`` writes one.
    """

    def __init__(self, spec: ModelSpec, *, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.seed = seed
        self.device = torch.device(device)

    def fresh(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_init_seed(self.seed))
            model = build_model(self.spec)
        return model.to(self.device).to(memory_format=torch.channels_last)

    def load_state(self, state: dict[str, Any]) -> torch.nn.Module:
        model = self.fresh()
        model.load_state_dict(state)
        return model.eval()

    def save(self, model: torch.nn.Module, path: Path, cycle: int) -> None:
        bad = _non_finite(model)
        if bad is not None:
            raise TrainingDivergedError(
                f"training diverged: the model has non-finite weights ({bad}), so no"
                f" checkpoint was written to {path}" + TrainingDivergedError.ADVICE)
        atomic_torch_save({"model": model.state_dict(), "cycle": cycle,
                           "spec": self.spec.model_dump()}, path)


