"""TensorBoard helpers: evaluation scalars, a readable confusion-matrix picture (Pillow) and in-run hparams.

What a run directory's TensorBoard events hold (one run per run directory, nothing in sub-folders):

* training scalars (``loss/*``, ``lr``, ``mrkd/*``, ``time/step_ms``) every ``train.log_every`` steps, x = global
  step; ``train/ce_epoch`` once per epoch at the epoch's last global step.
* ``eval/<metric>`` (``accuracy``, ``macro_accuracy``, ``log_loss``, ``top5``, ``ece``, ``per_class/<name>``,
  ``per_device/<name>``, ``per_device_group/<name>``) and the ``eval/confusion`` image, x = global step, so they
  line up with the training curves; ``eval/epoch`` maps that step to the epoch number.
* ``eval_by_epoch/<metric>`` for the overall metrics (``accuracy``, ``macro_accuracy``, ``log_loss``, ``top5``,
  ``ece``), the same values with x = epoch (1, 2, …): one point per evaluated epoch, the view to read "accuracy
  after epoch N" and to compare runs with different batch sizes or dataset sizes.
* hparams (method, seed, model, epochs, lr, batch size, ``mrkd.*``) with the final ``hparam/last_*`` and
  ``hparam/best_*`` metrics, written into the run itself when a run completes (``write_hparams``; torch's
  ``SummaryWriter.add_hparams`` would create a sibling ``<run>/hparams`` run, listing every run twice).
* the confusion matrix as an image per evaluated epoch (``confusion_image``: counts in cells, rows = true class,
  columns = predicted class, axis titles, vertical column names).

A resumed run (``--resume``) appends to the same run: the writer drops whatever was logged after the checkpoint's
global step, so every evaluated epoch keeps exactly one point in both views. To read the curves by epoch, filter
the Scalars tab with ``eval_by_epoch``; ``tests/test_tensorboard.py`` checks all of this against a real
``tensorboard`` server (and screenshots it, see ``docs/img/tensorboard_scalars.png``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

OVERALL = ("accuracy", "macro_accuracy", "log_loss", "top5", "ece")


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom


def _vertical_text(text: str, font, fill="black") -> Image.Image:
    """``text`` written bottom-to-top on a transparent image (rotated 90° counter-clockwise)."""
    width, height = _text_size(font, text)
    strip = Image.new("RGBA", (width + 2, height + 2), (255, 255, 255, 0))
    ImageDraw.Draw(strip).text((0, 0), text, fill=fill, font=font)
    return strip.rotate(90, expand=True)


def confusion_image(confusion: list[list[int]], class_names: list[str], cell: int | None = None) -> np.ndarray:
    """The confusion matrix as an RGB uint8 image (H×W×3).

    Rows = true class (names on the left, axis title "true class"), columns = predicted class (names written
    vertically above the columns so that long names never overlap, axis title "predicted class"). Each cell
    holds its count; its colour is the row-normalised share (white = 0, dark blue = the whole row), so the
    diagonal reads as per-class recall. With more than 40 classes the counts are left out and cells shrink.
    """
    matrix = np.asarray(confusion, dtype=float)
    n = len(class_names)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    with_counts = n <= 40
    font = _font(13 if with_counts else 10)
    title_font = _font(14)
    if cell is None:
        widest = max((_text_size(font, str(int(v)))[0] for v in matrix.flat), default=8) if with_counts else 0
        cell = max(30 if with_counts else 12, widest + 10, _text_size(font, "Ag")[1] + 6)
    names = [str(name) for name in class_names]
    label_w = max(_text_size(font, name)[0] for name in names) + 10
    title_h = _text_size(title_font, "predicted class")[1] + 8
    left = title_h + label_w                      # row title + row names
    top = title_h + label_w                       # column title + vertical column names
    width, height = left + n * cell + 10, top + n * cell + 10
    image = Image.new("RGB", (max(width, left + _text_size(title_font, "predicted class")[0] + 10), height), "white")
    draw = ImageDraw.Draw(image)

    # axis titles
    draw.text((max(2, left + (n * cell - _text_size(title_font, "predicted class")[0]) // 2), 2), "predicted class",
              fill="black", font=title_font)
    true_title = _vertical_text("true class", title_font)
    image.paste(true_title, (2, top + (n * cell - true_title.height) // 2), true_title)

    text_h = _text_size(font, "Ag")[1]
    for i, name in enumerate(names):
        # row names, right-aligned next to the matrix
        w = _text_size(font, name)[0]
        draw.text((left - 6 - w, top + i * cell + (cell - text_h) // 2), name, fill="black", font=font)
        # column names, vertical, bottom-aligned above the matrix
        label = _vertical_text(name, font)
        image.paste(label, (left + i * cell + (cell - label.width) // 2, top - 6 - label.height), label)
    for i in range(n):
        for j in range(n):
            share = norm[i, j]
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=(int(255 - 225 * share), int(255 - 185 * share), 255 - int(75 * share)))
            if with_counts:
                text = str(int(matrix[i, j]))
                tw = _text_size(font, text)[0]
                draw.text((box[0] + (cell - tw) // 2, box[1] + (cell - text_h) // 2), text,
                          fill="white" if share > 0.5 else ("black" if matrix[i, j] else (150, 150, 150)), font=font)
    draw.rectangle((left - 1, top - 1, left + n * cell, top + n * cell), outline=(90, 90, 90))
    return np.asarray(image)


def log_scalars(writer: SummaryWriter, logs: dict[str, float], step: int) -> None:
    """One scalar per entry of a training step's logs (``loss/*``, ``lr``, a method's own, ``time/*``)."""
    for key, value in logs.items():
        writer.add_scalar(key, value, step)


def log_eval(writer: SummaryWriter, metrics: dict, class_names: list[str], step: int, prefix: str = "eval",
             epoch: int | None = None) -> None:
    """Scalars (overall, per class, per device, per device group) and the confusion picture at ``step``;
    with ``epoch`` also the overall metrics as ``<prefix>_by_epoch/<metric>`` at x = epoch (see module doc)."""
    for key in OVERALL:
        if key in metrics:
            writer.add_scalar(f"{prefix}/{key}", metrics[key], step)
    if epoch is not None:
        log_by_epoch(writer, metrics, epoch, prefix)
    for group in ("per_class", "per_device", "per_device_group"):
        for name, value in metrics.get(group, {}).items():
            writer.add_scalar(f"{prefix}/{group}/{name}", value, step)
    if "confusion" in metrics:
        writer.add_image(f"{prefix}/confusion", confusion_image(metrics["confusion"], class_names), step,
                         dataformats="HWC")


def log_by_epoch(writer: SummaryWriter, metrics: dict, epoch: int, prefix: str = "eval") -> None:
    """The overall metrics as ``<prefix>_by_epoch/<metric>`` at x = ``epoch``."""
    for key in OVERALL:
        if key in metrics:
            writer.add_scalar(f"{prefix}_by_epoch/{key}", metrics[key], epoch)


def write_hparams(writer: SummaryWriter, hparam_dict: dict, metric_dict: dict, step: int) -> None:
    """hparams and their final metrics in the writer's own run (no ``hparams`` sub-run; see module doc).

    Booleans are written as "true" / "false" (torch's ``hparams`` would store them as 1.0 / 0.0) and values the
    hparams plugin cannot show (None, lists, …) as their ``str``.
    """
    clean = {k: str(v).lower() if isinstance(v, bool) else v if isinstance(v, (int, float, str)) else str(v)
             for k, v in hparam_dict.items()}
    experiment, start, end = hparams(clean, metric_dict)
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary, step)
    for key, value in metric_dict.items():
        writer.add_scalar(key, value, step)
    writer.flush()
