"""Fuzz the decode step with mutated real images.

    python -m benchmarks.fuzz_decode --n 10000 --seed 1 [--workers 2]

Every case is one seed image (a photo from ../shared/data/photos, or a
decodable non-photo from ../shared/data/edge-cases per its MANIFEST.csv)
with one to three mutations applied: truncation at a random offset, random
bit flips, random byte overwrites, header corruption (bytes within the first
64), image dimensions rewritten in the format's own header (JPEG SOF, PNG
IHDR with or without a fixed CRC, GIF screen / image descriptor, BMP info
header, WebP VP8X/VP8, TIFF IFD entries), duplicated chunks (JPEG segments,
PNG chunks, RIFF chunks, or a byte range) and byte-range splices.

Case `i` of seed `s` is made from `numpy.random.default_rng([s, i])` alone,
so any case can be reproduced on its own (`--case I --dump FILE`). Nothing
is stored: cases are generated where they are decoded.

Each case goes through `transforms.imaging.decode_batch` as a batch of one,
as the job calls it (after `warm_up()`, once per worker), with the job's
default DecodeSettings, and must end as exactly one of
  * a DecodedBatch of one image, float32 (1, 96, 96, 3), finite, in [0, 1];
  * an ErrorRecord with stage "decode", the case's uri, and a non-empty
    error_type and message.

Cases run in worker processes (spawned, never forked) that report each case
before starting it, so the parent knows which case was running when a worker
died (a crash: segfault, abort, OOM kill) or went past the per-image time
limit (a hang: the worker is killed). Either way a fresh worker takes over
the rest of its chunk. Each worker also has an address-space limit, so a
runaway allocation ends as a MemoryError (outcome "memory", a failure)
instead of taking the machine; peak RSS per worker is reported.

tests/test_fuzz.py runs this module's generator and runner; there is no
second copy of either.
"""
from __future__ import annotations

import argparse
import collections
import csv
import glob
import json
import os
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"

#: Every EDGE_EVERY-th case (index % EDGE_EVERY == EDGE_EVERY - 1) mutates an
#: edge-case file; all others mutate a photo.
EDGE_EVERY = 5
#: Edge-case seeds larger than this are left out (a multi-megapixel seed
#: only makes every case slower, not more interesting).
MAX_SEED_PIXELS = 1_100_000
DEFAULT_PER_IMAGE_TIMEOUT_S = 10.0
DEFAULT_CHUNK = 50
DEFAULT_MEMORY_LIMIT_MB = 6144

OUTCOME_TENSOR = "tensor"
OUTCOME_ERROR = "error"
OUTCOME_INVALID = "invalid"   # neither a valid tensor nor an error record
OUTCOME_ESCAPED = "escaped"   # an exception got out of decode_batch
OUTCOME_CRASH = "crash"       # the worker process died
OUTCOME_HANG = "hang"         # past the per-image time limit; worker killed
OUTCOME_MEMORY = "memory"     # an error record, but for a MemoryError: the
#                               case needed more than the worker's limit
FAILURES = (OUTCOME_INVALID, OUTCOME_ESCAPED, OUTCOME_CRASH, OUTCOME_HANG,
            OUTCOME_MEMORY)


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedFile:
    name: str
    kind: str     # "photo" or "edge"
    path: str


