"""Step 2: bytes → decoded, preprocessed 96×96 RGB tensor, or an error record.

The preprocessing reproduces the module's published evaluation pipeline in
its TF2 form (the "reference"):

    tf.io.decode_jpeg(channels=3) → tf.image.convert_image_dtype(float32)
    → tf.image.central_crop(0.875) → tf.image.resize((96, 96), "bilinear")

`tf.io.decode_jpeg` uses libjpeg-turbo's fast integer DCT (JDCT_IFAST) by
default; Pillow always decodes with the accurate one, which differs from the
reference by up to ~2/255 per image on average. Pillow offers no switch, so
baseline RGB/greyscale JPEGs are decoded with simplejpeg (a libjpeg-turbo
binding) with the same DCT and upsampling as TF: bit-identical to the
reference and faster. Pillow still parses every header (format allow-list,
size limit, EXIF) and decodes everything else, and it has the last word: a
JPEG that simplejpeg rejects as corrupt but Pillow can read is decoded by
Pillow.

`tf.image.central_crop` keeps 87.5% of *each* side (integer box, offset
int(side / 16)), so the crop keeps the image's aspect ratio and the resize
then squeezes it to 96×96, exactly as the reference does. The resize is
bilinear with half-pixel centres and no antialiasing. Pillow's own
`resize(BILINEAR)` antialiases when shrinking (≈8/255 off the reference), so
the sampling is done here, by a small kernel compiled with Numba that runs
without the GIL, on just the 2×96 rows and columns it needs; it matches
TF's kernel to float rounding.

Decoding rules for inputs that are not plain 8-bit RGB:
  * EXIF orientation is applied (stored image → upright). Cropping and the
    symmetric resampling commute with the eight orientations, so the
    rotation/flip is applied to the 96×96 result, which is cheaper.
  * Alpha (RGBA, LA, PA, palette or grey with tRNS transparency) is
    composited over a white background, as a viewer shows it on a white page.
  * 16-bit greyscale (I;16*) is scaled by 1/65535, not clipped; 16-bit RGB
    PNG/TIFF are reduced to 8 bits by Pillow (the high byte).
  * CMYK uses Pillow's CMYK→RGB conversion (no ICC colour management).
  * Animated images (GIF, APNG, WebP) and multi-page TIFFs use the first frame.
  * Everything else (1-bit, L, P, YCbCr, ...) goes through Pillow's convert.
  * The format must be on an allow-list, and width × height must be within
    a pixel limit, both checked from the header before pixels are decoded.
"""
from __future__ import annotations

import functools
import io
import logging
import math
import pickle
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam
import numba
import numpy as np
import simplejpeg
from PIL import Image

from transforms.errors import (ERRORS_TAG, STAGE_DECODE, ErrorRecord,
                               ImageError, error_record)
from transforms.read import ImageBytes
from transforms.threaded import ThreadedDoFn, threaded_pardo

#: The module's input contract (model card): 96×96 RGB, central crop 87.5%.
IMAGE_SIZE = 96
CENTRAL_FRACTION = 0.875

# We enforce our own pixel limit before decoding; Pillow's warning for large
# images would only repeat it, at a different threshold.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# Import Pillow's format plugins now, not on the first Image.open with WebP
# or TIFF allowed: that took ~60-90 ms inside the first batch, on a decode
# thread holding the import lock the others then waited on.
Image.init()

_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_pixel_limit(width: int, height: int,
                       settings: "DecodeSettings") -> None:
    if width * height > settings.max_pixels:
        raise ImageError(
            "TooManyPixels",
            f"{width}x{height} = {width * height} pixels exceeds the "
            f"limit of {settings.max_pixels} (possible decompression bomb)")


def _png_header_size(data: bytes):
    """(width, height) from a PNG's IHDR chunk; None if `data` is no PNG or
    its IHDR is damaged (Pillow then refuses it as unidentified).

    Pillow's APNG reader allocates and fills a whole w×h RGBA frame inside
    Image.open, before its own or our size check (a 60 KB APNG declaring
    40000×40000 costs 6 GB and 9 s there), so PNG sizes are checked first.
    """
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or \
            data[8:16] != b"\x00\x00\x00\rIHDR" or \
            zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        return None
    return struct.unpack(">II", data[16:24])


@dataclass(frozen=True)
class DecodeSettings:
    """What the decode step accepts and how it decodes (values come from
    the job's options; see pipeline/options.py for defaults)."""
    max_pixels: int
    allowed_formats: Tuple[str, ...]
    fast_jpeg: bool = False  # JPEG DCT-scaled decoding: faster, not reference-exact


