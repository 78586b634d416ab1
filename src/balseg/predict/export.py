"""``balseg export-model``: a run's checkpoint as one ONNX or TorchScript file, verified.

The file takes ``image``: uint8 ``[N, 3, H, W]`` RGB, 0..255, H and W any multiples of the
encoder's output stride (16 for DeepLabV3+), N any. uint8 on purpose: the normalisation of
the encoder's pretrained weights is built into the file, and a float input scaled 0..1 by
mistake cannot be passed (the runtime refuses the type). It returns ``logits`` float32
``[N, C, H, W]``; the class is their argmax. Class names, palette, normalisation, the run's
working resolution and everything below are in the file's metadata (ONNX
``metadata_props["balseg"]``, TorchScript extra file ``balseg.json``), as JSON.

``--mc`` adds the last-layer MC-dropout head: a second input ``mask`` float32
``[T, K, 1, 1]`` (channel dropout; ``[T, K, h, w]`` for element dropout, h, w the feature
size) of keep indicators, 1 keeps feature channel k in sample t, 0 drops it, each kept
with probability 1 - p; the file applies the 1 / (1 - p) scale. A second output
``mc_logits`` ``[T, N, C, H, W]`` holds the logits of the T samples, computed from the same
features as ``logits`` (the encoder runs once): their softmax gives every score of
``balseg.acquisition`` outside balseg (docs/predict.md).

Every file is verified before it is put at ``--out``: it is written under a temporary name,
loaded back (onnxruntime; ``torch.jit.load``) and run on real images of the run (its
evaluation split, else its pool), prepared as ``balseg predict`` prepares them, at the
working size and at a second size (one stride larger) and with a batch of several images;
its logits must be within ``LOGIT_TOLERANCE`` of PyTorch's and its argmax must agree with
PyTorch's on at least ``AGREEMENT_TOLERANCE`` of the pixels. Otherwise nothing is left at
``--out`` and the command fails (exit 2) with both figures.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from balseg.errors import ConfigError, DataError, DiskFullError, ExportError
from balseg.predict.job import RunInfo, load_predictor, open_run_info, open_split

FORMATS = ("onnx", "torchscript")
LOGIT_TOLERANCE = 1e-3
"""Largest |logit difference| allowed between the file and PyTorch (float32 logits of
order 10: a few units in the sixth digit)."""
AGREEMENT_TOLERANCE = 0.999
"""Smallest share of pixels on which the file's argmax must equal PyTorch's."""
META_KEY = "balseg"
META_FILE = "balseg.json"
EXPORT_FORMAT = "balseg-export/1"
ONNX_OPSET = 17


class _Net(nn.Module):
    """uint8 image -> logits (and, with ``mc``, the logits of T dropout masks)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 mc: bool) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        p = float(model.dropout_p)  # type: ignore[arg-type]
        self.scale = 1.0 / (1.0 - p) if p > 0 else 1.0
        self.mc = mc

    def _features(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.float() / 255.0 - self.mean) / self.std  # balseg.data.normalize
        return self.model.features(x)  # type: ignore[operator]

    def _head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.net.segmentation_head(feats)  # type: ignore[operator]

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        feats = self._features(image)
        logits = self._head(feats)
        if mask is None:
            return logits
        dropped = feats.unsqueeze(0) * (mask * self.scale).unsqueeze(1)  # [T, N, K, h, w]
        mc = self._head(dropped.flatten(0, 1))  # [T * N, C, H, W]
        return logits, mc.reshape(mask.shape[0], feats.shape[0], mc.shape[1], mc.shape[2],
                                  mc.shape[3])


class _Checked(nn.Module):
    """The TorchScript file's entry point: says what is wrong with an input, then runs the
    traced network (tracing alone would run it and fail deep inside)."""

    def __init__(self, inner: nn.Module, stride: int, features: int) -> None:
        super().__init__()
        self.inner = inner
        self.stride = stride
        self.features = features

    def check(self, image: torch.Tensor) -> None:
        if image.dim() != 4 or image.size(1) != 3:
            raise ValueError("image must be uint8 [N, 3, H, W] RGB, got shape "
                             + str(list(image.shape)))
        if image.dtype != torch.uint8:
            raise ValueError("image must be uint8 (0..255), got " + str(image.dtype))
        if image.size(2) % self.stride != 0 or image.size(3) % self.stride != 0:
            raise ValueError("image height and width must be multiples of "
                             + str(self.stride) + ", got " + str(image.size(2)) + "x"
                             + str(image.size(3)) + " (pad at the bottom/right)")


class _CheckedPlain(_Checked):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.check(image)
        return self.inner(image)


