"""Issue 4's supervised recipe written from scratch (PIL + smp), without balseg's data,
augmentation or training code, to tell a balseg pipeline bug from a recipe difference.

balseg's supervised reference gives 49.2-51.9 val mIoU where the issue measured 55.7;
this script gave 52.3 (docs/benchmarks.md), about 10 minutes on 2 idle cores:

    .venv/bin/python benchmarks/reproduce_issue_recipe.py --epochs 12
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from torch.nn import functional as F

from balseg.models.weights import load_offline

VOID, C = 11, 11
DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


def load(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Images 180x240 padded to 192x240, labels nearest-resized, and full-size labels."""
    xs, ys, full = [], [], []
    for path in sorted((root / split).glob("*.png")):
        image = Image.open(path).convert("RGB").resize((240, 180), Image.BILINEAR)
        label = Image.open(root / f"{split}annot" / path.name)
        full.append(torch.from_numpy(np.array(label)).long())
        x = np.zeros((192, 240, 3), np.uint8)
        x[:180] = np.array(image)
        y = np.full((192, 240), VOID, np.int64)
        y[:180] = np.array(label.resize((240, 180), Image.NEAREST))
        xs.append(torch.from_numpy(x).permute(2, 0, 1))
        ys.append(torch.from_numpy(y))
    return torch.stack(xs), torch.stack(ys), full


def norm(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.5


def miou(cm: torch.Tensor) -> tuple[float, list[float]]:
    cm = cm.double()
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())
    return float(iou.mean()), [round(float(v), 3) for v in iou]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x_train, y_train, _ = load(args.root, "train")
    x_val, y_val, y_val_full = load(args.root, "val")
    net = smp.DeepLabV3Plus("tu-tf_efficientnet_lite0", encoder_weights=None, classes=C)
    load_offline(net.encoder)
    per_epoch = len(x_train) // 8
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=args.epochs * per_epoch,
                                                  power=0.9)
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x_train))
        for i in range(per_epoch):
            idx = perm[i * 8 : (i + 1) * 8]
            x, y = x_train[idx].clone(), y_train[idx].clone()
            flip = torch.rand(len(idx)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            loss = F.cross_entropy(net(norm(x)), y, ignore_index=VOID)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch} loss {loss.item():.3f} {time.time() - start:.0f} s", flush=True)
    net.eval()
    cm_work = torch.zeros(C, C, dtype=torch.long)
    cm_full = torch.zeros(C, C, dtype=torch.long)
    with torch.no_grad():
        for s in range(0, len(x_val), 8):
            logits = net(norm(x_val[s : s + 8]))[:, :, :180]
            y = y_val[s : s + 8][:, :180]
            keep = y != VOID
            cm_work += torch.bincount(y[keep] * C + logits.argmax(1)[keep],
                                      minlength=C * C).reshape(C, C)
            up = F.interpolate(logits, size=(360, 480), mode="bilinear", align_corners=False)
            for j, pred in enumerate(up.argmax(1)):
                target = y_val_full[s + j]
                keep = target != VOID
                cm_full += torch.bincount(target[keep] * C + pred[keep],
                                          minlength=C * C).reshape(C, C)
    for name, cm in (("work resolution", cm_work), ("original resolution", cm_full)):
        value, per_class = miou(cm)
        print(f"{name}: val mIoU {value:.4f} per class {per_class}")


if __name__ == "__main__":
    main()
