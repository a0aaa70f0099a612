"""Bytes → the module's 96×96 RGB input, or an ImageError.

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
Pillow. Crop and resize: transforms/imaging/resize.py.

Decoding rules for inputs that are not plain 8-bit RGB:
  * EXIF orientation is applied (stored image → upright).
  * Alpha (RGBA, LA, PA, palette or grey with tRNS transparency) is
    composited over a white background, as a viewer shows it on a white page.
  * 16-bit greyscale (I;16*) is scaled by 1/65535, not clipped; 16-bit RGB
    PNG/TIFF are reduced to 8 bits by Pillow (the high byte).
  * CMYK uses Pillow's CMYK→RGB conversion (no ICC colour management).
  * Animated images (GIF, APNG, WebP) and multi-page TIFFs use the first frame.
  * Everything else (1-bit, L, P, YCbCr, ...) goes through Pillow's convert.
  * The format must be on an allow-list, and width × height must be within
    a pixel limit, both checked from the header before pixels are decoded
    (transforms/imaging/limits.py).

What decoders warn while decoding an image goes to the debug log and, if
the image fails, into its error message (transforms/imaging/notes.py).
"""
from __future__ import annotations

import io
import logging
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import simplejpeg
from PIL import Image

from transforms.errors import (STAGE_DECODE, ErrorRecord, ImageError,
                               error_record, one_line)
from transforms.imaging import notes
from transforms.imaging.limits import (DecodeSettings, check_pixel_limit,
                                       from_pillow_bomb_error,
                                       png_header_size)
from transforms.imaging.resize import (CENTRAL_FRACTION, IMAGE_SIZE,
                                       apply_orientation, central_crop_box,
                                       resize_bilinear_crop)

_LOGGER = logging.getLogger(__name__)

#: Nice value of the decode threads: the thread running the model is the
#: critical path, so decoding takes the cores whenever it does not need them.
DECODE_THREAD_NICENESS = 10

_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PLAIN_JPEG_COLORSPACES = frozenset({"YCbCr", "RGB", "Gray"})


class ImageBytes(NamedTuple):
    """The raw content of one input file."""
    uri: str
    data: bytes


class DecodedBatch(NamedTuple):
    """Decoded images, one row per image: the files' facts and the pixels
    the model takes."""
    uris: Tuple[str, ...]
    pixels: Optional[np.ndarray]  # float32 [n, 96, 96, 3], RGB in [0, 1]
    widths: np.ndarray     # int32 [n], upright (after EXIF orientation),
    heights: np.ndarray    # int32 [n]  before cropping
    formats: Tuple[str, ...]  # Pillow's format names, e.g. "JPEG"

    def __len__(self) -> int:  # images, not fields
        return len(self.uris)

    @property
    def facts(self) -> "DecodedBatch":
        """The batch without its pixels (None): what the output keeps once
        the model has seen them."""
        # Not _replace(): it checks len(), which counts images here.
        return DecodedBatch(self.uris, None, self.widths, self.heights,
                            self.formats)


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
    check_pixel_limit(width, height, settings)
    try:
        return decode_jpeg_like_tf(data, settings.fast_jpeg, size), width, \
            height
    except ValueError:
        return None  # damaged: Pillow decides, as for every other JPEG


def _decode_with_pillow(data: bytes, settings: DecodeSettings, size: int
                        ) -> Tuple[np.ndarray, float, int, int, str, int]:
    """The general path: (pixels [H, W, 3], their full-scale value, width,
    height, format, EXIF orientation), with Pillow checking the header."""
    png_size = png_header_size(data) if "PNG" in settings.allowed_formats \
        else None
    if png_size:
        check_pixel_limit(*png_size, settings)
    # formats=: parsers outside the allow-list are never even tried (EPS/PDF
    # would hand the file to Ghostscript).
    try:
        image = Image.open(io.BytesIO(data), formats=settings.allowed_formats)
    except Image.UnidentifiedImageError as exc:
        raise ImageError(
            "UnidentifiedImage",
            "not an image in an allowed format "
            f"({', '.join(settings.allowed_formats)})") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageError("InvalidSize", f"image size is {width}x{height}")
        check_pixel_limit(width, height, settings)
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


def _decode(data: bytes, settings: DecodeSettings, size: int
            ) -> Tuple[np.ndarray, int, int, str]:
    if not data:
        raise ImageError("EmptyFile", "file is empty (0 bytes)")
    try:
        plain = _decode_plain_jpeg(data, settings, size)
        if plain is not None:
            pixels, width, height = plain
            full_scale, image_format, orientation = 255.0, "JPEG", 1
        else:
            pixels, full_scale, width, height, image_format, orientation = \
                _decode_with_pillow(data, settings, size)
    except Image.DecompressionBombError as exc:
        raise from_pillow_bomb_error(exc, settings) from exc
    box = central_crop_box(pixels.shape[1], pixels.shape[0])
    if box[2] <= 0 or box[3] <= 0:
        raise ImageError("InvalidSize", f"image size is {width}x{height}")
    resized = resize_bilinear_crop(pixels, box, size, 1.0 / full_scale)
    upright = apply_orientation(resized, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return np.ascontiguousarray(upright, dtype=np.float32), width, height, \
        image_format


def _decode_noting(data: bytes, settings: DecodeSettings, size: int
                   ) -> Tuple[Tuple[np.ndarray, int, int, str], List[str]]:
    """`_decode`, and what the decoders said meanwhile. A failure's message
    ends with what they said (e.g. libtiff's reason for "decoder error")."""
    with notes.collecting() as heard:
        try:
            return _decode(data, settings, size), heard
        except Exception as exc:
            if not heard:
                raise
            error_type = getattr(exc, "error_type", None) or \
                type(exc).__name__
            raise ImageError(error_type, f"{one_line(exc)} (decoder: "
                             f"{'; '.join(heard)})") from exc


def decode_image(data: bytes, settings: DecodeSettings,
                 size: int = IMAGE_SIZE
                 ) -> Tuple[np.ndarray, int, int, str]:
    """Decode and preprocess one image as the module expects.

    Returns (pixels float32 [size, size, 3] in [0, 1], upright width, upright
    height, format). Raises ImageError or Pillow's own exceptions on files
    that are not allowed or not decodable.
    """
    decoded, heard = _decode_noting(data, settings, size)
    if heard:
        _LOGGER.debug("decoder messages: %s", "; ".join(heard))
    return decoded


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
            (pixels[len(uris)], width, height, fmt), heard = _decode_noting(
                image.data, settings, size)
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(error_record(image.uri, STAGE_DECODE, exc))
            _LOGGER.debug("decode failed for %s: %s", image.uri,
                          errors[-1].message)
            continue
        if heard:
            _LOGGER.debug("decoder messages for %s: %s", image.uri,
                          "; ".join(heard))
        uris.append(image.uri)
        widths.append(width)
        heights.append(height)
        formats.append(fmt)
    if not uris:
        return None, errors
    return DecodedBatch(tuple(uris), pixels[:len(uris)],
                        np.asarray(widths, np.int32),
                        np.asarray(heights, np.int32), tuple(formats)), errors
