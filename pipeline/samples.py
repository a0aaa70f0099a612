"""Sample images for the demo, so it runs on a fresh clone with no data.

Synthetic pictures (a gradient with a few shapes) drawn with Pillow from a
fixed seed, in the shapes real inputs come in: JPEG and PNG of varied sizes
and aspect ratios, a progressive JPEG, greyscale, alpha, a palette PNG, WebP,
GIF, a JPEG stored sideways with an EXIF orientation tag, and three files no
decoder accepts, so the demo's errors output has rows too.

    python -m pipeline.samples DIR     # what `make demo` runs first
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import sys
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

_LOGGER = logging.getLogger("pipeline.samples")

SEED = 20240601
EXIF_ORIENTATION_TAG = 0x0112


@dataclasses.dataclass(frozen=True)
class SampleImage:
    """One sample file and what the job makes of it."""
    name: str
    what: str
    # The upright (width, height) the labels row reports; None for a file
    # that must become an error row.
    upright_size: Optional[Tuple[int, int]]

    @property
    def decodable(self) -> bool:
        return self.upright_size is not None


def _picture(rng: random.Random, size: Tuple[int, int]) -> Image.Image:
    """A vertical two-colour gradient with a few filled shapes on it."""
    width, height = size
    top = [rng.randrange(256) for _ in range(3)]
    bottom = [rng.randrange(256) for _ in range(3)]
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", size, tuple(bottom)),
                            Image.new("RGB", size, tuple(top)), gradient)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 8)):
        box = sorted(rng.randrange(width) for _ in range(2)), \
            sorted(rng.randrange(height) for _ in range(2))
        xy = [box[0][0], box[1][0], box[0][1] + 1, box[1][1] + 1]
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse(xy, fill=fill)
        else:
            draw.rectangle(xy, fill=fill)
    return image


# (file name, description, size as stored); the mode and format follow from
# the name and are set in write_samples.
_PLAIN_JPEGS = [(640, 480), (480, 640), (1024, 768), (320, 240), (800, 600),
                (1280, 720), (96, 96), (300, 300), (1600, 1200), (150, 100),
                (500, 375), (375, 500), (1000, 1000), (224, 224), (720, 1280),
                (640, 427), (427, 640), (2048, 1365), (120, 90), (333, 250)]
_PLAIN_PNGS = [(512, 384), (256, 256), (384, 512), (800, 450)]


def write_samples(directory: str) -> List[SampleImage]:
    """Write the sample set under `directory` (created if needed; files of
    the same names are replaced) and return what was written, in order.
    The same seed gives the same pictures on every call."""
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(SEED)
    written: List[SampleImage] = []

    def save(image: Image.Image, name: str, what: str,
             upright: Tuple[int, int], **params) -> None:
        image.save(os.path.join(directory, name), **params)
        written.append(SampleImage(name, what, upright))

    for index, size in enumerate(_PLAIN_JPEGS):
        save(_picture(rng, size), f"photo-{index:02d}.jpg",
             f"RGB JPEG {size[0]}x{size[1]}", size, quality=90)
    for index, size in enumerate(_PLAIN_PNGS):
        save(_picture(rng, size), f"drawing-{index:02d}.png",
             f"RGB PNG {size[0]}x{size[1]}", size)

    size = (600, 400)
    save(_picture(rng, size), "progressive.jpg", "progressive RGB JPEG",
         size, quality=85, progressive=True)
    size = (400, 300)
    save(_picture(rng, size).convert("L"), "greyscale.jpg",
         "greyscale (1-channel) JPEG", size, quality=90)
    save(_picture(rng, size).convert("L"), "greyscale.png",
         "greyscale (mode L) PNG", size)
    rgba = _picture(rng, size).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").rotate(90).resize(size))
    save(rgba, "alpha.png", "RGBA PNG with a transparency gradient", size)
    save(_picture(rng, size).convert("P", palette=Image.Palette.ADAPTIVE,
                                     colors=32),
         "palette.png", "palette (mode P) PNG, 32 colours", size)
    save(_picture(rng, size), "lossy.webp", "lossy WebP", size, quality=80)
    save(_picture(rng, size).convert("P", palette=Image.Palette.ADAPTIVE),
         "still.gif", "GIF", size)

    # Stored sideways (480x640) with orientation 6 ("rotate 90 clockwise to
    # view"): upright it is 640x480, the size the labels row reports.
    upright = (640, 480)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    save(_picture(rng, upright).transpose(Image.Transpose.ROTATE_90),
         "sideways-exif6.jpg", "JPEG stored sideways, EXIF orientation 6",
         upright, quality=90, exif=exif.tobytes())

    for name, what, payload in _broken_files(rng):
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(payload)
        written.append(SampleImage(name, what, None))
    return written


def _broken_files(rng: random.Random) -> List[Tuple[str, str, bytes]]:
    """Files that must each become one error row."""
    import io  # pylint: disable=import-outside-toplevel
    whole = io.BytesIO()
    _picture(rng, (640, 480)).save(whole, format="JPEG", quality=90)
    data = whole.getvalue()
    return [
        ("empty.jpg", "zero-byte file", b""),
        ("notes.jpg", "a text file named .jpg",
         b"Shopping list: milk, eggs, bread.\n" * 4),
        ("truncated.jpg", "JPEG cut off after 40% of its bytes",
         data[:len(data) * 2 // 5]),
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.samples",
        description="Write the demo's synthetic sample images to DIR.")
    parser.add_argument("directory", metavar="DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    samples = write_samples(args.directory)
    broken = sum(not sample.decodable for sample in samples)
    _LOGGER.info("wrote %d sample images to %s (%d of them broken on "
                 "purpose, for the errors output)", len(samples),
                 args.directory, broken)
    return 0


if __name__ == "__main__":
    sys.exit(main())