class ImageFacts(NamedTuple):
    """The facts of a batch's original files, one row per image: what the
    output keeps of a DecodedBatch once the model has seen its pixels."""
    uris: Tuple[str, ...]
    widths: np.ndarray     # int32 [n], upright (after EXIF orientation),
    heights: np.ndarray    # int32 [n]  before cropping
    formats: Tuple[str, ...]  # Pillow's format names, e.g. "JPEG"

    def __len__(self) -> int:  # images, not fields
        return len(self.uris)


class DecodedBatch(NamedTuple):
    """Preprocessed images ready for the model, one row per image, with the
    facts of the original files."""
    uris: Tuple[str, ...]
    pixels: np.ndarray     # float32 [n, 96, 96, 3], RGB in [0, 1]
    widths: np.ndarray     # int32 [n], upright (after EXIF orientation),
    heights: np.ndarray    # int32 [n]  before cropping
    formats: Tuple[str, ...]  # Pillow's format names, e.g. "JPEG"

    def __len__(self) -> int:  # images, not fields
        return len(self.uris)

    @property
    def facts(self) -> ImageFacts:
        return ImageFacts(self.uris, self.widths, self.heights, self.formats)


class DecodedBatchCoder(beam.coders.Coder):
    """Beam's coder for DecodedBatch: pickles it, but estimates its size
    without doing so. Beam samples the size of elements on every output;
    the default estimate pickled whole 7 MB batches on the bundle thread
    just to measure them (~2 ms each, ~30 per 5,000 images)."""

    def encode(self, value: DecodedBatch) -> bytes:
        return pickle.dumps(tuple(value), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> DecodedBatch:
        return DecodedBatch(*pickle.loads(encoded))

    def estimate_size(self, value: DecodedBatch) -> int:
        return (value.pixels.nbytes + value.widths.nbytes +
                value.heights.nbytes +
                sum(len(uri) + len(fmt) + 16
                    for uri, fmt in zip(value.uris, value.formats)))

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return DecodedBatch

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


beam.coders.registry.register_coder(DecodedBatch, DecodedBatchCoder)


# ---------------------------------------------------------------------------
# Plain functions (no Beam)
# ---------------------------------------------------------------------------

def central_crop_box(width: int, height: int,
                     fraction: float = CENTRAL_FRACTION
                     ) -> Tuple[int, int, int, int]:
    """(left, top, crop_width, crop_height) as tf.image.central_crop computes.

    TF takes offset = int(side / int(1 / ((1 - fraction) / 2))) and keeps
    side - 2 * offset, i.e. the offset is floor(side / 16) for 0.875.
    """
    divisor = int(1 / ((1 - fraction) / 2.0))
    left, top = int(width / divisor), int(height / divisor)
    return left, top, width - 2 * left, height - 2 * top


def _half_pixel_taps(in_size: int, out_size: int, offset: int
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of TF's bilinear resize (half-pixel
    centres, no antialiasing) along one axis, in float32 like TF's kernel."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = ((np.arange(out_size, dtype=np.float32) + np.float32(0.5))
               * scale - np.float32(0.5))
    floor = np.floor(centres)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(centres), in_size - 1).astype(np.intp)
    weight = (centres - floor).astype(np.float32)
    return lower + offset, upper + offset, weight


@functools.lru_cache(maxsize=512)
def _resize_plan(box: Tuple[int, int, int, int], channels: int, size: int
                 ) -> Tuple[np.ndarray, ...]:
    """The source rows, row weights, source items and item weights of TF's
    bilinear resize of the `box` region to size×size, for an image seen as
    [H, W·C] (items are pixel × channel offsets within a row).

    Cached: a corpus has few distinct crop boxes, and building the plan
    costs as much as using it."""
    left, top, crop_w, crop_h = box
    y0, y1, wy = _half_pixel_taps(crop_h, size, top)
    x0, x1, wx = _half_pixel_taps(crop_w, size, left)
    channel = np.arange(channels)
    return (y0, y1, wy, (x0[:, None] * channels + channel).ravel(),
            (x1[:, None] * channels + channel).ravel(),
            np.repeat(wx, channels))


# By hand because no library has TF's exact kernel (half-pixel centres, no
# antialiasing, float32 in TF's order); compiled so that it runs without the
# GIL: as NumPy calls it took ~12 GIL hand-offs per image, which stalled the
# decode threads behind the thread running inference. Compiled (or loaded
# from Numba's cache) at import for the pixel arrays decoding produces
# (uint8 or float32; Pillow's may be read-only), so the first batch does not
# wait ~0.4 s for it.
_INDICES, _WEIGHTS = numba.intp[::1], numba.float32[::1]
_RESIZE_SIGNATURES = [
    numba.void(numba.types.Array(pixel, 2, "C", readonly=readonly), _INDICES,
               _INDICES, _WEIGHTS, _INDICES, _INDICES, _WEIGHTS,
               numba.float32, numba.float32[:, ::1])
    for pixel in (numba.uint8, numba.float32) for readonly in (False, True)]


