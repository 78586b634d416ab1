"""``balseg evaluate``: a checkpoint of a run on any split of its dataset."""

from __future__ import annotations

import json
from pathlib import Path

from balseg.fsutil import atomic_write_bytes
from balseg.rundir import RunDir


def evaluate_run(run_dir: Path, split: str, data_root: Path | None, *,
                 cycle: int | None = None, progress: bool = False) -> dict:
    """Evaluate the newest (or ``cycle``'s) checkpoint of ``run_dir`` on ``split``; writes
    eval_<split>.json."""
    import torch

    from balseg.data import open_source, prepare_split
    from balseg.loop.runner import _default_cache
    from balseg.models import ModelSpec, build_model, input_mean_std
    from balseg.train import confusion_matrix, iou_from_confusion

    rd = RunDir(run_dir)
    cfg = rd.load_config()
    cycle, path = rd.require_checkpoint(cycle)
    state = torch.load(path, map_location="cpu", weights_only=True)
    spec = ModelSpec(**state["spec"])
    model = build_model(ModelSpec(**{**spec.__dict__, "encoder_weights": None}))
    model.load_state_dict(state["model"])
    d = cfg.data
    root = str(data_root) if data_root else d.root
    src = open_source(d.dataset, root, split, **d.options)
    prepared = prepare_split(src, size=d.size, pad_multiple=d.pad_multiple,
                             cache_dir=_default_cache(), progress=progress)
    targets = [torch.from_numpy(src.load(i)[1]) for i in range(len(src))]
    mean, std = input_mean_std(spec)
    cm = confusion_matrix(model, prepared.images, targets, src.info.num_classes,
                          valid_hw=prepared.valid_hw, mean=mean, std=std, progress=progress)
    miou, per_class = iou_from_confusion(cm)
    result = {"split": split, "cycle": int(state["cycle"]), "miou": miou,
              "per_class_iou": per_class, "class_names": list(src.info.class_names)}
    atomic_write_bytes(rd.eval_file(split), json.dumps(result, indent=1).encode())
    return result
