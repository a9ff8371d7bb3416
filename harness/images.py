"""Image files decoded safely, the one owner of it: by content, only formats Pillow decodes itself (never one that
runs an external program, such as EPS through Ghostscript), any mode as 8-bit RGB. The ``imagefolder`` dataset
and ``tlbench predict`` decode through :func:`decode_image_file`."""
from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlbench.files import read_regular
from tlbench.splits import fit_image

SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
DECODER_VERSION = 2  # part of the fingerprint: bump when decoding (to_rgb8, decode_image_file) changes
# What Pillow may decode, recognised by content: common formats it decodes itself. EPS/PS (which Pillow hands to
# Ghostscript) and every other format, however harmless, are refused: a short list is a small attack surface.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # Pillow's names; JPEG opens MPO too
MAX_IMAGE_BYTES = 512 * 2**20  # a larger file is refused unread, like an unreadable image
REFUSED_SIGNATURES = {  # leading bytes -> what the file is, for the refusal message
    b"%!PS": "PostScript/EPS", b"\xc5\xd0\xd3\xc6": "EPS (DOS binary)", b"%PDF": "PDF",
}


class RefusedImageFormat(ValueError):
    """A file whose content is not one of :data:`ALLOWED_FORMATS` (whatever its name says)."""


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, scaling rather than clipping high bit depths (see the module docstring)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in SIXTEEN_BIT_GREY:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if image.mode == "F":  # float images: 0..1 when they fit, else 0..255
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: Path) -> Image.Image:
    """``Image.open`` limited to :data:`ALLOWED_FORMATS`, identified by content; anything else raises
    :class:`RefusedImageFormat` with one line saying what the content is, before any decoder of it runs. Only a
    regular file of at most :data:`MAX_IMAGE_BYTES` is read (:func:`tlbench.files.read_regular`): a FIFO, a device
    or a huge file raises :class:`tlbench.files.Refused` unread, so nothing can block or stream forever."""
    data = read_regular(path, MAX_IMAGE_BYTES)
    try:
        return Image.open(io.BytesIO(data), formats=_registered_formats())
    except UnidentifiedImageError:
        raise RefusedImageFormat(refusal_reason(data)) from None


@functools.cache
def _registered_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow has a decoder for (a Pillow built without libwebp has no WEBP; naming a
    format it lacks is a KeyError in ``Image.open``)."""
    Image.init()
    return tuple(name for name in ALLOWED_FORMATS if name in Image.OPEN)


def refusal_reason(data: bytes | Path) -> str:
    """Why a file's content (its bytes, or the path of a regular file) is refused, in one line."""
    head = data[:16] if isinstance(data, bytes) else read_regular(data, MAX_IMAGE_BYTES)[:16]
    kind = next((name for signature, name in REFUSED_SIGNATURES.items() if head.startswith(signature)), None)
    allowed = ", ".join(ALLOWED_FORMATS)
    if kind:
        return (f"its content is {kind}, refused whatever the file name says: tlbench decodes only {allowed}, never "
                f"a format that runs an external program")
    return f"its content is none of the image formats tlbench decodes ({allowed}), whatever the file name says"


def decode_image_file(path: Path, storage_size: int | None) -> np.ndarray:
    """One image file as (H, W, 3) uint8 at the storage size. Raises on files that are not images in one of
    :data:`ALLOWED_FORMATS` (by content) or are cut off."""
    with open_image(path) as image:
        if storage_size:  # JPEG: let the decoder scale down by 2/4/8 while staying >= the storage size (fast)
            image.draft(None, (storage_size, storage_size))
        image.load()
        return fit_image(to_rgb8(ImageOps.exif_transpose(image)), storage_size)