def seed_files(data_dir: Path = DEFAULT_DATA_DIR
               ) -> Tuple[List[SeedFile], List[SeedFile]]:
    """(photos, edge seeds), each sorted by name. Edge seeds: the files that
    MANIFEST.csv calls decodable, up to MAX_SEED_PIXELS."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    data_dir = Path(data_dir)
    photos = [SeedFile(os.path.basename(p), "photo", p) for p in
              sorted(glob.glob(str(data_dir / "photos" / "*.JPEG")))]
    edge_dir = data_dir / "edge-cases"
    edges = []
    with open(edge_dir / "MANIFEST.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["expected"] != "decodable":
                continue
            path = edge_dir / row["file"]
            with Image.open(path) as image:
                if image.width * image.height > MAX_SEED_PIXELS:
                    continue
            edges.append(SeedFile(row["file"], "edge", str(path)))
    edges.sort(key=lambda s: s.name)
    if not photos or not edges:
        raise FileNotFoundError(f"no fuzz seeds under {data_dir}")
    return photos, edges


@dataclass
class Seeds:
    photos: List[Tuple[SeedFile, bytes]]
    edges: List[Tuple[SeedFile, bytes]]

    @classmethod
    def load(cls, photos: Sequence[SeedFile], edges: Sequence[SeedFile]
             ) -> "Seeds":
        def read(seed):
            with open(seed.path, "rb") as handle:
                return seed, handle.read()
        return cls([read(s) for s in photos], [read(s) for s in edges])


# ---------------------------------------------------------------------------
# Format detection and structure (best effort: mutations of already-mutated
# data may find no structure, then a generic mutation is used)
# ---------------------------------------------------------------------------

def sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if b"\xff\xd8\xff" in data[:4096]:
        return "JPEG"  # junk before the SOI marker
    return "?"


_JPEG_STANDALONE = frozenset([0x01] + list(range(0xD0, 0xD8)))
_JPEG_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                       0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])


def jpeg_segments(data: bytes) -> List[Tuple[int, int, int]]:
    """(start, end, marker) of each marker segment from SOI up to and
    including the first SOS header (entropy-coded data follows it)."""
    start = data.find(b"\xff\xd8")
    if start < 0:
        return []
    segments = [(start, start + 2, 0xD8)]
    pos = start + 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            segments.append((pos, pos + 2, marker))
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        end = pos + 2 + length
        if length < 2 or end > len(data):
            break
        segments.append((pos, end, marker))
        pos = end
        if marker == 0xDA:
            break
    return segments


def png_chunks(data: bytes) -> List[Tuple[int, int, bytes]]:
    """(start, end, type) of each complete PNG chunk (length+type+data+CRC)."""
    chunks = []
    pos = 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        end = pos + 12 + length
        if end > len(data):
            break
        chunks.append((pos, end, bytes(data[pos + 4:pos + 8])))
        pos = end
    return chunks


def png_fix_crcs(data: bytearray) -> None:
    """Recompute every chunk's CRC, so damage inside chunks gets past
    Pillow's CRC check and reaches the decoder proper."""
    for start, end, _ in png_chunks(data):
        crc = zlib.crc32(bytes(data[start + 4:end - 4])) & 0xFFFFFFFF
        data[end - 4:end] = struct.pack(">I", crc)


def riff_chunks(data: bytes) -> List[Tuple[int, int, bytes]]:
    """(start, end, fourcc) of each RIFF chunk after the WEBP header."""
    chunks = []
    pos = 12
    while pos + 8 <= len(data):
        size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        end = pos + 8 + size + (size & 1)
        if end > len(data):
            break
        chunks.append((pos, end, bytes(data[pos:pos + 4])))
        pos = end
    return chunks