@numba.njit(_RESIZE_SIGNATURES, nogil=True, cache=True)
def _resize_rows(rows, y0, y1, wy, x0, x1, wx, scale, out):
    for i in range(out.shape[0]):
        upper_row, lower_row, fy = rows[y0[i]], rows[y1[i]], wy[i]
        out_row = out[i]
        for k in range(out.shape[1]):
            top_left = np.float32(upper_row[x0[k]])
            top_right = np.float32(upper_row[x1[k]])
            bottom_left = np.float32(lower_row[x0[k]])
            bottom_right = np.float32(lower_row[x1[k]])
            fx = wx[k]
            # TF's kernel, same operations in the same order (so
            # bit-identical): top = tl + (tr - tl)·wx; bottom likewise;
            # out = top + (bottom - top)·wy; then the scale to [0, 1].
            top = (top_right - top_left) * fx + top_left
            bottom = (bottom_right - bottom_left) * fx + bottom_left
            out_row[k] = ((bottom - top) * fy + top) * scale


def resize_bilinear_crop(pixels: np.ndarray, box: Tuple[int, int, int, int],
                         size: int = IMAGE_SIZE, scale: float = 1.0
                         ) -> np.ndarray:
    """Bilinear-resize the `box` region of an [H, W, C] array to size×size,
    then multiply by `scale`.

    Matches tf.image.resize(method="bilinear") on the cropped image. Only
    the 4·size² source values that the output samples are read, so cost
    does not grow with the image. Returns float32 [size, size, C].
    """
    height, width, channels = pixels.shape
    y0, y1, wy, x0, x1, wx = _resize_plan(tuple(box), channels, size)
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    out = np.empty((size, size * channels), np.float32)
    _resize_rows(rows, y0, y1, wy, x0, x1, wx, np.float32(scale), out)
    return out.reshape(size, size, channels)


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored-orientation [H, W, C] array upright (EXIF tag 0x0112).

    Same mapping as PIL.ImageOps.exif_transpose; unknown values are ignored.
    """
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb_array(image: Image.Image) -> Tuple[np.ndarray, float]:
    """A loaded Pillow image → ([H, W, 3] array, its full-scale value).

    Returns uint8 with scale 255 for ordinary images and float32 with scale 1
    for 16-bit greyscale, which keeps its precision instead of being clipped
    to 8 bits the way Pillow's convert("RGB") would.
    """
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.float32)
        # Mode "I" can hold any int32; treat it as 16-bit data (PNG/TIFF).
        value = np.clip(grey / 65535.0, 0.0, 1.0)
        if isinstance(transparency, int):  # tRNS: one grey value is clear
            value = np.where(grey == transparency, 1.0, value)
        return np.repeat(value[:, :, None], 3, axis=2), 1.0
    if mode in _ALPHA_MODES or transparency is not None:
        return np.asarray(_over_white(image.convert("RGBA"))), 255.0
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image), 255.0


def _min_decoded_side(size: int) -> int:
    """Smallest side that still leaves `size` pixels across the central crop:
    DCT-scaled decoding (fast mode) must not shrink below it."""
    return math.ceil(size / CENTRAL_FRACTION) + 1


def decode_jpeg_like_tf(data: bytes, fast: bool = False,
                        size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode a baseline/progressive YCbCr or greyscale JPEG to [H, W, 3]
    uint8 exactly as tf.io.decode_jpeg(channels=3) does (fast integer DCT,
    fancy upsampling). With `fast`, libjpeg-turbo's DCT scaling decodes at a
    reduced size no smaller than the crop needs. Raises ValueError on
    corrupt data (strict: even recoverable damage)."""
    side = _min_decoded_side(size) if fast else 0
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True,
                                  fastupsample=False, min_height=side,
                                  min_width=side)


_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PLAIN_JPEG_COLORSPACES = frozenset({"YCbCr", "RGB", "Gray"})