class _CheckedMC(_Checked):
    def forward(self, image: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check(image)
        if mask.dim() != 4 or mask.size(1) != self.features:
            raise ValueError("mask must be float32 [T, " + str(self.features)
                             + ", 1, 1] (or [T, K, h, w]), got shape " + str(list(mask.shape)))
        return self.inner(image, mask.float())


@dataclass
class Verification:
    images: int
    sizes: list[tuple[int, int]]
    max_logit_diff: float
    agreement: float
    max_mc_diff: float | None = None
    pixels: int = 0
    disagreeing: int = 0

    def ok(self) -> bool:
        diffs = [self.max_logit_diff] + ([self.max_mc_diff] if self.max_mc_diff is not None
                                         else [])
        return (all(np.isfinite(d) and d <= LOGIT_TOLERANCE for d in diffs)
                and self.agreement >= AGREEMENT_TOLERANCE)

    def summary(self) -> str:
        sizes = ", ".join(f"{w}x{h}" for h, w in self.sizes)
        text = (f"max |logit diff| {self.max_logit_diff:.3g} (tolerance {LOGIT_TOLERANCE:g}),"
                f" argmax agreement {self.agreement:.6f} ({self.disagreeing} of {self.pixels}"
                f" pixels differ; at least {AGREEMENT_TOLERANCE:g})")
        if self.max_mc_diff is not None:
            text += f", max |MC logit diff| {self.max_mc_diff:.3g}"
        return f"{text} on {self.images} images of the run (input sizes WxH {sizes})"


@dataclass
class ExportResult:
    path: Path
    format: str
    cycle: int
    verification: Verification
    metadata: dict[str, Any]


def _stride(model: nn.Module) -> int:
    stride = getattr(getattr(model.net, "encoder", None), "output_stride", None)  # type: ignore[union-attr]
    return int(stride) if stride else 32


def _tmp_path(out: Path) -> Path:
    """A temporary file next to ``out`` with the permissions a new file gets (mkstemp's
    are 0600: a model meant for deployment should be readable as any file the user
    writes)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporters' deprecation and tracer warnings say nothing to a balseg user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _metadata(info: RunInfo, cycle: int, model: nn.Module, spec: Any, mean: tuple,
              std: tuple, stride: int, mc: bool, feature_channels: int,
              feature_stride: int) -> dict[str, Any]:
    from balseg import __version__

    d = info.config.data
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT, "balseg_version": __version__, "run": info.config.name,
        "cycle": cycle, "arch": spec.arch, "encoder": spec.encoder,
        "class_names": info.class_names, "palette": info.palette.tolist(), "ignore_index": 255,
        "input": {"name": "image", "dtype": "uint8", "shape": "[N, 3, H, W]",
                  "channels": "RGB", "range": "0..255", "multiple_of": stride,
                  "normalisation": "built in: (image / 255 - mean) / std per channel",
                  "mean": list(mean), "std": list(std)},
        "output": {"name": "logits", "dtype": "float32", "shape": "[N, C, H, W]",
                   "class": "argmax over C"},
        "preprocessing": {
            "working_size": None if d.size is None else list(d.size), "resize": d.resize,
            "pad_multiple": d.pad_multiple,
            "as_balseg_predict": "resize the image to working_size (bilinear, antialiased;"
                                 " 'fit' keeps the aspect ratio inside it; null: keep its size),"
                                 " pad bottom/right with 0 to a multiple of multiple_of, run,"
                                 " crop the logits to the resized area, resize them bilinearly"
                                 " to the original size, argmax"},
        "mc": None,
    }
    if mc:
        kind = spec.dropout_kind
        meta["mc"] = {
            "dropout_p": float(spec.dropout_p), "dropout_kind": kind,
            "feature_channels": feature_channels, "feature_stride": feature_stride,
            "mask": {"name": "mask", "dtype": "float32",
                     "shape": "[T, K, 1, 1]" if kind == "channel" else "[T, K, h, w]",
                     "meaning": "1 keeps feature channel k in sample t, 0 drops it; draw each"
                                " kept with probability 1 - dropout_p (the file applies the"
                                " 1 / (1 - dropout_p) scale)"},
            "output": {"name": "mc_logits", "dtype": "float32", "shape": "[T, N, C, H, W]"},
        }
    return meta


def _build_onnx(net: _Net, example: tuple[torch.Tensor, ...], mc: bool,
                meta: dict[str, Any]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise ExportError("--format onnx needs the packages onnx and onnxruntime: pip install"
                          " 'balseg[export]'") from None
    names = ["image", "mask"] if mc else ["image"]
    outputs = ["logits", "mc_logits"] if mc else ["logits"]
    axes: dict[str, dict[int, str]] = {"image": {0: "N", 2: "H", 3: "W"},
                                       "logits": {0: "N", 2: "H", 3: "W"}}
    if mc:
        axes["mask"] = {0: "T", 2: "mask_h", 3: "mask_w"}
        axes["mc_logits"] = {0: "T", 1: "N", 3: "H", 4: "W"}
    buf = io.BytesIO()
    with _quiet_export():
        # The TorchScript-based exporter: it exports this model in seconds with dynamic H
        # and W; the torch.export-based one took minutes for the same graph (docs/predict.md).
        torch.onnx.export(net, example, buf, input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    props = {META_KEY: json.dumps(meta), "class_names": json.dumps(meta["class_names"]),
             "palette": json.dumps(meta["palette"])}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"balseg {meta['arch']} of run {meta['run']!r}, cycle {meta['cycle']}:"
                        " see metadata_props['balseg']")
    return proto.SerializeToString()


def _onnx_runner(path: Path, mc: bool) -> Callable[..., Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("--format onnx needs the packages onnx and onnxruntime: pip install"
                          " 'balseg[export]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(image: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
        feeds = {"image": image}
        if mc:
            feeds["mask"] = mask
        return session.run(None, feeds)

    return run


def _build_torchscript(net: _Net, example: tuple[torch.Tensor, ...], mc: bool, stride: int,
                       features: int, meta: dict[str, Any]) -> bytes:
    with _quiet_export():
        traced = torch.jit.trace(net, example, check_trace=False)
        outer = (_CheckedMC if mc else _CheckedPlain)(traced, stride, features)
        scripted = torch.jit.script(outer)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={META_FILE: json.dumps(meta)})
    return buf.getvalue()


def _torchscript_runner(path: Path, mc: bool) -> Callable[..., Any]:
    with _quiet_export():
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    @torch.no_grad()
    def run(image: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
        args = [torch.from_numpy(image)] + ([torch.from_numpy(mask)] if mc else [])
        out = module(*args)
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run


def _verification_batches(info: RunInfo, predictor: Any, split: str | None,
                          data_root: Path | None, count: int, stride: int
                          ) -> tuple[list[np.ndarray], str]:
    """Batches (uint8 [B, 3, H, W]) of the run's real images, prepared as ``balseg predict``
    prepares them; plus the first image one stride larger, so a second size is checked."""
    from balseg.data.base import read_rgb

    cfg = info.config
    name = split or (cfg.data.eval_splits[0] if cfg.data.eval_splits else cfg.data.pool_split)
    try:
        source = open_split(cfg, name, data_root)
    except DataError as err:
        raise DataError(f"cannot verify the export on the run's {name!r} images: {err} (point"
                        " --data-root at the dataset, or choose --split)") from None
    arrays = []
    for i in range(min(count, len(source))):
        arrays.append(predictor.prepare(read_rgb(source.image_path(i))).array)
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for a in arrays:
        groups.setdefault(a.shape, []).append(a)
    batches = []
    for same in groups.values():
        for start in range(0, len(same), 4):
            batches.append(np.stack(same[start : start + 4]))
    first = arrays[0]
    bigger = np.zeros((1, 3, first.shape[1] + stride, first.shape[2] + stride), np.uint8)
    bigger[0, :, : first.shape[1], : first.shape[2]] = first
    batches.append(bigger)
    return batches, name


def _masks(model: nn.Module, samples: int, feats_hw: tuple[int, int], kind: str,
           seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    k = int(model.net.segmentation_head[0].in_channels)  # type: ignore[index, union-attr]
    shape = (samples, k, 1, 1) if kind == "channel" else (samples, k, *feats_hw)
    p = float(model.dropout_p)  # type: ignore[arg-type]
    return (torch.rand(shape, generator=g) >= p).float().numpy()


@torch.no_grad()
def verify(run: Callable[..., Any], predictor: Any, net: _Net, batches: list[np.ndarray],
           mc: bool, feature_stride: int) -> Verification:
    """The exported file against PyTorch (balseg's own pipeline, ``model(model_input(x))``,
    and for ``--mc`` the same network in eager mode) on ``batches``."""
    from balseg.data.augment import model_input

    model = predictor.model.cpu()
    max_diff, agree, pixels, mc_diff = 0.0, 0, 0, 0.0
    sizes: list[tuple[int, int]] = []
    images = 0
    for b, batch in enumerate(batches):
        x = torch.from_numpy(batch)
        ref = model(model_input(x, predictor.mean, predictor.std)).float().numpy()
        mask = None
        if mc:
            h, w = batch.shape[2] // feature_stride, batch.shape[3] // feature_stride
            mask = _masks(model, 3, (h, w), model.dropout_kind, seed=b)
        got = run(batch, mask)
        if got[0].shape != ref.shape:
            raise ExportError(f"the exported model returned logits of shape {got[0].shape} for"
                              f" input {tuple(batch.shape)}; PyTorch gives {ref.shape}")
        max_diff = max(max_diff, float(np.abs(got[0] - ref).max()))
        agree += int((got[0].argmax(1) == ref.argmax(1)).sum())
        pixels += ref.shape[0] * ref.shape[2] * ref.shape[3]
        if mc:
            _, ref_mc = net(x, torch.from_numpy(mask))
            mc_diff = max(mc_diff, float(np.abs(got[1] - ref_mc.numpy()).max()))
        sizes.append((int(batch.shape[2]), int(batch.shape[3])))
        images += batch.shape[0] if b < len(batches) - 1 else 0
    return Verification(images, sorted(set(sizes)), max_diff, agree / max(pixels, 1),
                        mc_diff if mc else None, pixels, pixels - agree)


def export_model(run_dir: str | Path, out: Path, fmt: str, *, cycle: int | None = None,
                 mc: bool = False, verify_images: int = 8, split: str | None = None,
                 data_root: Path | None = None) -> ExportResult:
    """Write the checkpoint of ``cycle`` (default: latest) of ``run_dir`` to ``out`` as
    ``fmt``, verified (module doc); on any failure nothing is left at ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if verify_images < 1:
        raise ConfigError(f"--verify-images must be >= 1, got {verify_images}")
    out = Path(out)
    if out.is_dir():
        raise DataError(f"--out {out} is a folder: name the file to write, e.g."
                        f" {out / ('model.onnx' if fmt == 'onnx' else 'model.pt')}")
    tmp = _reserve(out)  # before the export's minute of work: can the file be written?
    try:
        return _export(run_dir, out, tmp, fmt, cycle=cycle, mc=mc,
                       verify_images=verify_images, split=split, data_root=data_root)
    finally:
        tmp.unlink(missing_ok=True)


def _reserve(out: Path) -> Path:
    """The temporary file the export is written to, made now beside ``out``: a destination
    that cannot be written is a ``DataError`` before any work, not an ``OSError`` after."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return _tmp_path(out)
    except OSError as err:
        raise DataError(f"--out {out}: cannot write there"
                        f" ({err.strerror or err}{': ' + err.filename if err.filename else ''})"
                        ) from None


def _export(run_dir: str | Path, out: Path, tmp: Path, fmt: str, *, cycle: int | None,
            mc: bool, verify_images: int, split: str | None, data_root: Path | None
            ) -> ExportResult:
    info = open_run_info(run_dir)
    predictor, cycle, _ = load_predictor(info, cycle=cycle, device="cpu")
    model, spec = predictor.model, predictor.spec
    if mc and model.mc_mode != "last_layer":
        raise ConfigError(f"--mc exports last-layer MC dropout; this run uses model.mc_mode"
                          f" {model.mc_mode!r}, whose dropout runs through the whole network")
    if fmt == "onnx":  # fail on a missing package before any work
        for package in ("onnx", "onnxruntime"):
            try:
                __import__(package)
            except ImportError:
                raise ExportError(f"--format onnx needs the packages onnx and onnxruntime (no"
                                  f" {package} here): pip install 'balseg[export]'") from None
    stride = _stride(model)
    batches, _ = _verification_batches(info, predictor, split, data_root, verify_images, stride)
    net = _Net(model, predictor.mean, predictor.std, mc).eval()
    example_image = torch.from_numpy(batches[0][:1])
    with torch.no_grad():
        feats = model.features(torch.zeros((1, 3, *example_image.shape[2:])))
    k, feature_stride = int(feats.shape[1]), int(example_image.shape[2] // feats.shape[2])
    example: tuple[torch.Tensor, ...] = (example_image,)
    if mc:
        example += (torch.from_numpy(_masks(model, 2, tuple(feats.shape[2:]),
                                            model.dropout_kind)),)
    meta = _metadata(info, cycle, model, spec, predictor.mean, predictor.std, stride, mc, k,
                     feature_stride)
    with torch.no_grad():
        data = (_build_onnx(net, example, mc, meta) if fmt == "onnx"
                else _build_torchscript(net, example, mc, stride, k, meta))
    try:
        tmp.write_bytes(data)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"--out {out}: the disk is full (the model needs"
                                f" {len(data) / 1e6:.1f} MB); nothing was written") from None
        raise DataError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    runner = _onnx_runner(tmp, mc) if fmt == "onnx" else _torchscript_runner(tmp, mc)
    check = verify(runner, predictor, net, batches, mc, feature_stride)
    if not check.ok():
        raise ExportError(f"the {fmt} export of cycle {cycle} disagrees with PyTorch:"
                          f" {check.summary()}; nothing was written to {out}")
    os.replace(tmp, out)
    return ExportResult(out, fmt, cycle, check, meta)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The balseg metadata of an exported file (ONNX or TorchScript)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # TorchScript: a zip archive
        extra = {META_FILE: ""}
        with _quiet_export():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra[META_FILE])
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise DataError(f"{path}: no balseg metadata (not written by balseg export-model?)")
    return json.loads(props[META_KEY])