def tiff_entries(data: bytes) -> Tuple[str, List[Tuple[int, int, int]]]:
    """(byte order, [(entry offset, tag, type)]) of the first IFD."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return order, []
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return order, []
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    entries = []
    for k in range(min(count, 64)):
        pos = ifd + 2 + 12 * k
        if pos + 12 > len(data):
            break
        tag, typ = struct.unpack(order + "HH", data[pos:pos + 4])
        entries.append((pos, tag, typ))
    return order, entries


# ---------------------------------------------------------------------------
# Mutations: each takes (bytearray, rng), changes it in place (or returns a
# new one) and returns (data, description)
# ---------------------------------------------------------------------------

_INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFF)
_INTERESTING_16 = (0, 1, 2, 3, 7, 8, 16, 255, 256, 0x7FFF, 0x8000, 0xFFFE,
                   0xFFFF)
_INTERESTING_32 = (0, 1, 2, 0x7FFF, 0xFFFF, 0x10000, 9459, 46341,
                   0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
# 9459² ≈ 89.5 M: just over DEFAULT_MAX_PIXELS; 46341² overflows int32.

Mutation = Callable[[bytearray, np.random.Generator],
                    Tuple[bytearray, str]]


def _pick(rng: np.random.Generator, values: Sequence):
    return values[int(rng.integers(len(values)))]


def _dimension(rng: np.random.Generator, original: int, bits: int) -> int:
    """A replacement image dimension: a boundary value, a multiple of the
    original, or random (masked to `bits`)."""
    roll = rng.random()
    if roll < 0.4:
        value = _pick(rng, _INTERESTING_16 if bits <= 16 else _INTERESTING_32)
    elif roll < 0.7:
        value = original * int(rng.integers(2, 64))
    elif roll < 0.85:
        value = max(original - int(rng.integers(1, 16)), 0)
    else:
        value = int(rng.integers(0, 1 << min(bits, 31)))
    return value & ((1 << bits) - 1)


def truncate(data: bytearray, rng) -> Tuple[bytearray, str]:
    limit = len(data) if rng.random() < 0.75 else min(len(data), 256)
    cut = int(rng.integers(0, max(limit, 1)))
    return data[:cut], f"truncate@{cut}"


def bitflips(data: bytearray, rng) -> Tuple[bytearray, str]:
    if not data:
        return data, "bitflip x0"
    count = int(rng.integers(1, 17))
    for pos, bit in zip(rng.integers(0, len(data), count),
                        rng.integers(0, 8, count)):
        data[int(pos)] ^= 1 << int(bit)
    return data, f"bitflip x{count}"


def random_bytes(data: bytearray, rng) -> Tuple[bytearray, str]:
    if not data:
        return data, "bytes x0"
    count = int(rng.integers(1, 9))
    for pos in rng.integers(0, len(data), count):
        data[int(pos)] = (_pick(rng, _INTERESTING_8) if rng.random() < 0.5
                          else int(rng.integers(0, 256)))
    return data, f"bytes x{count}"


def header(data: bytearray, rng) -> Tuple[bytearray, str]:
    """Overwrite 1-8 consecutive bytes within the first 64."""
    if not data:
        return data, "header x0"
    offset = int(rng.integers(0, min(64, len(data))))
    length = int(rng.integers(1, 9))
    for pos in range(offset, min(offset + length, len(data))):
        data[pos] = (_pick(rng, _INTERESTING_8) if rng.random() < 0.5
                     else int(rng.integers(0, 256)))
    return data, f"header@{offset}+{length}"


def _put(data: bytearray, pos: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= pos and pos + size <= len(data):
        data[pos:pos + size] = struct.pack(fmt, value)


def _get(data: bytes, pos: int, fmt: str) -> int:
    size = struct.calcsize(fmt)
    if 0 <= pos and pos + size <= len(data):
        return struct.unpack(fmt, bytes(data[pos:pos + size]))[0]
    return 0


def _dims_jpeg(data: bytearray, rng) -> Optional[str]:
    sofs = [s for s in jpeg_segments(data) if s[2] in _JPEG_SOF]
    if not sofs:
        return None
    start = sofs[0][0]
    field_name, offset, fmt = _pick(rng, (
        ("height", 5, ">H"), ("width", 7, ">H"), ("height", 5, ">H"),
        ("width", 7, ">H"), ("precision", 4, ">B"), ("components", 9, ">B"),
        ("sampling", 11, ">B")))
    bits = 8 * struct.calcsize(fmt)
    value = _dimension(rng, _get(data, start + offset, fmt), bits)
    _put(data, start + offset, fmt, value)
    return f"SOF.{field_name}={value}"


def _dims_png(data: bytearray, rng) -> Optional[str]:
    if len(data) < 33:
        return None
    field_name, offset, fmt = _pick(rng, (
        ("width", 16, ">I"), ("height", 20, ">I"), ("width", 16, ">I"),
        ("height", 20, ">I"), ("depth", 24, ">B"), ("colortype", 25, ">B"),
        ("interlace", 28, ">B")))
    if fmt == ">B":
        value = int(_pick(rng, (0, 1, 2, 3, 4, 6, 8, 16, 255)))
    else:
        value = _dimension(rng, _get(data, offset, fmt), 32)
    _put(data, offset, fmt, value)
    fixed = rng.random() < 0.7
    if fixed:
        png_fix_crcs(data)
    return f"IHDR.{field_name}={value}{' crc-fixed' if fixed else ''}"


def _dims_gif(data: bytearray, rng) -> Optional[str]:
    offsets = [("screen.width", 6), ("screen.height", 8)]
    flags = _get(data, 10, "<B")
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos < len(data) and data[pos] == 0x21:  # skip extensions
        pos += 2
        while pos < len(data) and data[pos]:
            pos += data[pos] + 1
        pos += 1
    if pos + 10 <= len(data) and data[pos] == 0x2C:
        offsets += [("frame.left", pos + 1), ("frame.top", pos + 3),
                    ("frame.width", pos + 5), ("frame.height", pos + 7)]
    field_name, offset = _pick(rng, offsets)
    value = _dimension(rng, _get(data, offset, "<H"), 16)
    _put(data, offset, "<H", value)
    return f"GIF.{field_name}={value}"


def _dims_bmp(data: bytearray, rng) -> Optional[str]:
    field_name, offset, fmt = _pick(rng, (
        ("width", 18, "<i"), ("height", 22, "<i"), ("width", 18, "<i"),
        ("height", 22, "<i"), ("bpp", 28, "<H"), ("compression", 30, "<I"),
        ("pixel_offset", 10, "<I"), ("colors", 46, "<I")))
    value = _dimension(rng, abs(_get(data, offset, fmt)), 31
                       if fmt == "<i" else 8 * struct.calcsize(fmt))
    if fmt == "<i" and rng.random() < 0.2:
        value = -value  # negative height: top-down rows
    _put(data, offset, fmt, value)
    return f"BMP.{field_name}={value}"


def _dims_webp(data: bytearray, rng) -> Optional[str]:
    for start, _, fourcc in riff_chunks(data):
        body = start + 8
        if fourcc == b"VP8X":
            offset = body + (4 if rng.random() < 0.5 else 7)
            value = _dimension(rng, 0, 24)
            if offset + 3 <= len(data):
                data[offset:offset + 3] = value.to_bytes(3, "little")
            return f"VP8X.canvas@{offset - body}={value}"
        if fourcc == b"VP8 ":
            offset = body + (6 if rng.random() < 0.5 else 8)
            value = _dimension(rng, _get(data, offset, "<H") & 0x3FFF, 16)
            _put(data, offset, "<H", value)
            return f"VP8.dim@{offset - body}={value}"
        if fourcc == b"VP8L":
            value = int(rng.integers(0, 1 << 28))
            _put(data, body + 1, "<I", (_get(data, body + 1, "<I")
                                        & 0xF0000000) | value)
            return f"VP8L.dims={value:#x}"
    return None


_TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 259: "compression",
              262: "photometric", 273: "strip_offsets", 277: "samples",
              278: "rows_per_strip", 279: "strip_bytes", 284: "planar",
              317: "predictor", 322: "tile_width", 323: "tile_length",
              338: "extra_samples", 339: "sample_format"}


def _dims_tiff(data: bytearray, rng) -> Optional[str]:
    order, entries = tiff_entries(data)
    known = [e for e in entries if e[1] in _TIFF_TAGS]
    if not known:
        return None
    pos, tag, typ = _pick(rng, known)
    if rng.random() < 0.15:  # the entry's count instead of its value
        value = _dimension(rng, _get(data, pos + 4, order + "I"), 32)
        _put(data, pos + 4, order + "I", value)
        return f"TIFF.{_TIFF_TAGS[tag]}.count={value}"
    fmt = order + ("H" if typ == 3 else "I")
    value = _dimension(rng, _get(data, pos + 8, fmt),
                       16 if typ == 3 else 32)
    _put(data, pos + 8, fmt, value)
    return f"TIFF.{_TIFF_TAGS[tag]}={value}"


_DIMS = {"JPEG": _dims_jpeg, "PNG": _dims_png, "GIF": _dims_gif,
         "BMP": _dims_bmp, "WEBP": _dims_webp, "TIFF": _dims_tiff}


def dimensions(data: bytearray, rng) -> Tuple[bytearray, str]:
    """Rewrite a size (or layout) field in the format's own header."""
    mutate = _DIMS.get(sniff(data))
    description = mutate(data, rng) if mutate else None
    if description is None:
        return header(data, rng)
    return data, "dims:" + description


