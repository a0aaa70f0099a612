"""Central crop, bilinear resize and EXIF orientation, exactly as the
module's reference preprocessing (TF2 form) computes them:

    tf.image.central_crop(0.875) → tf.image.resize((96, 96), "bilinear")

`tf.image.central_crop` keeps 87.5% of *each* side (integer box, offset
int(side / 16)), so the crop keeps the image's aspect ratio and the resize
then squeezes it to 96×96, as the reference does. The resize is bilinear
with half-pixel centres and no antialiasing. Pillow's own
`resize(BILINEAR)` antialiases when shrinking (≈8/255 off the reference),
so the sampling is done here, by a small kernel compiled with Numba that
runs without the GIL, on just the 2×96 rows and columns it needs; it
matches TF's kernel to float rounding.
"""
from __future__ import annotations

import functools
from typing import Tuple

import numba
import numpy as np

#: The module's input contract (model card): 96×96 RGB, central crop 87.5%.
IMAGE_SIZE = 96
CENTRAL_FRACTION = 0.875


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


# The pixel arrays decoding produces: uint8 or float32, and Pillow's may be
# read-only. compile_resize() compiles these ahead of the first batch.
_INDICES, _WEIGHTS = numba.intp[::1], numba.float32[::1]
_RESIZE_SIGNATURES = [
    numba.void(numba.types.Array(pixel, 2, "C", readonly=readonly), _INDICES,
               _INDICES, _WEIGHTS, _INDICES, _INDICES, _WEIGHTS,
               numba.float32, numba.float32[:, ::1])
    for pixel in (numba.uint8, numba.float32) for readonly in (False, True)]


# By hand because no library has TF's exact kernel (half-pixel centres, no
# antialiasing, float32 in TF's order); compiled so that it runs without the
# GIL, which the decode threads share with the thread running inference.
# Lazy: compiled on first use or by compile_resize(), never at import.
@numba.njit(nogil=True, cache=True)
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


def compile_resize() -> None:
    """Compile (or load from Numba's cache) the resize kernel for every
    pixel array decoding produces, so no batch waits ~0.4 s for it."""
    for signature in _RESIZE_SIGNATURES:
        _resize_rows.compile(signature)


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
    Cropping and the symmetric resampling commute with the eight
    orientations, so this is applied to the 96×96 result, which is cheaper.
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
