"""TensorBoard helpers: scalars from nested metric dicts and a confusion-matrix picture (Pillow, no matplotlib)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.tensorboard import SummaryWriter


def confusion_image(confusion: list[list[int]], class_names: list[str], cell: int = 28) -> np.ndarray:
    """Row-normalised confusion matrix as an RGB uint8 image (H×W×3): rows = true class, columns = predicted."""
    matrix = np.asarray(confusion, dtype=float)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    margin = 8 * max(len(c) for c in class_names) + 8
    image = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(class_names):
        draw.text((2, margin + i * cell + cell // 3), name, fill="black")
        draw.text((margin + i * cell + 2, 2 + (i % 2) * 10), name[:6], fill="black")
        for j in range(n):
            shade = int(255 * (1 - norm[i, j]))
            box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1)
            draw.rectangle(box, fill=(shade, shade, 255))
            draw.text((box[0] + 3, box[1] + cell // 3), f"{int(matrix[i, j])}",
                      fill="white" if norm[i, j] > 0.5 else "black")
    return np.asarray(image)


def log_eval(writer: SummaryWriter, metrics: dict, class_names: list[str], step: int, prefix: str = "eval") -> None:
    """Scalars (overall, per class, per device, per device group) and the confusion picture."""
    for key in ("accuracy", "macro_accuracy", "log_loss", "top5", "ece"):
        if key in metrics:
            writer.add_scalar(f"{prefix}/{key}", metrics[key], step)
    for group in ("per_class", "per_device", "per_device_group"):
        for name, value in metrics.get(group, {}).items():
            writer.add_scalar(f"{prefix}/{group}/{name}", value, step)
    if "confusion" in metrics:
        writer.add_image(f"{prefix}/confusion", confusion_image(metrics["confusion"], class_names), step,
                         dataformats="HWC")