def _duplicate(data: bytearray, start: int, end: int, at: int
               ) -> bytearray:
    return data[:at] + data[start:end] + data[at:]


def duplicate_chunk(data: bytearray, rng) -> Tuple[bytearray, str]:
    """Duplicate a structural unit (JPEG segment, PNG/RIFF chunk), or else
    a random byte range, in place or elsewhere."""
    fmt = sniff(data)
    units: List[Tuple[int, int, str]] = []
    if fmt == "JPEG":
        units = [(s, e, f"{m:02X}") for s, e, m in jpeg_segments(data)
                 if m != 0xD8]
    elif fmt == "PNG":
        units = [(s, e, t.decode("latin-1")) for s, e, t in png_chunks(data)]
    elif fmt == "WEBP":
        units = [(s, e, t.decode("latin-1")) for s, e, t in riff_chunks(data)]
    if units and rng.random() < 0.8:
        start, end, name = _pick(rng, units)
        boundaries = sorted({u[0] for u in units} | {u[1] for u in units})
        at = end if rng.random() < 0.6 else int(_pick(rng, boundaries))
        data = _duplicate(data, start, end, at)
        if fmt == "WEBP" and rng.random() < 0.5:
            _put(data, 4, "<I", len(data) - 8)  # keep the RIFF size right
        return data, f"dup:{fmt}.{name}@{at}"
    if len(data) < 2:
        return data + data, "dup:all"
    start = int(rng.integers(0, len(data) - 1))
    end = min(len(data), start + int(rng.integers(1, 4097)))
    at = int(rng.integers(0, len(data) + 1))
    return _duplicate(data, start, end, at), f"dup:[{start}:{end}]@{at}"


def splice(data: bytearray, rng) -> Tuple[bytearray, str]:
    """Delete a byte range, or insert random bytes."""
    pos = int(rng.integers(0, len(data) + 1))
    length = int(rng.integers(1, 257))
    if rng.random() < 0.5 and data:
        return data[:pos] + data[pos + length:], f"delete[{pos}:+{length}]"
    noise = bytes(rng.integers(0, 256, length, dtype=np.uint8))
    return data[:pos] + noise + data[pos:], f"insert@{pos}+{length}"