def _has_exif_or_mpf(data: bytes) -> bool:
    """Whether a JPEG's marker segments before its scan data hold EXIF
    (APP1 "Exif") or MPF (APP2 "MPF"); True also when the segments cannot
    be walked, so that Pillow looks at the file. A walk of a few segments:
    searching the whole file for the tags costs ~80 µs."""
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return True
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:  # start of scan: no more header segments
            return False
        length = (data[position + 2] << 8) | data[position + 3]
        if (marker == 0xE1 and data[position + 4:position + 10] ==
                b"Exif\x00\x00") or \
                (marker == 0xE2 and data[position + 4:position + 8] ==
                 b"MPF\x00"):
            return True
        position += 2 + length
    return True


def _decode_plain_jpeg(data: bytes, settings: DecodeSettings, size: int):
    """(pixels, width, height) of a JPEG that needs nothing from Pillow: no
    EXIF (so no orientation) and no MPF (Pillow calls those MPO); YCbCr,
    RGB or grey. None sends the file down the general path, which reads
    it with Pillow: this only skips Pillow's header parsing (done in
    Python, ~30 µs and many GIL hand-offs per image) for the common case.
    """
    if "JPEG" not in settings.allowed_formats or \
            not data.startswith(_JPEG_SIGNATURE) or \
            _has_exif_or_mpf(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in _PLAIN_JPEG_COLORSPACES or width <= 0 or height <= 0:
        return None
    _check_pixel_limit(width, height, settings)
    try:
        return decode_jpeg_like_tf(data, settings.fast_jpeg, size), width, \
            height
    except ValueError:
        return None  # damaged: Pillow decides, as for every other JPEG


def _decode_with_pillow(data: bytes, settings: DecodeSettings, size: int
                        ) -> Tuple[np.ndarray, float, int, int, str, int]:
    """The general path: (pixels [H, W, 3], their full-scale value, width,
    height, format, EXIF orientation), with Pillow checking the header."""
    png_size = _png_header_size(data) if "PNG" in settings.allowed_formats \
        else None
    if png_size:
        _check_pixel_limit(*png_size, settings)
    # formats=: parsers outside the allow-list are never even tried (EPS/PDF
    # would hand the file to Ghostscript).
    try:
        image = Image.open(io.BytesIO(data), formats=settings.allowed_formats)
    except Image.UnidentifiedImageError as exc:
        raise ImageError(
            "UnidentifiedImage",
            "not an image in an allowed format "
            f"({', '.join(settings.allowed_formats)})") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit
        raise ImageError("TooManyPixels", f"{exc}") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageError("InvalidSize", f"image size is {width}x{height}")
        _check_pixel_limit(width, height, settings)
        image_format = image.format or "UNKNOWN"
        pixels = None
        if image_format == "JPEG" and image.mode in ("RGB", "L"):
            try:
                pixels, full_scale = decode_jpeg_like_tf(
                    data, settings.fast_jpeg, size), 255.0
            except ValueError:
                pixels = None  # let Pillow decide: it tolerates some damage
        if pixels is None:
            if settings.fast_jpeg and image_format == "JPEG":
                side = _min_decoded_side(size)
                image.draft("RGB", (side, side))
            image.load()
            pixels, full_scale = to_rgb_array(image)
        try:
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        except Exception:  # pylint: disable=broad-except
            # Unreadable EXIF (Pillow raises SyntaxError, ValueError,
            # struct.error, ...): the pixels are fine; show them unrotated,
            # as viewers do, rather than fail the image.
            orientation = 1
    return pixels, full_scale, width, height, image_format, orientation


def decode_image(data: bytes, settings: DecodeSettings,
                 size: int = IMAGE_SIZE
                 ) -> Tuple[np.ndarray, int, int, str]:
    """Decode and preprocess one image as the module expects.

    Returns (pixels float32 [size, size, 3] in [0, 1], upright width, upright
    height, format). Raises ImageError or Pillow's own exceptions on files
    that are not allowed or not decodable.
    """
    if not data:
        raise ImageError("EmptyFile", "file is empty (0 bytes)")
    plain = _decode_plain_jpeg(data, settings, size)
    if plain is not None:
        pixels, width, height = plain
        full_scale, image_format, orientation = 255.0, "JPEG", 1
    else:
        pixels, full_scale, width, height, image_format, orientation = \
            _decode_with_pillow(data, settings, size)
    box = central_crop_box(pixels.shape[1], pixels.shape[0])
    if box[2] <= 0 or box[3] <= 0:
        raise ImageError("InvalidSize", f"image size is {width}x{height}")
    resized = resize_bilinear_crop(pixels, box, size, 1.0 / full_scale)
    upright = apply_orientation(resized, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return np.ascontiguousarray(upright, dtype=np.float32), width, height, \
        image_format


def decode_batch(batch: Sequence[ImageBytes], settings: DecodeSettings,
                 size: int = IMAGE_SIZE
                 ) -> Tuple[Optional[DecodedBatch], List[ErrorRecord]]:
    """Decode a batch of files into one array, ready for the model.

    Returns the decoded images (None if none decoded) and an ErrorRecord
    (stage "decode") for each file that did not: any exception while
    decoding is about that one file.
    """
    pixels = np.empty((len(batch), size, size, 3), np.float32)
    uris, widths, heights, formats, errors = [], [], [], [], []
    for image in batch:
        try:
            pixels[len(uris)], width, height, fmt = decode_image(
                image.data, settings, size)
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(error_record(image.uri, STAGE_DECODE, exc))
            continue
        uris.append(image.uri)
        widths.append(width)
        heights.append(height)
        formats.append(fmt)
    if not uris:
        return None, errors
    return DecodedBatch(tuple(uris), pixels[:len(uris)],
                        np.asarray(widths, np.int32),
                        np.asarray(heights, np.int32), tuple(formats)), errors


# ---------------------------------------------------------------------------
# Beam
# ---------------------------------------------------------------------------

#: Nice value of the decode threads. The bundle thread (the model call,
#: reads, Beam, rows) is the job's critical path, while the decode threads
#: work ahead on a queue of batches: at a lower priority they take the
#: cores whenever it does not need them, instead of stretching every model
#: call. Paired rounds (means of 8): tf 407 vs 381 img/s, xnnpack 577 vs 569.
DECODE_THREAD_NICENESS = 10


class DecodeImages(ThreadedDoFn):
    """Batch of ImageBytes → one DecodedBatch, and an ErrorRecord (stage
    "decode") on ERRORS_TAG per file that does not decode. Batches decode
    on `threads` threads: libjpeg-turbo and Pillow release the GIL, so they
    decode while the bundle thread classifies."""

    def __init__(self, settings: DecodeSettings, threads: int = 1,
                 max_in_flight: int = 0):
        super().__init__(threads, max_in_flight,
                         niceness=DECODE_THREAD_NICENESS)
        self._settings = settings

    def setup(self):
        super().setup()
        # Pillow logs some decoder failures at ERROR; each one is recorded
        # as an error row already, so the log line is only noise.
        logging.getLogger("PIL").setLevel(logging.CRITICAL)

    def work(self, element: Sequence[ImageBytes]
             ) -> List[Union[DecodedBatch, beam.pvalue.TaggedOutput]]:
        decoded, errors = decode_batch(element, self._settings)
        outputs: List[Union[DecodedBatch, beam.pvalue.TaggedOutput]] = [
            beam.pvalue.TaggedOutput(ERRORS_TAG, e) for e in errors]
        if decoded is not None:
            outputs.append(decoded)
        return outputs


class DecodeAndPreprocess(beam.PTransform):
    """PCollection[ImageBytes] → {"images": DecodedBatch, ERRORS_TAG:
    ErrorRecord}.

    Images are batched here, before decoding (Beam's BatchElements, between
    `min_batch_size` and `max_batch_size`; with min_batch_size None, every
    batch but the last has max_batch_size images), so that everything
    downstream (the decode hand-off, the model call, rows, Parquet) works a
    batch at a time instead of paying Python and Beam overhead per image.
    Each batch is decoded into the array the model takes, with no copy in
    between.
    """

    def __init__(self, settings: DecodeSettings, threads: int = 1, *,
                 min_batch_size: Optional[int] = None,
                 max_batch_size: int = 64, batches_in_flight: int = 0):
        super().__init__()
        self._settings = settings
        self._threads = threads
        self._batch_sizes = (min_batch_size or max_batch_size, max_batch_size)
        self._batches_in_flight = batches_in_flight

    def expand(self, images):
        results = (
            images
            | "Batch" >> beam.BatchElements(
                min_batch_size=self._batch_sizes[0],
                max_batch_size=self._batch_sizes[1])
            | "Decode" >> threaded_pardo(DecodeImages(
                self._settings, self._threads, self._batches_in_flight)
            ).with_output_types(DecodedBatch, **{ERRORS_TAG: ErrorRecord})
            .with_outputs(ERRORS_TAG, main="images"))
        return {"images": results.images, ERRORS_TAG: results[ERRORS_TAG]}


def allowed_formats(names: Sequence[str]) -> Tuple[str, ...]:
    """Normalise format names to Pillow's plugin IDs ("jpg" → "JPEG")."""
    aliases = {"JPG": "JPEG", "TIF": "TIFF"}
    return tuple(aliases.get(n.strip().upper(), n.strip().upper())
                 for n in names if n.strip())
