"""``balseg evaluate``: a checkpoint of a run on any split of its dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from balseg.fsutil import atomic_write_bytes
from balseg.rundir import RunDir


def evaluate_checkpoint(run_dir: Path, split: str, data_root: Path | None = None, *,
                        cycle: int | None = None, progress: bool = False,
                        device: str | None = None) -> dict[str, Any]:
    """mIoU and per-class IoU of a checkpoint of ``run_dir`` (the latest by default) on
    ``split``, computed as the loop computes it (``train.confusion_matrix``), on ``device``
    (default: the run's ``device``, so a GPU when the run has one)."""
    from balseg.data import open_source, prepare_split, prepared_dir
    from balseg.devices import resolve_device
    from balseg.models import input_mean_std, load_checkpoint
    from balseg.train import confusion_matrix, iou_from_confusion

    rd = RunDir(run_dir)
    cfg = rd.load_config()
    cycle, path = rd.require_checkpoint(cycle)
    d = cfg.data
    src = open_source(d.dataset, str(data_root) if data_root else d.root, split, **d.options)
    prepared = prepare_split(src, size=d.size, pad_multiple=d.pad_multiple, resize=d.resize,
                             cache_dir=prepared_dir(d.cache_dir), progress=progress,
                             in_memory=d.in_memory)
    dev = resolve_device(cfg.device if device is None else device,
                         what="device" if device is None else "--device")
    model, spec, _ = load_checkpoint(path, dev)
    mean, std = input_mean_std(spec)
    cm = confusion_matrix(model, prepared, mean=mean, std=std, device=dev,
                          batch_size=cfg.train.eval_batch_size, progress=progress)
    miou, per_class = iou_from_confusion(cm)
    return {"split": split, "cycle": cycle, "miou": miou, "per_class_iou": per_class,
            "class_names": list(src.info.class_names)}


def evaluate_run(run_dir: Path, split: str, data_root: Path | None = None, *,
                 cycle: int | None = None, progress: bool = False,
                 device: str | None = None) -> dict[str, Any]:
    """``evaluate_checkpoint`` and its result written to ``eval_<split>.json``. A run
    directory one cannot write to is refused before the work, not after it."""
    rd = RunDir(run_dir)
    rd.require(rd.config.name)
    rd.check_writable(advice=f"balseg evaluate writes {rd.eval_file(split).name} there: copy"
                             " the run directory somewhere writable and evaluate the copy")
    result = evaluate_checkpoint(run_dir, split, data_root, cycle=cycle, progress=progress,
                                 device=device)
    atomic_write_bytes(rd.eval_file(split), json.dumps(result, indent=1).encode())
    return result