MUTATIONS: Dict[str, Tuple[Mutation, float]] = {
    "truncate": (truncate, 0.20),
    "bitflip": (bitflips, 0.18),
    "bytes": (random_bytes, 0.10),
    "header": (header, 0.14),
    "dims": (dimensions, 0.18),
    "dup": (duplicate_chunk, 0.14),
    "splice": (splice, 0.06),
}
_NAMES = tuple(MUTATIONS)
_WEIGHTS = np.array([w for _, w in MUTATIONS.values()])
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def mutate(data: bytes, rng: np.random.Generator
           ) -> Tuple[bytes, List[str]]:
    """One to three mutations of `data`; returns (bytes, descriptions)."""
    count = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
    out = bytearray(data)
    descriptions = []
    for _ in range(count):
        name = _NAMES[int(rng.choice(len(_NAMES), p=_WEIGHTS))]
        out, description = MUTATIONS[name][0](out, rng)
        descriptions.append(description)
    return bytes(out), descriptions


@dataclass(frozen=True)
class Case:
    index: int
    seed_name: str
    seed_kind: str
    ops: Tuple[str, ...]
    data: bytes

    @property
    def uri(self) -> str:
        return f"fuzz://{self.index}/{self.seed_name}"


def make_case(seeds: Seeds, seed: int, index: int) -> Case:
    """Case `index` of run `seed`: depends on nothing else."""
    rng = np.random.default_rng([seed, index])
    pool = seeds.edges if index % EDGE_EVERY == EDGE_EVERY - 1 \
        else seeds.photos
    seed_file, original = pool[int(rng.integers(len(pool)))]
    data, ops = mutate(original, rng)
    return Case(index, seed_file.name, seed_file.kind, tuple(ops), data)


# ---------------------------------------------------------------------------
# Checking one case, as the job sees it
# ---------------------------------------------------------------------------

def default_settings():
    """DecodeSettings with the job's defaults (pipeline/options.py)."""
    from pipeline.config import default_decode_settings  # pylint: disable=import-outside-toplevel
    return default_decode_settings()


@dataclass
class CaseResult:
    index: int
    seed_name: str
    seed_kind: str
    ops: Tuple[str, ...]
    size: int
    outcome: str
    error_type: str = ""
    message: str = ""
    seconds: float = 0.0
    maxrss_mb: float = 0.0   # the worker's peak RSS after this case

    def describe(self) -> str:
        return (f"case {self.index} ({self.seed_name}: "
                f"{' + '.join(self.ops)}, {self.size} bytes)")


def check_decoded(decoded, errors: list, uri: str) -> Tuple[str, str, str]:
    """decode_batch's result for a batch of one image →
    (outcome, error_type, message)."""
    # pylint: disable=import-outside-toplevel
    from transforms.errors import STAGE_DECODE, ErrorRecord
    from transforms.imaging import IMAGE_SIZE, DecodedBatch
    if (decoded is None) == (not errors) or len(errors) > 1:
        return OUTCOME_INVALID, "", \
            f"{0 if decoded is None else len(decoded)} images and " \
            f"{len(errors)} errors, expected one of them"
    if errors:
        [record] = errors
        if not isinstance(record, ErrorRecord):
            return OUTCOME_INVALID, "", f"error is {type(record).__name__}"
        problems = []
        if record.stage != STAGE_DECODE:
            problems.append(f"stage {record.stage!r}")
        if record.uri != uri:
            problems.append(f"uri {record.uri!r}")
        if not (isinstance(record.message, str) and record.message.strip()):
            problems.append("empty message")
        if not (isinstance(record.error_type, str) and record.error_type):
            problems.append("empty error_type")
        if problems:
            return OUTCOME_INVALID, str(record.error_type), \
                "error record with " + ", ".join(problems)
        return OUTCOME_ERROR, record.error_type, record.message
    out = decoded
    if not isinstance(out, DecodedBatch):
        return OUTCOME_INVALID, "", f"decoded {type(out).__name__}"
    if len(out) != 1:
        return OUTCOME_INVALID, "", f"{len(out)} images, expected 1"
    pixels = out.pixels
    problems = []
    if not isinstance(pixels, np.ndarray):
        problems.append(f"pixels are {type(pixels).__name__}")
    else:
        if pixels.shape != (1, IMAGE_SIZE, IMAGE_SIZE, 3):
            problems.append(f"shape {pixels.shape}")
        if pixels.dtype != np.float32:
            problems.append(f"dtype {pixels.dtype}")
        if not np.isfinite(pixels).all():
            problems.append("non-finite values")
        elif pixels.size and (pixels.min() < 0 or pixels.max() > 1):
            problems.append(f"values in [{pixels.min()}, {pixels.max()}]")
    if out.uris != (uri,):
        problems.append(f"uris {out.uris!r}")
    if not (out.widths.shape == out.heights.shape == (1,)
            and out.widths[0] > 0 and out.heights[0] > 0):
        problems.append(f"size {out.widths!r}x{out.heights!r}")
    if problems:
        return OUTCOME_INVALID, "", "tensor with " + ", ".join(problems)
    return OUTCOME_TENSOR, "", ""


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------

