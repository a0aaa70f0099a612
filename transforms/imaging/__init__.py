"""Image decoding and preprocessing for the module: plain functions, no Beam.

Importing this package changes no process state. `warm_up()` does the
one-time set-up, and every process that decodes calls it before its first
image (a DoFn in `setup`).

    decode.py  bytes → 96×96 RGB float32 (decoders, alpha, 16-bit, EXIF)
    resize.py  central crop, TF's bilinear resize, orientation
    limits.py  DecodeSettings: format allow-list, pixel limit
    notes.py   what decoders warn → the debug log and the error rows
"""
from __future__ import annotations

import threading

from PIL import Image

from transforms.imaging.decode import (DECODE_THREAD_NICENESS, DecodedBatch,
                                       ImageBytes, decode_batch,
                                       decode_image, decode_jpeg_like_tf,
                                       to_rgb_array)
from transforms.imaging.limits import (DecodeSettings, allowed_formats,
                                       check_pixel_limit, png_header_size)
from transforms.imaging.notes import route_decoder_messages
from transforms.imaging.resize import (CENTRAL_FRACTION, IMAGE_SIZE,
                                       apply_orientation, central_crop_box,
                                       compile_resize, resize_bilinear_crop)

__all__ = [
    "CENTRAL_FRACTION", "DECODE_THREAD_NICENESS", "IMAGE_SIZE",
    "DecodeSettings", "DecodedBatch", "ImageBytes",
    "allowed_formats", "apply_orientation", "central_crop_box",
    "check_pixel_limit", "decode_batch", "decode_image",
    "decode_jpeg_like_tf", "png_header_size", "resize_bilinear_crop",
    "to_rgb_array", "warm_up",
]

_warm_lock = threading.Lock()
_warmed = False


def warm_up() -> None:
    """Prepare this process to decode; cheap to call again.

    Compiles the resize kernel (or loads it from Numba's cache) and imports
    Pillow's format plugins, so that neither happens inside the first batch
    on a decode thread (the plugin import holds the import lock the other
    threads then wait on). Routes what decoders warn to the debug log and
    the error rows instead of stderr (notes.py).
    """
    global _warmed  # pylint: disable=global-statement
    with _warm_lock:
        if not _warmed:
            Image.init()
            compile_resize()
            _warmed = True
    route_decoder_messages()  # again: a test harness may have reset it
