"""Per-cycle pictures of what the model doubts and which pixels it asked about."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from balseg.loop.runner import ActiveLearningLoop


def _safe(image_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_id)


def write_overlays(loop: ActiveLearningLoop, cycle: int, scores: torch.Tensor) -> None:
    """Uncertainty map and query overlay (older queries white, new ones red) per image."""
    from balseg.fsutil import atomic_write_bytes

    out = loop.run_dir / "overlays"
    h, w = loop.pool.valid_hw
    cmap = colormaps["magma"]
    for i in range(scores.shape[0]):
        iid = loop.pool.image_ids[i]
        s = scores[i].double()
        lo, hi = float(s.min()), float(s.max())
        norm = ((s - lo) / (hi - lo if hi > lo else 1.0)).numpy()
        heat = Image.fromarray((cmap(norm)[..., :3] * 255).astype(np.uint8))
        base = Image.fromarray(loop.pool.images[i, :, :h, :w].permute(1, 2, 0).numpy())
        draw = ImageDraw.Draw(base)
        h0, w0 = loop.pool.orig_sizes[i]
        for q in loop.store.queries(image_id=iid):
            if q.cycle > cycle + 1:
                continue
            y, x = (q.y + 0.5) * h / h0, (q.x + 0.5) * w / w0
            colour = (255, 40, 40) if q.cycle == cycle + 1 else (255, 255, 255)
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), outline=(0, 0, 0), fill=colour)
        for kind, img in (("uncertainty", heat), ("queries", base)):
            import io

            buf = io.BytesIO()
            img.save(buf, format="PNG")
            atomic_write_bytes(out / f"cycle_{cycle:03d}_{_safe(iid)}_{kind}.png", buf.getvalue())