def _maxrss_mb() -> float:
    import resource  # pylint: disable=import-outside-toplevel
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker_main(conn, photos: List[SeedFile], edges: List[SeedFile],
                 seed: int, log_path: str, memory_limit_mb: int,
                 inject: Dict[int, str]) -> None:  # pragma: no cover - child
    """A worker process: receives chunks of case indices, sends
    ("start", index, seed name, seed kind, ops, size) before each case and
    ("done", CaseResult) after it."""
    import faulthandler  # pylint: disable=import-outside-toplevel
    import resource  # pylint: disable=import-outside-toplevel
    import warnings  # pylint: disable=import-outside-toplevel
    # C decoders (libtiff, libpng, ...) write warnings to fd 2; keep them,
    # and the traceback of a fatal signal, in this worker's log.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log_fd, 2)
    faulthandler.enable()
    warnings.simplefilter("ignore")
    if memory_limit_mb:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from transforms.imaging import (  # pylint: disable=import-outside-toplevel
        ImageBytes, decode_batch, warm_up)
    settings = default_settings()
    warm_up()
    seeds = Seeds.load(photos, edges)
    conn.send(("ready", os.getpid()))
    while True:
        chunk = conn.recv()
        if chunk is None:
            return
        for index in chunk:
            case = make_case(seeds, seed, index)
            conn.send(("start", index, case.seed_name, case.seed_kind,
                       case.ops, len(case.data)))
            action = inject.get(index)
            if action == "crash":
                os.abort()
            elif action == "hang":
                time.sleep(3600)
            started = time.perf_counter()
            try:
                decoded, errors = decode_batch(
                    [ImageBytes(case.uri, case.data)], settings)
                outcome, error_type, message = check_decoded(
                    decoded, errors, case.uri)
            except BaseException as exc:  # pylint: disable=broad-except
                outcome, error_type = OUTCOME_ESCAPED, type(exc).__name__
                message = " ".join(str(exc).split())[:300]
            seconds = time.perf_counter() - started
            if outcome == OUTCOME_ERROR and error_type == "MemoryError":
                outcome = OUTCOME_MEMORY
            conn.send(("done", CaseResult(
                index, case.seed_name, case.seed_kind, case.ops,
                len(case.data), outcome, error_type, message[:300], seconds,
                _maxrss_mb())))


class _Slot:
    """One worker process and what it is doing."""

    def __init__(self, ctx, args, log_path: str):
        parent, child = ctx.Pipe()
        self.conn = parent
        self.log_path = log_path
        self.process = ctx.Process(target=_worker_main, args=(child,) + args,
                                   daemon=True)
        self.process.start()
        child.close()
        self.spawned = time.monotonic()
        self.ready = False
        self.chunk: List[int] = []        # indices not yet done
        self.chunk_started = 0.0
        self.current: Optional[tuple] = None   # the "start" message
        self.current_started = 0.0

    def log_tail(self, n: int = 8000) -> str:  # a whole faulthandler dump, module list included
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - n))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()


