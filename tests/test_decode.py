"""Decode + preprocess, on real photos and the edge-case set (no Beam)."""
from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.conftest import EDGE_DIR, PROJECT_ROOT, edge_manifest, photo_paths
from transforms.errors import ImageError
from transforms.imaging import (DecodeSettings, ImageBytes,
                                allowed_formats, apply_orientation,
                                central_crop_box, decode_batch, decode_image)

_LOGGER = logging.getLogger(__name__)

ALL_FORMATS = allowed_formats("JPEG,PNG,GIF,WEBP,BMP,TIFF".split(","))
SETTINGS = DecodeSettings(max_pixels=89_478_485,
                          allowed_formats=ALL_FORMATS)


def _read(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def tf():
    import tensorflow
    return tensorflow


def reference_preprocess(tf, image_uint8: np.ndarray) -> np.ndarray:
    """The module's evaluation preprocessing in TF2 form, from pixels."""
    x = tf.image.convert_image_dtype(tf.constant(image_uint8), tf.float32)
    x = tf.image.central_crop(x, 0.875)
    return tf.image.resize(x, (96, 96), method="bilinear").numpy()


def reference_from_jpeg(tf, data: bytes) -> np.ndarray:
    """decode_jpeg(channels=3) → convert → central_crop → resize."""
    return reference_preprocess(tf, tf.io.decode_jpeg(data, channels=3)
                                .numpy())


def test_central_crop_box_matches_tf(tf):
    for width, height in [(500, 375), (375, 500), (17, 16), (1, 1), (2, 1),
                          (1800, 1200), (96, 96)]:
        left, top, w, h = central_crop_box(width, height)
        cropped = tf.image.central_crop(tf.zeros((height, width, 1)), 0.875)
        assert (h, w) == tuple(cropped.shape[:2]), (width, height)
        assert (left, top) == (int(width / 16), int(height / 16))


def test_preprocessing_matches_tf_reference_on_every_photo(tf):
    """Per image mean |Δ| ≤ 1.5/255 (the requirement); the decoder uses the
    same IDCT as tf.io.decode_jpeg, so the match is in fact float-exact."""
    means, maxes = [], []
    for path in photo_paths():
        data = _read(path)
        pixels, width, height, fmt = decode_image(data, SETTINGS)
        reference = reference_from_jpeg(tf, data)
        # TF ignores EXIF orientation; the pipeline applies it (as it must),
        # so the reference is turned upright the same way.
        orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
        reference = apply_orientation(reference, orientation)
        delta = np.abs(pixels - reference)
        means.append(delta.mean() * 255)
        maxes.append(delta.max() * 255)
        assert pixels.shape == (96, 96, 3) and pixels.dtype == np.float32
        assert fmt == "JPEG"
        assert means[-1] <= 1.5, (path, means[-1])
    assert len(means) == 150
    _LOGGER.warning("preprocessing vs TF reference over %d photos: mean "
                    "|Δ| %.2e/255 (worst image %.2e/255), max |Δ| %.2e/255",
                    len(means), np.mean(means), np.max(means), np.max(maxes))
    assert np.max(maxes) < 1e-3  # float rounding only


def test_fast_jpeg_mode_is_close_but_not_identical(tf):
    fast = DecodeSettings(max_pixels=SETTINGS.max_pixels,
                          allowed_formats=ALL_FORMATS, fast_jpeg=True)
    deviations = []
    for path in photo_paths()[:40]:
        data = _read(path)
        exact = decode_image(data, SETTINGS)[0]
        approx = decode_image(data, fast)[0]
        deviations.append(np.abs(exact - approx).mean() * 255)
    _LOGGER.warning("fast_jpeg mean |Δ| vs reference: %.2f/255 (worst %.2f)",
                    np.mean(deviations), np.max(deviations))
    assert 0 < np.mean(deviations) < 20


def test_exif_orientations_give_the_same_upright_tensor(tf):
    """Landscape_1..8 store one photo in the 8 EXIF orientations (each also
    has its own digit drawn on it and was re-encoded, hence a tolerance).

    Tolerance: mean |Δ| ≤ 3.5/255 against Landscape_1; a wrong orientation
    is ≥ 10× further away. And each equals Pillow's exif_transpose followed
    by the reference preprocessing, within float rounding.
    """
    decoded = {}
    for i in range(1, 9):
        data = _read(EDGE_DIR / f"Landscape_{i}.jpg")
        pixels, width, height, _ = decode_image(data, SETTINGS)
        assert (width, height) == (1800, 1200)
        decoded[i] = pixels
        upright = np.asarray(_exif_upright(data, tf))
        assert np.abs(pixels - reference_preprocess(tf, upright)).max() \
            < 1e-4, i  # float rounding: mirrored sample positions
    for i in range(2, 9):
        mean_delta = np.abs(decoded[i] - decoded[1]).mean() * 255
        assert mean_delta <= 3.5, (i, mean_delta)
    wrong = np.abs(decoded[1][::-1, ::-1] - decoded[1]).mean() * 255
    assert wrong >= 35, wrong


def _exif_upright(data: bytes, tf) -> Image.Image:
    """Decode like TF, then turn upright with Pillow's exif_transpose."""
    stored = Image.fromarray(tf.io.decode_jpeg(data, channels=3).numpy())
    exif = stored.getexif()
    exif[0x0112] = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    stored.info["exif"] = exif.tobytes()
    return ImageOps.exif_transpose(stored)


@pytest.mark.parametrize("name", ["16bit.deflate.tif", "i_trns.png",
                                  "basn2c16.png", "basn6a16.png"])
def test_sixteen_bit_images_match_their_8bit_rendering(tf, name):
    """16-bit data is scaled, not clipped: within 1/255 of the same image
    rendered to 8 bits (round(v / 257))."""
    data = _read(EDGE_DIR / name)
    pixels = decode_image(data, SETTINGS)[0]
    if name.endswith(".png"):  # an independent 16-bit decoder
        wide = tf.io.decode_png(data, dtype=tf.uint16).numpy()
    else:
        wide = np.asarray(Image.open(io.BytesIO(data))).astype(np.uint16)
    narrow = np.round(wide.astype(np.float64) / 257).astype(np.uint8)
    if narrow.ndim == 3 and narrow.shape[2] == 1:
        narrow = narrow[:, :, 0]
    rendering = Image.fromarray(narrow)
    transparency = Image.open(io.BytesIO(data)).info.get("transparency")
    if isinstance(transparency, int):  # tRNS grey value → alpha
        alpha = np.where(wide.squeeze() == transparency, 0, 255)
        rendering = Image.fromarray(np.dstack(
            [narrow] * 3 + [alpha]).astype(np.uint8), "RGBA")
    eight_bit = decode_image(_png_bytes(rendering), SETTINGS)[0]
    assert np.abs(pixels - eight_bit).max() <= 1 / 255 + 1e-6


def test_alpha_is_composited_over_white():
    clear = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    assert np.allclose(decode_image(_png_bytes(clear), SETTINGS)[0], 1.0)
    half = Image.new("RGBA", (64, 48), (0, 0, 0, 128))
    assert np.allclose(decode_image(_png_bytes(half), SETTINGS)[0],
                       127 / 255, atol=1 / 255)
    grey_alpha = Image.new("LA", (10, 10), (0, 0))
    assert np.allclose(decode_image(_png_bytes(grey_alpha), SETTINGS)[0], 1.0)
    palette = Image.new("P", (10, 10), 3)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 3
    assert np.allclose(decode_image(_png_bytes(palette), SETTINGS)[0], 1.0)
    # Real files: transparent corners of transparent.png come out white.
    pixels = decode_image(_read(EDGE_DIR / "transparent.png"), SETTINGS)[0]
    rgba = np.asarray(Image.open(EDGE_DIR / "transparent.png"))
    if rgba[0, 0, 3] == 0:
        assert np.allclose(pixels[0, 0], 1.0)


def test_cmyk_uses_pillows_conversion():
    data = _read(EDGE_DIR / "pil_sample_cmyk.jpg")
    converted = Image.open(io.BytesIO(data)).convert("RGB")
    expected = decode_image(_png_bytes(converted), SETTINGS)[0]
    assert np.abs(decode_image(data, SETTINGS)[0] - expected).max() < 1e-6


def test_animated_images_use_the_first_frame():
    for name in ("chi.gif", "anim.webp", "ball.png"):
        with Image.open(EDGE_DIR / name) as image:
            assert getattr(image, "n_frames", 1) > 1
            image.seek(0)
            first = image.convert("RGBA")
            second = (image.seek(1), image.convert("RGBA"))[1]
        got = decode_image(_read(EDGE_DIR / name), SETTINGS)[0]
        want = decode_image(_png_bytes(first), SETTINGS)[0]
        other = decode_image(_png_bytes(second), SETTINGS)[0]
        assert np.abs(got - want).max() < 1e-6, name
        assert np.abs(got - other).max() > 0.01, name


def test_pixel_limit_is_checked_before_decoding():
    big = _png_bytes(Image.new("RGB", (1000, 1000)))
    limited = DecodeSettings(max_pixels=999_999, allowed_formats=ALL_FORMATS)
    with pytest.raises(ImageError) as err:
        decode_image(big, limited)
    assert err.value.error_type == "TooManyPixels"
    # The 44-byte GIF declaring 4.4 G pixels fails without allocating them.
    with pytest.raises(ImageError) as err:
        decode_image(_read(EDGE_DIR / "decompression_bomb.gif"), SETTINGS)
    assert err.value.error_type == "TooManyPixels"


def test_format_allow_list_refuses_other_parsers():
    png = _png_bytes(Image.new("RGB", (8, 8)))
    only_jpeg = DecodeSettings(max_pixels=10**6, allowed_formats=("JPEG",))
    with pytest.raises(ImageError) as err:
        decode_image(png, only_jpeg)
    assert err.value.error_type == "UnidentifiedImage"
    # EPS would be handed to Ghostscript: it is not on the default list.
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
           b"0 0 moveto 8 8 lineto stroke\n%%EOF\n")
    with pytest.raises(ImageError) as err:
        decode_image(eps, SETTINGS)
    assert err.value.error_type == "UnidentifiedImage"
    assert "JPEG, PNG" in str(err.value)


