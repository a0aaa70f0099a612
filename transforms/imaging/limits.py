"""What the decoder accepts: the format allow-list and the pixel limit, both
checked from the header before pixels are decoded."""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from transforms.errors import ImageError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class DecodeSettings:
    """What the decode step accepts and how it decodes (values come from
    the job's options; see pipeline/options.py for defaults)."""
    max_pixels: int
    allowed_formats: Tuple[str, ...]
    #: JPEG DCT-scaled decoding: faster, not reference-exact.
    fast_jpeg: bool = False


def allowed_formats(names: Sequence[str]) -> Tuple[str, ...]:
    """Normalise format names to Pillow's plugin IDs ("jpg" → "JPEG")."""
    aliases = {"JPG": "JPEG", "TIF": "TIFF"}
    return tuple(aliases.get(n.strip().upper(), n.strip().upper())
                 for n in names if n.strip())


def too_many_pixels(pixels: int, settings: DecodeSettings,
                    size: str = "") -> ImageError:
    """The TooManyPixels error, naming the job's limit and no other."""
    return ImageError(
        "TooManyPixels",
        f"{size}{pixels} pixels exceeds the limit of {settings.max_pixels} "
        "(possible decompression bomb)")


def check_pixel_limit(width: int, height: int,
                      settings: DecodeSettings) -> None:
    """Raise TooManyPixels if width × height is over the job's limit."""
    if width * height > settings.max_pixels:
        raise too_many_pixels(width * height, settings, f"{width}x{height} = ")


def from_pillow_bomb_error(exc: Exception,
                           settings: DecodeSettings) -> ImageError:
    """Pillow's DecompressionBombError → TooManyPixels with the job's limit.

    Pillow's own limit stays in force as a backstop (it also guards frame
    sizes that only appear while loading), but its message names Pillow's
    threshold; rows and logs name only the job's."""
    found = _PILLOW_BOMB_PIXELS.search(str(exc))
    pixels = int(found.group(1)) if found else 0
    if pixels > settings.max_pixels:
        return too_many_pixels(pixels, settings)
    return ImageError(  # only when --max_pixels is set above Pillow's limit
        "TooManyPixels",
        f"{pixels or 'too many'} pixels: over Pillow's own safety limit "
        f"(--max_pixels {settings.max_pixels} is set above it)")


def png_header_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG's IHDR chunk; None if `data` is no PNG or
    its IHDR is damaged (Pillow then refuses it as unidentified).

    Pillow's APNG reader allocates and fills a whole w×h RGBA frame inside
    Image.open, before its own or the job's size check (a 60 KB APNG
    declaring 40000×40000 costs 6 GB and 9 s there), so PNG sizes are
    checked first.
    """
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or \
            data[8:16] != b"\x00\x00\x00\rIHDR" or \
            zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        return None
    return struct.unpack(">II", data[16:24])