@dataclass
class FuzzReport:
    n: int
    seed: int
    workers: int
    seconds: float
    per_image_timeout_s: float
    results: List[CaseResult] = field(default_factory=list)
    worker_logs: Dict[str, str] = field(default_factory=dict)

    def by_outcome(self, outcome: str) -> List[CaseResult]:
        return [r for r in self.results if r.outcome == outcome]

    @property
    def failures(self) -> List[CaseResult]:
        return [r for r in self.results if r.outcome in FAILURES]

    def counts(self) -> Dict[str, int]:
        return dict(collections.Counter(r.outcome for r in self.results))

    def error_types(self) -> Dict[str, int]:
        return dict(collections.Counter(
            r.error_type for r in self.results
            if r.outcome == OUTCOME_ERROR).most_common())

    def slowest(self) -> Optional[CaseResult]:
        timed = [r for r in self.results if r.outcome != OUTCOME_HANG]
        return max(timed, key=lambda r: r.seconds) if timed else None

    def peak_rss(self) -> Optional[CaseResult]:
        return max(self.results, key=lambda r: r.maxrss_mb) \
            if self.results else None

    def lines(self) -> List[str]:
        counts = self.counts()
        out = [f"fuzz: {len(self.results)} of {self.n} cases (seed "
               f"{self.seed}, {self.workers} workers) in {self.seconds:.1f} s"]
        for kind in ("photo", "edge"):
            rows = [r for r in self.results if r.seed_kind == kind]
            kinds = collections.Counter(r.outcome for r in rows)
            out.append(f"  {kind:5s} seeds: {len(rows)} cases "
                       f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
        out.append(f"  tensor  {counts.get(OUTCOME_TENSOR, 0)}")
        out.append(f"  error   {counts.get(OUTCOME_ERROR, 0)}")
        for error_type, count in self.error_types().items():
            out.append(f"    {error_type:28s} {count}")
        out.append("  " + ", ".join(f"{o} {counts.get(o, 0)}"
                                    for o in FAILURES))
        slowest = self.slowest()
        if slowest:
            out.append(f"  slowest image: {slowest.seconds:.3f} s, "
                       f"{slowest.describe()} -> {slowest.outcome}"
                       f"{' ' + slowest.error_type if slowest.error_type else ''}")
            times = np.array([r.seconds for r in self.results
                              if r.outcome != OUTCOME_HANG])
            out.append(f"  per image: median {np.median(times) * 1e3:.1f} ms,"
                       f" p99 {np.percentile(times, 99) * 1e3:.1f} ms "
                       f"(limit {self.per_image_timeout_s:.0f} s)")
        peak = self.peak_rss()
        if peak:
            out.append(f"  peak worker RSS: {peak.maxrss_mb:.0f} MB "
                       f"(reached by {peak.describe()})")
        for failure in self.failures[:20]:
            out.append(f"  {failure.outcome.upper()}: {failure.describe()}"
                       f": {failure.error_type} {failure.message}")
        return out

    def to_json(self) -> dict:
        return {"n": self.n, "seed": self.seed, "workers": self.workers,
                "seconds": self.seconds, "counts": self.counts(),
                "error_types": self.error_types(),
                "slowest": asdict(self.slowest()) if self.slowest() else None,
                "peak_rss": asdict(self.peak_rss()) if self.results else None,
                "failures": [asdict(f) for f in self.failures]}


def run_fuzz(n: int, seed: int, workers: int = 2, *,
             data_dir: Path = DEFAULT_DATA_DIR,
             per_image_timeout_s: float = DEFAULT_PER_IMAGE_TIMEOUT_S,
             chunk_size: int = DEFAULT_CHUNK,
             chunk_timeout_s: Optional[float] = None,
             startup_timeout_s: float = 120.0,
             memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
             log_dir: Optional[str] = None,
             progress: Optional[Callable[[int], None]] = None,
             inject: Optional[Dict[int, str]] = None) -> FuzzReport:
    """Run cases 0..n-1 of `seed` in `workers` spawned processes.

    A case running longer than `per_image_timeout_s` is a hang; a chunk
    running longer than `chunk_timeout_s` (default: its size times the
    per-image limit, at least 60 s) is one too. Either way, and when a worker
    dies, the worker is replaced and the rest of its chunk re-queued.
    `inject` ({index: "crash" | "hang"}) is for testing this runner.
    """
    import multiprocessing  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel
    photos, edges = seed_files(data_dir)
    ctx = multiprocessing.get_context("spawn")
    log_dir = log_dir or tempfile.mkdtemp(prefix="fuzz-decode-")
    chunk_timeout_s = chunk_timeout_s or max(60.0,
                                             chunk_size * per_image_timeout_s)
    pending = collections.deque(
        list(range(start, min(start + chunk_size, n)))
        for start in range(0, n, chunk_size))
    report = FuzzReport(n, seed, workers, 0.0, per_image_timeout_s)
    spawned = [0]

    def spawn() -> _Slot:
        spawned[0] += 1
        log_path = os.path.join(log_dir, f"worker-{spawned[0]}.log")
        return _Slot(ctx, (photos, edges, seed, log_path, memory_limit_mb,
                           dict(inject or {})), log_path)

    def retire(slot: _Slot, outcome: str, why: str) -> None:
        """The worker died or is being killed mid-case."""
        tail = slot.log_tail()
        slot.kill()
        if slot.current is not None:
            _, index, name, kind, ops, size = slot.current
            report.results.append(CaseResult(
                index, name, kind, tuple(ops), size, outcome, "", why,
                time.monotonic() - slot.current_started))
            report.worker_logs[str(index)] = tail
            slot.chunk = [i for i in slot.chunk if i != index]
        if slot.chunk:
            pending.appendleft(slot.chunk)
        elif slot.current is None and not slot.ready:
            raise RuntimeError(f"fuzz worker failed to start ({why}):\n"
                               f"{tail}")

    started = time.monotonic()
    slots = [spawn() for _ in range(max(1, workers))]
    from multiprocessing.connection import wait  # pylint: disable=import-outside-toplevel
    try:
        while pending or any(s.chunk for s in slots):
            for slot in slots:
                if slot.ready and not slot.chunk and pending:
                    slot.chunk = pending.popleft()
                    slot.chunk_started = time.monotonic()
                    slot.current = None
                    slot.conn.send(list(slot.chunk))
            readable = wait([s.conn for s in slots] +
                            [s.process.sentinel for s in slots], timeout=0.5)
            for i, slot in enumerate(slots):
                replace = None
                try:
                    while slot.conn in readable and slot.conn.poll():
                        message = slot.conn.recv()
                        if message[0] == "ready":
                            slot.ready = True
                        elif message[0] == "start":
                            slot.current = message
                            slot.current_started = time.monotonic()
                        elif message[0] == "done":
                            result = message[1]
                            report.results.append(result)
                            slot.chunk.remove(result.index)
                            slot.current = None
                            if progress:
                                progress(len(report.results))
                except (EOFError, OSError):
                    pass  # died: the sentinel says so below
                now = time.monotonic()
                if not slot.process.is_alive():
                    slot.process.join(1)
                    replace = (OUTCOME_CRASH, "worker died (exit code "
                               f"{slot.process.exitcode})")
                elif slot.current is not None and \
                        now - slot.current_started > per_image_timeout_s:
                    replace = (OUTCOME_HANG, "no result within "
                               f"{per_image_timeout_s:g} s")
                elif slot.chunk and now - slot.chunk_started > chunk_timeout_s:
                    replace = (OUTCOME_HANG, f"chunk took over "
                               f"{chunk_timeout_s:g} s")
                elif not slot.ready and now - slot.spawned > startup_timeout_s:
                    replace = ("startup", "worker not ready within "
                               f"{startup_timeout_s:g} s")
                if replace:
                    retire(slot, *replace)
                    slots[i] = spawn()
    finally:
        for slot in slots:
            try:
                slot.conn.send(None)
            except (OSError, ValueError):
                pass
        for slot in slots:
            slot.process.join(5)
            slot.kill()
    report.seconds = time.monotonic() - started
    report.results.sort(key=lambda r: r.index)
    return report


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz_decode",
        description="Fuzz transforms.imaging with mutated real images.")
    parser.add_argument("--n", type=int, default=10_000,
                        help="number of cases (default 10000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int,
                        default=max(1, len(os.sched_getaffinity(0))))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR,
                        help="shared data dir (photos/, edge-cases/)")
    parser.add_argument("--per-image-timeout", type=float,
                        default=DEFAULT_PER_IMAGE_TIMEOUT_S)
    parser.add_argument("--memory-limit-mb", type=int,
                        default=DEFAULT_MEMORY_LIMIT_MB,
                        help="address-space limit per worker (0: none)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--case", type=int,
                        help="only build case N (with --dump) and decode it")
    parser.add_argument("--dump", type=Path,
                        help="with --case: write its bytes to this file")
    args = parser.parse_args(argv)

    if args.case is not None:
        photos, edges = seed_files(args.data)
        case = make_case(Seeds.load(photos, edges), args.seed, args.case)
        print(f"case {case.index}: {case.seed_name}: {' + '.join(case.ops)}"
              f" ({len(case.data)} bytes)")
        if args.dump:
            args.dump.write_bytes(case.data)
            print(f"written to {args.dump}")
        from transforms.imaging import (  # pylint: disable=import-outside-toplevel
            ImageBytes, decode_batch, warm_up)
        settings = default_settings()
        warm_up()
        started = time.perf_counter()
        decoded, errors = decode_batch([ImageBytes(case.uri, case.data)],
                                       settings)
        print(check_decoded(decoded, errors, case.uri),
              f"{time.perf_counter() - started:.3f} s")
        return 0

    last = [0.0]

    def progress(done: int) -> None:
        if time.monotonic() - last[0] > 5 or done == args.n:
            last[0] = time.monotonic()
            sys.stderr.write(f"\r{done}/{args.n} cases")
            sys.stderr.flush()

    report = run_fuzz(args.n, args.seed, args.workers, data_dir=args.data,
                      per_image_timeout_s=args.per_image_timeout,
                      memory_limit_mb=args.memory_limit_mb,
                      progress=progress)
    sys.stderr.write("\n")
    print("\n".join(report.lines()))
    for index, tail in report.worker_logs.items():
        print(f"--- worker log at case {index} ---\n{tail}")
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    return 1 if report.failures or len(report.results) != args.n else 0


if __name__ == "__main__":
    sys.exit(main())