@pytest.mark.parametrize("row", edge_manifest(), ids=lambda r: r["file"])
def test_edge_case_outcome_matches_manifest(row):
    data = _read(EDGE_DIR / row["file"])
    if row["expected"] == "decodable":
        pixels, width, height, _ = decode_image(data, SETTINGS)
        assert pixels.shape == (96, 96, 3)
        assert np.isfinite(pixels).all()
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0
        assert width > 0 and height > 0
    else:
        with pytest.raises(Exception) as err:
            decode_image(data, SETTINGS)
        assert str(err.value).strip(), "an error must say what was wrong"


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=300,
                          cwd=PROJECT_ROOT, check=False)


_IMPORT_STATE = """
import json, logging, sys, warnings
import numba, numpy, simplejpeg
from PIL import Image
import transforms.errors

def state():
    pil = logging.getLogger("PIL")
    return {"filters": [repr(f) for f in warnings.filters],
            "showwarning": repr(warnings.showwarning),
            "pil_logger": [pil.level, pil.propagate, repr(pil.handlers)],
            "pillow_plugins_initialised": Image._initialized,
            "max_image_pixels": Image.MAX_IMAGE_PIXELS}

before = state()
import transforms.imaging as imaging
after = state()
compiled = len(imaging.resize._resize_rows.signatures)
imaging.warm_up()
print(json.dumps({"before": before, "after": after,
                  "beam": sorted(m for m in sys.modules
                                 if m.split(".")[0] == "apache_beam"),
                  "compiled_at_import": compiled,
                  "compiled_by_warm_up":
                      len(imaging.resize._resize_rows.signatures),
                  "plugins_after_warm_up": Image._initialized}))
"""


