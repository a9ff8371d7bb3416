"""Images are decoded only as the formats on imagefolder's allowlist, told apart by content, never by name: an EPS
file called photo.jpg (which Pillow would hand to Ghostscript) is refused in one line without starting any program;
the allowed formats still load whatever they are called."""
import subprocess
import warnings

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from tlbench.images import ALLOWED_FORMATS, RefusedImageFormat, decode_image_file
from tlbench.plugins.imagefolder import ImageFolder
from tlbench.splits import DataWarning
from tlbench.types import UsageError

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n"
       b"%%BoundingBox: 0 0 8 8\n"
       b"%%EndComments\n"
       b"newpath 0 0 moveto 8 0 lineto 8 8 lineto 0 8 lineto closepath 0.5 setgray fill\n"
       b"showpage\n"
       b"%%EOF\n")


@pytest.fixture
def no_programs(monkeypatch):
    """Starting any program, or Pillow's Ghostscript wrapper, fails the test: the list of what was tried is kept."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a program was started: {args!r}")

    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    return started


def eps_named_jpg(folder):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "photo.jpg"
    path.write_bytes(EPS)
    return path


def test_the_test_file_is_an_eps_that_pillow_alone_would_accept(tmp_path):
    with Image.open(eps_named_jpg(tmp_path)) as image:  # header only: Ghostscript would run on load()
        assert image.format == "EPS" and image.size == (8, 8)


def test_an_eps_file_named_jpg_is_refused_by_content_and_no_program_starts(tmp_path, no_programs):
    path = eps_named_jpg(tmp_path)
    with pytest.raises(RefusedImageFormat, match=r"^its content is PostScript/EPS, refused whatever the file name "
                                                 r"says: tlbench decodes only JPEG, ") as caught:
        decode_image_file(path, 8)
    assert "\n" not in str(caught.value)
    assert no_programs == []


@pytest.mark.parametrize("content, kind", [
    (b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n", "PDF"),
    (b"\xc5\xd0\xd3\xc6" + b"\x00" * 28, "EPS \\(DOS binary\\)"),
    (b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n", "PostScript/EPS"),
])
def test_other_formats_that_need_a_program_are_refused_by_content(tmp_path, no_programs, content, kind):
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(RefusedImageFormat, match=rf"^its content is {kind}, refused"):
        decode_image_file(path, None)
    assert no_programs == []


def test_formats_pillow_decodes_but_not_on_the_allowlist_are_refused(tmp_path, no_programs):
    path = tmp_path / "sneaky.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path, format="TGA")
    with pytest.raises(RefusedImageFormat, match=r"^its content is none of the image formats tlbench decodes "
                                                 r"\(JPEG, .*\), whatever the file name says$"):
        decode_image_file(path, None)


@pytest.mark.parametrize("fmt, name", [("PNG", "a.png"), ("JPEG", "a.jpg"), ("BMP", "a.bmp"), ("GIF", "a.gif"),
                                       ("TIFF", "a.tif"), ("WEBP", "a.webp"), ("PPM", "a.ppm"),
                                       ("PNG", "named-wrongly.jpg"), ("JPEG", "no-suffix")])
def test_allowed_formats_still_load_whatever_their_name(tmp_path, no_programs, fmt, name):
    path = tmp_path / name
    options = {"quality": 100} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.new("RGB", (6, 4), (200, 40, 40)).save(path, format=fmt, **options)
    decoded = decode_image_file(path, None)
    assert decoded.shape == (4, 6, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - [200, 40, 40]).max() <= 8  # GIF's palette and JPEG round a little


def test_a_multi_picture_jpeg_from_a_phone_still_loads(tmp_path, no_programs):
    path = tmp_path / "IMG_0001.JPG"
    first, second = Image.new("RGB", (6, 4), (200, 40, 40)), Image.new("RGB", (6, 4), (0, 0, 0))
    first.save(path, format="MPO", save_all=True, append_images=[second], quality=100)
    with Image.open(path) as image:
        assert image.format == "MPO"
    assert np.abs(decode_image_file(path, None).astype(int) - [200, 40, 40]).max() <= 8, "the first picture"


def test_the_allowlist_names_only_formats_pillow_decodes_itself():
    Image.init()
    assert set(ALLOWED_FORMATS) <= set(Image.OPEN)
    assert not {"EPS", "PDF", "WMF", "GRIB", "BUFR", "HDF5", "MPEG"} & set(ALLOWED_FORMATS)


def make_folder(root):
    """Two classes of 8 PNG and JPEG files each, and the EPS file cats/photo.jpg."""
    for label, colour in (("cats", (200, 40, 40)), ("dogs", (40, 40, 200))):
        (root / label).mkdir(parents=True)
        for index in range(8):
            image = Image.new("RGB", (8, 8), (colour[0], colour[1] + index, colour[2]))
            if index % 2:
                image.save(root / label / f"{index}.png", format="PNG")
            else:
                image.save(root / label / f"{index}.jpg", format="JPEG", quality=95)
    return eps_named_jpg(root / "cats")


def test_imagefolder_fails_in_one_line_naming_the_file_or_skips_it(tmp_path, no_programs):
    root = tmp_path / "pets"
    eps = make_folder(root)
    options = {"storage_size": 8, "train_size": 10, "val_size": 3, "test_size": 4}
    with pytest.raises(UsageError) as caught:
        ImageFolder().load(str(root), options)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"imagefolder: cannot read {eps} as an image (RefusedImageFormat: its content is "
                              f"PostScript/EPS, refused whatever the file name says")
    assert message.endswith("or skip unreadable files with --set data.on_bad_image=skip")
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        splits = ImageFolder().load(str(root), {**options, "on_bad_image": "skip"})
    lines = [str(w.message) for w in caught_warnings if issubclass(w.category, DataWarning)]
    assert lines == [f"imagefolder: skipped 1 unreadable file(s) in {root}: cats/photo.jpg"]
    assert splits.source["skipped"] == ["cats/photo.jpg"]
    assert sum(splits.sizes.values()) == 16, "the 16 PNG and JPEG files all load"
    assert no_programs == []

