"""``tlbench predict``: an exported model's top-k classes for image files, with the preprocessing the harness
evaluated with.

Files are decoded as the imagefolder dataset decodes them (8-bit RGB, EXIF orientation, grey replicated, transparency
on white, then the dataset's storage size), then the harness's own on-device pipeline runs (resize, centre crop,
normalize: :class:`tlbench.preprocess.DevicePreprocessor`), so an image the harness evaluated gets the label the
harness gave it.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tabulate import tabulate

from tlbench.images import decode_image_file
from tlbench.types import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
OUTPUT_FORMATS = ("table", "json", "csv")
BATCH = 32


def find_images(paths: Sequence[Path | str]) -> list[Path]:
    """Image files named, or found under the folders named (recursively; hidden files skipped), in order."""
    found: list[Path] = []
    if not paths:
        raise UsageError("name image files or folders of images: tlbench predict MODEL_DIR IMAGES_OR_FOLDER ...")
    for given in map(Path, paths):
        if given.is_dir():
            inside = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(given).parts))
            if not inside:
                raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in folder {str(given)!r}; "
                                 f"name image files or a folder that holds some")
            found += inside
        elif given.is_file():
            found.append(given)
        else:
            raise UsageError(f"{str(given)!r} does not exist; name image files or folders of images")
    return found


def decode(path: Path, storage_size: int | None) -> torch.Tensor:
    """One file as uint8 (3, H, W), exactly as the imagefolder dataset decodes it."""
    try:
        return torch.from_numpy(decode_image_file(path, storage_size)).permute(2, 0, 1).contiguous()
    except Exception as exc:  # PIL's many ways to fail on a file that is not an image
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"cannot read {str(path)!r} as an image ({reason}); remove it or name only images") from None


@dataclass
class Prediction:
    file: str
    top: list[tuple[int, str, float]]  # (class index, label, probability), best first


def predict(exported: Any, files: Sequence[Path], top_k: int = 5, use: str | None = None,
            progress: Callable[[int], Any] | None = None) -> tuple[str, list[Prediction]]:
    """The top-k classes of every file through the export's first format (or ``use``); returns the format used."""
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    classes = exported.classes
    fmt, forward = exported.forward(use)
    prep = exported.preprocessor()
    storage = exported.section["preprocessing"].get("storage_size")
    k = min(top_k, len(classes))
    results: list[Prediction | None] = [None] * len(files)
    pending: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}

    def run(batch: list[tuple[int, torch.Tensor]]) -> None:
        with torch.no_grad():
            probabilities = torch.softmax(forward(prep.eval(torch.stack([image for _, image in batch]))).float(), 1)
        values, indices = probabilities.topk(k, dim=1)
        for (index, _), v, i in zip(batch, values.tolist(), indices.tolist()):
            results[index] = Prediction(str(files[index]), [(c, classes[c], p) for c, p in zip(i, v)])
        if progress is not None:
            progress(len(batch))

    for index, path in enumerate(files):  # images of one size go through the model together
        image = decode(path, storage)
        same = pending.setdefault(tuple(image.shape), [])
        same.append((index, image))
        if len(same) == BATCH:
            run(pending.pop(tuple(image.shape)))
    for batch in pending.values():
        run(batch)
    return fmt, [r for r in results if r is not None]


def render(predictions: Sequence[Prediction], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{"file": p.file, "predictions": [{"rank": rank, "index": c, "label": label,
                                                             "probability": prob}
                                                            for rank, (c, label, prob) in enumerate(p.top, 1)]}
                           for p in predictions], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["file", "rank", "index", "label", "probability"])
        for p in predictions:
            for rank, (c, label, prob) in enumerate(p.top, 1):
                writer.writerow([p.file, rank, c, label, f"{prob:.6f}"])
        return out.getvalue().rstrip("\n")
    rows = [[p.file, p.top[0][1], f"{100 * p.top[0][2]:.1f}%",
             ", ".join(f"{label} {100 * prob:.1f}%" for _, label, prob in p.top[1:])] for p in predictions]
    return tabulate(rows, headers=["file", "label", "probability", "next"], tablefmt="simple")