def test_imaging_imports_no_beam_and_changes_nothing_until_warm_up():
    """Importing transforms.imaging: no Beam, no warnings filter or hook, no
    Pillow plugin import or logger change, no Numba compile. warm_up()
    compiles the resize kernel and imports Pillow's plugins."""
    run = _python(_IMPORT_STATE)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["beam"] == []
    assert got["after"] == got["before"]
    assert got["compiled_at_import"] == 0
    assert got["compiled_by_warm_up"] == 4
    assert got["plugins_after_warm_up"] == 2


_DECODE_EDGE_CASES = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO)
from transforms.imaging import (DecodeSettings, ImageBytes, allowed_formats,
                                decode_batch, warm_up)
warm_up()
edge_dir, max_pixels, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
settings = DecodeSettings(max_pixels, allowed_formats(
    "JPEG,PNG,GIF,WEBP,BMP,TIFF".split(",")))
decoded, errors = decode_batch(
    [ImageBytes(name, (edge_dir / name).read_bytes()) for name in names],
    settings)
print(json.dumps({"decoded": list(decoded.uris) if decoded else [],
                  "errors": [e._asdict() for e in errors]}))
"""


def _decode_edge_cases_in_subprocess(max_pixels: int):
    names = [row["file"] for row in edge_manifest()]
    run = _python(_DECODE_EDGE_CASES, str(EDGE_DIR), str(max_pixels), *names)
    assert run.returncode == 0, run.stderr
    return run, json.loads(run.stdout)


def test_decoder_messages_go_to_error_rows_not_stderr():
    """Pillow's warnings ("Truncated File Read", "Corrupt EXIF data"), its
    log records and libtiff's errors (printed by the C library) never reach
    stderr at log level INFO; a failed image's message carries them."""
    run, got = _decode_edge_cases_in_subprocess(SETTINGS.max_pixels)
    assert run.stderr == ""
    expected = {row["file"]: row["expected"] for row in edge_manifest()}
    failed = {e["uri"]: e for e in got["errors"]}
    assert set(got["decoded"]) == {n for n, e in expected.items()
                                   if e == "decodable"}
    assert set(failed) == {n for n, e in expected.items() if e != "decodable"}
    libtiff = failed["crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif"]
    assert libtiff["error_type"] == "OSError"
    assert "decoder error -2" in libtiff["message"]
    assert "Truncated File Read" in libtiff["message"]
    assert "libtiff: TIFFFillStrip: Read error on strip 0" in \
        libtiff["message"]
    exif = failed["oom-225817ca0f8c663be7ab4b9e717b02c661e66834.tif"]
    assert "Corrupt EXIF data" in exif["message"]
    assert "More samples per pixel than can be decoded" in exif["message"]


def test_too_many_pixels_messages_name_only_the_jobs_limit():
    """Over the limit by the header (our check) or far over it (Pillow's
    DecompressionBombError): the row names --max_pixels and nothing else."""
    max_pixels = 50_000_000  # below Pillow's own thresholds (89 M, 179 M)
    run, got = _decode_edge_cases_in_subprocess(max_pixels)
    assert run.stderr == ""
    too_many = {e["uri"]: e["message"] for e in got["errors"]
                if e["error_type"] == "TooManyPixels"}
    assert {"decompression_bomb.gif", "reallybig.bmp", "l2rgb_read.bmp",
            "Bad_height.bmp"} <= set(too_many), too_many
    for name, message in too_many.items():
        assert re.findall(r"limit of ([\d,]+)", message) == \
            [str(max_pixels)], (name, message)
        assert "178956970" not in message and "89478485" not in message
    assert too_many["l2rgb_read.bmp"].startswith(
        "3158064x48 = 151587072 pixels exceeds the limit of 50000000")


def test_facts_are_the_batch_without_its_pixels():
    """What the output keeps of a batch once the model has seen it."""
    files = photo_paths()[:3]
    batch, errors = decode_batch(
        [ImageBytes(str(p), _read(p)) for p in files], SETTINGS)
    assert not errors and len(batch) == 3
    facts = batch.facts
    assert facts.pixels is None and len(facts) == 3
    assert facts.uris == tuple(files) and facts.formats == ("JPEG",) * 3
    assert np.array_equal(facts.widths, batch.widths)
    assert np.array_equal(facts.heights, batch.heights)
