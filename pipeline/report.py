"""`python -m pipeline report OUTPUT_DIR`: one self-contained HTML page about
a finished labeling run, meant to be kept open while looking at the data.

Reads the files the output's manifest (`_SUCCESS.json`) lists, on any Beam
filesystem (local, gs://, ...), and writes `OUTPUT_DIR/report.html` (or
`--to PATH`) with:

  * counts (images labeled, errors by stage and type) and the run's metadata
    from the manifest (run id, model, backend, options, duration); anything
    the manifest does not hold shows as "not recorded";
  * bar charts of the most frequent top-1 labels and of the top-1 scores;
  * every image's row (up to MAX_TABLE_ROWS) with its top-k guesses, in a
    table that sorts (click a header) and filters (a text box);
  * the least confident images (lowest top-1 score) with thumbnails;
  * near-duplicate groups: images whose embeddings have a cosine similarity
    above `--duplicate_threshold`, over the first DUPLICATE_MAX_ROWS rows;
  * thumbnails of the top-scoring images of the most frequent labels;
  * the error table, sortable and filterable.

An output without a manifest is unfinished (the job is running, or was
stopped before it finished) and is refused unless `--allow_unfinished`, which
reads every `labels-*.parquet` and says on the page that rows may repeat.

Thumbnails are made from the input images at their `uri` and embedded as
data: URIs; an input that cannot be read any more gets a note saying why.
The page loads nothing from anywhere: no external scripts, styles or fonts,
and a Content-Security-Policy that allows only data: images, inline styles
and the one inline script (by hash). URIs and messages come from untrusted
inputs and are HTML-escaped everywhere.
"""
from __future__ import annotations

import argparse
import base64
import collections
import datetime
import hashlib
import html
import io
import json
import logging
import os
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.cli_base import (EXIT_OK, CommandParser, UserError,  # pylint: disable=unused-import
                               require_cloud_credentials, run_subcommand,
                               whole_number)
from pipeline.config import default_decode_settings
from pipeline.options import DEFAULT_MAX_FILE_BYTES
from transforms.errors import one_line

_LOGGER = logging.getLogger("pipeline.report")


REPORT_NAME = "report.html"
DEFAULT_MAX_THUMBNAILS = 48
THUMBNAILS_PER_LABEL = 8
THUMBNAIL_SIZE = 160          # pixels, longest side
TOP_LABELS = 25               # bars in the label histogram
SCORE_BINS = 20               # bins over [0, 1]
MAX_TABLE_ROWS = 5000         # rows of the image table (in uri order)
MAX_ERROR_ROWS = 1000         # rows of the error table shown
LEAST_CONFIDENT = 24          # images in the "least confident" section
DEFAULT_DUPLICATE_THRESHOLD = 0.95
DUPLICATE_MAX_ROWS = 20_000   # embeddings compared, in file order
DUPLICATE_BLOCK_ROWS = 512    # rows per similarity block: 512 x 20,000 floats
MAX_DUPLICATE_GROUPS = 40     # groups shown
DUPLICATE_THUMBNAILS = 8      # thumbnails shown per group
STAGES = ("read", "decode", "classify")
NOT_RECORDED = "not recorded"
_LABEL_COLUMNS = ["uri", "label", "score", "top_k_labels", "top_k_scores",
                  "width", "height", "format", "model", "backend"]
_ERROR_COLUMNS = ["uri", "stage", "error_type", "message"]
_THUMBNAIL_THREADS = 8


class ReportError(UserError):
    """A problem the user can fix (missing or unreadable results); one line."""


@dataclass
class Results:
    """What the report is made of: the small columns of the finished output
    as Arrow tables (never the embeddings), and its manifest."""
    output_dir: str
    labels: Any                       # pyarrow.Table of _LABEL_COLUMNS
    errors: Any                       # pyarrow.Table of _ERROR_COLUMNS
    label_files: List[str] = field(default_factory=list)
    error_files: List[str] = field(default_factory=list)
    manifest: Optional[Dict[str, Any]] = None   # None: read unfinished


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def _match(pattern: str) -> List[str]:
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    try:
        return sorted(m.path for m in
                      FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # pylint: disable=broad-except
        return []  # no such directory: reported as "no results" below


def _open(path: str):
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    return FileSystems.open(path, compression_type=CompressionTypes
                            .UNCOMPRESSED)


def _read_table(path: str, columns: Sequence[str], schema):
    """Some columns of one Parquet file, as `schema` (columns an older
    output lacks are null)."""
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    try:
        with _open(path) as handle:
            parquet = pq.ParquetFile(handle, pre_buffer=False)
            present = [c for c in columns
                       if c in parquet.schema_arrow.names]
            # One thread: see transforms.schema.read_columns.
            table = parquet.read(columns=present, use_threads=False)
    except Exception as exc:  # pylint: disable=broad-except
        raise ReportError(f"cannot read {path}: {one_line(exc)}") from exc
    arrays = [table.column(c).cast(schema.field(c).type) if c in present
              else pa.nulls(table.num_rows, schema.field(c).type)
              for c in columns]
    return pa.Table.from_arrays(arrays, schema=schema)


def _schema(columns: Sequence[str], full):
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    return pa.schema([full.field(c).with_nullable(True) for c in columns])


def output_files(output_dir: str, allow_unfinished: bool = False
                 ) -> Tuple[List[str], List[str], Optional[Dict[str, Any]]]:
    """(label files, error files, manifest) of an output directory: the
    files its manifest lists, or with `allow_unfinished` and no manifest,
    every labels-*/errors-*.parquet (manifest None)."""
    from transforms.manifest import (SUCCESS_FILE, OutputNotFinished,  # pylint: disable=import-outside-toplevel
                                     committed_files, read_manifest)
    root = output_dir.rstrip("/") or "/"
    try:
        manifest = read_manifest(root)
    except Exception as exc:  # pylint: disable=broad-except
        raise ReportError(one_line(exc)) from exc
    if manifest is not None:
        try:
            return (committed_files(root, "labels", manifest),
                    committed_files(root, "errors", manifest), manifest)
        except (KeyError, TypeError, OutputNotFinished) as exc:
            raise ReportError(f"{posixpath.join(root, SUCCESS_FILE)} lists "
                              f"no files: {one_line(exc)}") from exc
    label_files = _match(posixpath.join(root, "labels-*.parquet"))
    error_files = _match(posixpath.join(root, "errors-*.parquet"))
    if not label_files and not error_files:
        raise ReportError(f"no {SUCCESS_FILE}, labels-*.parquet or "
                          f"errors-*.parquet under {output_dir}: is it the "
                          "--output of a labeling run?")
    if not allow_unfinished:
        raise ReportError(
            f"{output_dir} is not finished (no {SUCCESS_FILE}): its job is "
            "still running or was stopped; finish it by running the same "
            "command again with --resume, or pass --allow_unfinished to "
            "report on the files written so far")
    return label_files, error_files, None


def read_results(output_dir: str, allow_unfinished: bool = False) -> Results:
    """The small columns of a finished output (see `output_files`)."""
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    from transforms.schema import ERRORS_SCHEMA, LABELS_SCHEMA  # pylint: disable=import-outside-toplevel
    label_files, error_files, manifest = output_files(output_dir,
                                                      allow_unfinished)
    label_schema = _schema(_LABEL_COLUMNS, LABELS_SCHEMA)
    error_schema = _schema(_ERROR_COLUMNS, ERRORS_SCHEMA)
    labels = pa.concat_tables(
        [label_schema.empty_table()] +
        [_read_table(p, _LABEL_COLUMNS, label_schema) for p in label_files])
    errors = pa.concat_tables(
        [error_schema.empty_table()] +
        [_read_table(p, _ERROR_COLUMNS, error_schema) for p in error_files])
    return Results(output_dir, labels, errors, label_files, error_files,
                   manifest)


def read_embeddings(label_files: Sequence[str],
                    max_rows: int = DUPLICATE_MAX_ROWS
                    ) -> Tuple[List[str], np.ndarray, int]:
    """(uris, float32 embeddings, rows with an embedding in all files):
    the first `max_rows` rows that have one, in file order, read in record
    batches so that only those rows are ever held."""
    import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    uris: List[str] = []
    vectors: List[np.ndarray] = []
    kept, total = 0, 0
    for path in label_files:
        try:
            with _open(path) as handle:
                parquet = pq.ParquetFile(handle, pre_buffer=False)
                if "embedding" not in parquet.schema_arrow.names:
                    continue
                for batch in parquet.iter_batches(
                        batch_size=1024, columns=["uri", "embedding"],
                        use_threads=False):
                    valid = pc.is_valid(batch.column("embedding"))
                    batch = batch.filter(valid)
                    total += batch.num_rows
                    take = min(batch.num_rows, max_rows - kept)
                    if take <= 0:
                        continue  # counted, not held
                    batch = batch.slice(0, take)
                    flat = batch.column("embedding").flatten().to_numpy(
                        zero_copy_only=False)
                    if take and flat.size % take:
                        raise ValueError("embeddings of different lengths")
                    vectors.append(flat.astype(np.float32, copy=False)
                                   .reshape(take, -1))
                    uris += batch.column("uri").to_pylist()
                    kept += take
        except ReportError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise ReportError(f"cannot read embeddings from {path}: "
                              f"{one_line(exc)}") from exc
    if not vectors:
        return [], np.zeros((0, 0), np.float32), total
    if len({v.shape[1] for v in vectors}) > 1:
        raise ReportError("embeddings of different lengths in one output")
    return uris, np.concatenate(vectors), total


# ---------------------------------------------------------------------------
# Summaries (plain functions)
# ---------------------------------------------------------------------------

def _value_counts(column) -> Dict[str, int]:
    import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
    return {str(item["values"]): int(item["counts"])
            for item in pc.value_counts(column).to_pylist()}


def _distinct(column) -> List[str]:
    import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
    return sorted(str(v) for v in pc.unique(column).to_pylist()
                  if v is not None)


def label_counts(labels) -> List[Tuple[str, int]]:
    """(label, images) by count descending, then label, from an Arrow table
    with a "label" column."""
    counts = _value_counts(labels.column("label"))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def score_histogram(scores: Sequence[float], bins: int = SCORE_BINS
                    ) -> List[int]:
    """Counts of scores in `bins` equal bins over [0, 1] (1.0 in the last)."""
    values = np.asarray(scores, dtype=np.float64)
    index = np.clip((values * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(index, minlength=bins).tolist()


def _rows(table, order: str = "ascending", by: str = "score",
          limit: Optional[int] = None) -> List[Dict[str, Any]]:
    import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
    keys = [(by, order)] + ([("uri", "ascending")] if by != "uri" else [])
    indices = pc.sort_indices(table, sort_keys=keys)  # nulls last
    if limit is not None:
        indices = indices[:limit]
    return table.take(indices).to_pylist()


def thumbnail_groups(labels, max_thumbnails: int,
                     per_label: int = THUMBNAILS_PER_LABEL
                     ) -> List[Tuple[str, int, List[Dict[str, Any]]]]:
    """(label, images, rows to show) for the most frequent labels: up to
    `per_label` top-scoring rows each, `max_thumbnails` rows in all."""
    import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
    groups, left = [], max_thumbnails
    for label, count in label_counts(labels):
        if left <= 0:
            break
        subset = labels.filter(pc.equal(labels.column("label"), label))
        shown = _rows(subset, "descending", limit=min(per_label, left))
        groups.append((label, count, shown))
        left -= len(shown)
    return groups


def least_confident(labels, n: int = LEAST_CONFIDENT
                    ) -> List[Dict[str, Any]]:
    """The `n` rows with the lowest top-1 score (ties by uri)."""
    return _rows(labels, "ascending", limit=n) if n > 0 else []


def table_rows(labels, n: int = MAX_TABLE_ROWS) -> List[Dict[str, Any]]:
    """The first `n` rows in uri order."""
    return _rows(labels, "ascending", by="uri", limit=n)


def _roots(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    roots = parent[nodes]
    while True:
        up = parent[roots]
        if np.array_equal(up, roots):
            break
        roots = up
    parent[nodes] = roots  # path compression
    return roots


def near_duplicate_groups(embeddings: np.ndarray, threshold: float,
                          block_rows: int = DUPLICATE_BLOCK_ROWS
                          ) -> List[List[int]]:
    """Groups (row indices, ascending; groups largest first) of rows linked
    by a cosine similarity >= threshold, directly or through other rows.

    Similarities are computed `block_rows` rows at a time against the rows
    after them, so memory is block_rows x rows floats, not rows x rows.
    Rows with a zero vector are never grouped."""
    rows = embeddings.shape[0]
    if rows < 2:
        return []
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = np.divide(embeddings, norms, out=np.zeros_like(embeddings,
                                                          np.float32),
                     where=norms > 0).astype(np.float32, copy=False)
    parent = np.arange(rows)
    for start in range(0, rows, block_rows):
        stop = min(rows, start + block_rows)
        similar = unit[start:stop] @ unit[start:].T >= threshold
        for offset in range(stop - start):
            # Only the rows after this one: each pair once.
            linked = np.flatnonzero(similar[offset, offset + 1:]) + \
                start + offset + 1
            if linked.size:
                roots = _roots(parent, np.append(linked, start + offset))
                parent[roots] = roots.min()
    roots = _roots(parent, np.arange(rows))
    members: Dict[int, List[int]] = collections.defaultdict(list)
    for index, root in enumerate(roots.tolist()):
        members[root].append(index)
    groups = [group for group in members.values() if len(group) > 1]
    return sorted(groups, key=lambda group: (-len(group), group[0]))


@dataclass
class Duplicates:
    """Near-duplicate groups for the page."""
    threshold: float
    compared: int                     # rows compared
    with_embedding: int               # rows that have an embedding
    groups: List[List[Tuple[str, float]]]   # (uri, similarity to first)


def find_duplicates(label_files: Sequence[str], threshold: float,
                    max_rows: int = DUPLICATE_MAX_ROWS) -> Duplicates:
    """Near-duplicate groups among the first `max_rows` embeddings."""
    uris, vectors, total = read_embeddings(label_files, max_rows)
    groups = near_duplicate_groups(vectors, threshold)
    shown = []
    for group in groups:
        first = vectors[group[0]]
        sims = vectors[group] @ first / np.maximum(
            np.linalg.norm(vectors[group], axis=1) * np.linalg.norm(first),
            1e-12)
        shown.append([(uris[i], float(s)) for i, s in zip(group, sims)])
    return Duplicates(threshold, len(uris), total, shown)


# ---------------------------------------------------------------------------
# Thumbnails
# ---------------------------------------------------------------------------

def make_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> str:
    """Image bytes → `data:image/jpeg;base64,...` of at most size×size,
    upright, alpha over white. Raises on anything Pillow cannot decode, on
    formats outside the job's default list and on images over the job's
    default pixel limit (checked before decoding, as the job does)."""
    from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
    from transforms.imaging import (check_pixel_limit,  # pylint: disable=import-outside-toplevel
                                    png_header_size)
    settings = default_decode_settings()
    # Pillow's APNG reader allocates a whole frame inside Image.open, so the
    # PNG header size is checked first (as the job's decoder does).
    check_pixel_limit(*(png_header_size(data) or (0, 0)), settings)
    with Image.open(io.BytesIO(data),
                    formats=settings.allowed_formats) as opened:
        check_pixel_limit(opened.width, opened.height, settings)
        if opened.format == "JPEG":
            opened.draft("RGB", (2 * size, 2 * size))  # DCT scaling: fast
        try:
            image = ImageOps.exif_transpose(opened)
        except Exception:  # pylint: disable=broad-except
            image = opened  # unreadable EXIF: show it as stored
        if image.mode in ("RGBA", "LA", "PA") or \
                "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, "white")
            image.alpha_composite(rgba)
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(
        buffer.getvalue()).decode("ascii")


def missing_reason(uri: str, exc: BaseException) -> str:
    """One line saying why an input could not be shown."""
    if isinstance(exc, FileNotFoundError):
        note = "file not found"
        if "://" not in uri and not os.path.isabs(uri):
            note += (f" (a relative path, looked up from {os.getcwd()}; "
                     "run the report from where the job ran)")
        return note
    return f"{type(exc).__name__}: {one_line(exc)}"


def _thumbnail_or_reason(uri: str, read: Callable[[str, int], bytes]
                         ) -> Tuple[Optional[str], str]:
    from transforms.imaging.notes import collecting  # pylint: disable=import-outside-toplevel
    with collecting() as heard:  # decoders' warnings: the debug log
        try:
            return make_thumbnail(read(uri, DEFAULT_MAX_FILE_BYTES)), ""
        except Exception as exc:  # pylint: disable=broad-except
            _LOGGER.debug("no thumbnail for %s: %s", uri, one_line(exc))
            return None, missing_reason(uri, exc)
        finally:
            if heard:
                _LOGGER.debug("decoder messages for %s: %s", uri,
                              "; ".join(heard))


def make_thumbnails(uris: Sequence[str],
                    read: Optional[Callable[[str, int], bytes]] = None
                    ) -> Dict[str, Tuple[Optional[str], str]]:
    """uri → (data URI, "") or (None, why not), read in parallel."""
    if read is None:
        from transforms.read import read_file_bytes  # pylint: disable=import-outside-toplevel
        read = read_file_bytes
    unique = list(dict.fromkeys(uris))
    from transforms.imaging import warm_up  # pylint: disable=import-outside-toplevel
    warm_up()  # decoder messages to the debug log, not the console
    with ThreadPoolExecutor(_THUMBNAIL_THREADS) as pool:
        made = pool.map(lambda uri: _thumbnail_or_reason(uri, read), unique)
        thumbnails = dict(zip(unique, made))
    missing = [(uri, why) for uri, (src, why) in thumbnails.items()
               if src is None]
    if missing:
        _LOGGER.warning("%d of %d images have no thumbnail (the page notes "
                        "each), e.g. %s: %s", len(missing), len(unique),
                        *missing[0])
    return thumbnails


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------

_STYLE = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --soft: #f6f8fa;
  --accent: #2f6fb5; --warn-bg: #fff8c5; --warn-line: #d4a72c; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  margin: 0; color: var(--ink); background: #fff; }
header.top { position: sticky; top: 0; z-index: 5; background: #fff;
  border-bottom: 1px solid var(--line); padding: 8px 20px; display: flex;
  flex-wrap: wrap; align-items: baseline; gap: 4px 18px; }
header.top h1 { font-size: 17px; margin: 0; }
header.top .path { font-family: ui-monospace, monospace; font-size: 13px;
  overflow-wrap: anywhere; }
header.top nav { margin-left: auto; display: flex; flex-wrap: wrap;
  gap: 2px 12px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
main { padding: 0 20px 40px; }
section { margin-top: 22px; scroll-margin-top: 56px; }
h2 { font-size: 16px; margin: 0 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h2 .muted, h3 .muted { font-weight: normal; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.warning { background: var(--warn-bg); border: 1px solid var(--warn-line);
  border-radius: 6px; padding: 8px 12px; margin: 12px 0 0; }
.muted { color: var(--muted); }
code, .mono { font-family: ui-monospace, monospace; font-size: 12.5px; }
.overview { display: grid; gap: 0 28px;
  grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); }
.overview > section { min-width: 0; }
table { border-collapse: collapse; }
td, th { padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
table.facts th { background: none; color: var(--muted); font-weight: normal;
  white-space: nowrap; }
table.facts td { overflow-wrap: anywhere; }
.not-recorded { color: var(--muted); font-style: italic; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
table.histogram { width: 100%; }
table.histogram td:first-child { width: 40%; overflow-wrap: anywhere; }
table.histogram td:last-child { width: 45%; }
.bar { background: var(--accent); height: 12px; min-width: 1px;
  margin-top: 3px; border-radius: 2px; }
svg.scores { width: 100%; max-width: 560px; height: auto; }
svg text { font: 10px system-ui, sans-serif; fill: #333; }
.tools { display: flex; align-items: center; gap: 12px; margin: 6px 0; }
.tools input { font: inherit; padding: 4px 8px; width: 360px;
  max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
.scroll { max-height: 70vh; overflow: auto; border: 1px solid var(--line);
  border-radius: 6px; }
table.data { width: 100%; table-layout: fixed; font-size: 13px; }
table.data thead th { position: sticky; top: 0; z-index: 1;
  border-bottom: 1px solid var(--line); }
table.data tbody tr:nth-child(even) { background: #fafbfc; }
table.data tbody tr:hover { background: #eef4fb; }
table.data td { overflow-wrap: break-word; }
table.data td.uri { overflow-wrap: anywhere; font-family: ui-monospace,
  monospace; font-size: 12px; }
td.uri .dir { color: var(--muted); }
th button { all: unset; cursor: pointer; display: block; width: 100%; }
th button:focus-visible { outline: 2px solid var(--accent); }
th[aria-sort] button::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
.guess { display: inline-block; margin: 0 10px 0 0; white-space: nowrap; }
.guess .s { color: var(--muted); font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 160px; }
figure img, .placeholder { width: 160px; height: 160px; object-fit: contain;
  background: var(--soft); display: block; border-radius: 4px; }
.placeholder { display: flex; align-items: center; justify-content: center;
  color: var(--muted); text-align: center; font-size: 12px; padding: 8px;
  border: 1px dashed var(--line); overflow-wrap: anywhere; }
figcaption { font-size: 11.5px; color: #444; overflow-wrap: anywhere;
  margin-top: 3px; }
figcaption ol { margin: 2px 0 0; padding-left: 18px; }
.groups { display: flex; flex-wrap: wrap; gap: 10px 28px;
  align-items: flex-start; }
.dup-group { border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 10px; }
.dup-group h3, .label-group h3 { margin: 0 0 6px; }
.label-group { max-width: 100%; }
"""

# Sorting and filtering for every <table class="data">, and, once the page
# has loaded (the load event waits for every <img>), <body> attributes with
# how many images there are and how many decoded (naturalWidth > 0): for
# tests, and for anyone checking a page saved from a browser.
_SCRIPT = """
(function () {
  "use strict";
  var collator = new Intl.Collator(undefined, {numeric: true,
                                               sensitivity: "base"});
  function key(row, index, numeric) {
    var cell = row.cells[index];
    var text = cell ? (cell.getAttribute("data-sort") || cell.textContent)
                    : "";
    if (!numeric) { return text; }
    var value = parseFloat(text);
    return isNaN(value) ? -Infinity : value;
  }
  function sortTable(table, index) {
    var header = table.tHead.rows[0].cells[index];
    var numeric = header.getAttribute("data-type") === "num";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.map.call(body.rows, function (row) {
      return [key(row, index, numeric), row];
    });
    rows.sort(function (a, b) {
      var order = numeric ? a[0] - b[0] : collator.compare(a[0], b[0]);
      return ascending ? order : -order;
    });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (pair) { fragment.appendChild(pair[1]); });
    body.appendChild(fragment);
  }
  function filterTable(table, input, counter) {
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i];
      if (row.searchText === undefined) {
        row.searchText = row.textContent.toLowerCase();
      }
      var match = terms.every(function (t) {
        return row.searchText.indexOf(t) >= 0;
      });
      row.hidden = !match;
      if (match) { shown++; }
    }
    counter.textContent = terms.length ?
      shown + " of " + rows.length + " rows match" : rows.length + " rows";
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.data"),
    function (table) {
      table.tHead.addEventListener("click", function (event) {
        var header = event.target.closest("th");
        if (header && header.querySelector("button")) {
          sortTable(table, header.cellIndex);
        }
      });
      var input = document.querySelector(
        'input[data-filter="' + table.id + '"]');
      var counter = document.querySelector(
        '[data-counter="' + table.id + '"]');
      if (input && counter) {
        input.addEventListener("input", function () {
          filterTable(table, input, counter);
        });
      }
    });
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var decoded = images.filter(function (img) {
      return img.complete && img.naturalWidth > 0;
    }).length;
    document.body.setAttribute("data-images-total", String(images.length));
    document.body.setAttribute("data-images-decoded", String(decoded));
    document.body.setAttribute("data-images-ready", "1");
  });
})();
"""


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _uri_html(uri: object) -> str:
    """An escaped URI that wraps after slashes (a <wbr> after each), its
    directory muted so that the file names stand out."""
    directory, slash, name = str(uri).rpartition("/")
    if not slash:
        return _esc(name)
    parts = "/<wbr>".join(_esc(part) for part in directory.split("/"))
    return f'<span class="dir">{parts}/</span><wbr>{_esc(name)}'


def _score(value: object) -> str:
    return "" if value is None else f"{float(value):.3f}"


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest())
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest.decode()}'; base-uri 'none'; "
            "form-action 'none'")


def _not_recorded() -> str:
    return f'<span class="not-recorded">{NOT_RECORDED}</span>'


def _fact(value: object) -> str:
    if value is None or value == "":
        return _not_recorded()
    return _esc(value)


def _data_table(table_id: str, columns: Sequence[Tuple[str, str, str]],
                rows: Sequence[str], caption: str) -> str:
    """A sortable, filterable table. columns: (title, "num"|"text", width);
    rows: <tr> markup."""
    heads = "".join(
        f'<th class="{kind}" data-type="{kind}"><button type="button">'
        f"{_esc(title)}</button></th>" for title, kind, _ in columns)
    cols = "".join(f'<col style="width: {width}">' for _, _, width in columns)
    return (f'<div class="tools"><input type="search" '
            f'data-filter="{table_id}" placeholder="filter: words to match '
            f'in any column" aria-label="filter {_esc(caption)}">'
            f'<span class="muted" data-counter="{table_id}">'
            f"{len(rows):,} rows</span><span class=\"muted\">click a column "
            "header to sort</span></div>"
            f'<div class="scroll"><table class="data" id="{table_id}">'
            f"<colgroup>{cols}</colgroup><thead><tr>{heads}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _duration(started: object, finished: object) -> Optional[str]:
    try:
        start = datetime.datetime.fromisoformat(str(started))
        end = datetime.datetime.fromisoformat(str(finished))
        seconds = (end - start).total_seconds()
    except (TypeError, ValueError):
        return None
    if seconds < 0:
        return None
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes} min {secs:.0f} s"
    return f"{minutes} min {secs:.1f} s" if minutes else f"{secs:.1f} s"


def _counts_section(results: Results) -> str:
    errors = results.errors
    by_stage = _value_counts(errors.column("stage"))
    stages = list(STAGES) + sorted(set(by_stage) - set(STAGES))
    rows = [("images", results.labels.num_rows + errors.num_rows),
            ("labeled", results.labels.num_rows),
            ("errors", errors.num_rows)]
    rows += [(f"errors at {stage}", by_stage.get(stage, 0))
             for stage in stages]
    parts = ['<section id="counts"><h2>Counts</h2><table class="facts">']
    parts += [f'<tr><th>{_esc(name)}</th><td class="num" '
              f'data-count="{_esc(name)}">{n:,}</td></tr>' for name, n in rows]
    parts.append("</table>")
    by_type = collections.Counter(
        (str(stage), str(kind)) for stage, kind in zip(
            errors.column("stage").to_pylist(),
            errors.column("error_type").to_pylist()))
    if by_type:
        parts.append('<h3>Errors by type</h3><table class="facts">')
        parts += [f"<tr><th>{_esc(stage)}/{_esc(kind)}</th>"
                  f'<td class="num">{n:,}</td></tr>'
                  for (stage, kind), n in sorted(
                      by_type.items(), key=lambda item: (-item[1], item[0]))]
        parts.append("</table>")
    parts.append("</section>")
    return "".join(parts)


def _run_section(results: Results) -> str:
    manifest = results.manifest or {}
    labels = results.labels
    model = (manifest.get("model") or
             ", ".join(_distinct(labels.column("model"))) or None)
    backend = (manifest.get("backend") or
               ", ".join(_distinct(labels.column("backend"))) or None)
    facts = [
        ("run id", _fact(manifest.get("run_id"))),
        ("model", f"<code>{_esc(model)}</code>" if model
         else _not_recorded()),
        ("backend", _fact(backend)),
        ("started", _fact(manifest.get("started_at"))),
        ("finished", _fact(manifest.get("finished_at"))),
        ("duration", _fact(_duration(manifest.get("started_at"),
                                     manifest.get("finished_at")))),
    ]
    if "resumed" in manifest:
        facts.append(("resumed", _esc("yes" if manifest["resumed"]
                                      else "no")))
    facts.append(("files", _esc(
        f"{_plural(len(results.label_files), 'labels file')}, "
        f"{_plural(len(results.error_files), 'errors file')}")))
    parts = ['<section id="run"><h2>Run</h2><table class="facts">']
    parts += [f'<tr><th>{name}</th><td data-fact="{name}">{value}</td></tr>'
              for name, value in facts]
    parts.append("</table>")
    options = manifest.get("options")
    if isinstance(options, dict) and options:
        parts.append(f"<details><summary>{len(options)} options</summary>"
                     '<table class="facts" id="options">')
        parts += [f"<tr><th>{_esc(name)}</th><td class=\"mono\">"
                  f"{_esc(json.dumps(value))}</td></tr>"
                  for name, value in sorted(options.items())]
        parts.append("</table></details>")
    else:
        parts.append(f'<p data-fact="options">options: {_not_recorded()}'
                     "</p>")
    parts.append("</section>")
    return "".join(parts)


def _empty(parts: List[str]) -> str:
    """A section with nothing to show: its heading and a note."""
    return "".join(parts) + '<p class="muted">no labeled images</p></section>'


def _labels_section(labels) -> str:
    counts = label_counts(labels)
    parts = ['<section id="labels"><h2>Top-1 labels</h2>']
    if not counts:
        return _empty(parts)
    top = counts[:TOP_LABELS]
    most = top[0][1]
    parts.append(f'<p class="muted">{_plural(len(counts), "distinct label")}'
                 f" over {_plural(labels.num_rows, 'image')}</p>"
                 '<table class="histogram">')
    for label, n in top:
        width = 100.0 * n / most
        parts.append(
            f'<tr data-label="{_esc(label)}"><td>{_esc(label)}</td>'
            f'<td class="num">{n:,}</td><td><div class="bar" '
            f'style="width: {width:.1f}%"></div></td></tr>')
    parts.append("</table>")
    rest = counts[TOP_LABELS:]
    if rest:
        parts.append(f'<p class="muted">and {len(rest):,} more labels with '
                     f"{sum(n for _, n in rest):,} images</p>")
    parts.append("</section>")
    return "".join(parts)


def _scores_section(labels) -> str:
    import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
    scores = np.sort(pc.drop_null(labels.column("score")).to_numpy()
                     .astype(np.float64))
    parts = ['<section id="scores"><h2>Top-1 scores</h2>']
    if not scores.size:
        return _empty(parts)
    counts = score_histogram(scores)
    median = scores[len(scores) // 2]
    parts.append(f'<p class="muted">min {scores[0]:.3f}, median '
                 f"{median:.3f}, max {scores[-1]:.3f}</p>")
    width, height, left, bottom = 390, 150, 44, 22  # viewBox units
    bar_w = (width - left) / len(counts)
    most = max(counts) or 1
    svg = [f'<svg class="scores" xmlns="http://www.w3.org/2000/svg" '
           f'viewBox="0 0 {width + 20} {height + bottom + 16}" role="img" '
           'aria-label="histogram of top-1 scores">']
    for i, n in enumerate(counts):
        h = (height - 10) * n / most
        low, high = i / len(counts), (i + 1) / len(counts)
        svg.append(
            f'<rect class="score-bin" data-count="{n}" '
            f'x="{left + i * bar_w + 1:.1f}" y="{height - h:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#2f6fb5">'
            f"<title>{low:.2f}-{high:.2f}: {n}</title></rect>")
    svg.append(f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" '
               'stroke="#333"/>')
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * (width - left)
        svg.append(f'<text x="{x:.1f}" y="{height + 16}" '
                   f'text-anchor="middle">{tick:.2f}</text>')
    svg.append(f'<text x="{left - 6}" y="12" text-anchor="end">{most:,}</text>'
               f'<text x="{left - 6}" y="{height}" text-anchor="end">0</text>'
               f'<text x="{(left + width) / 2:.0f}" y="{height + bottom + 12}"'
               ' text-anchor="middle">top-1 score (bins of '
               f'{1 / len(counts):.2f}); bar height: images</text></svg>')
    parts.append("".join(svg) + "</section>")
    return "".join(parts)


def _guesses(row: Dict[str, Any], skip_first: bool = True) -> str:
    labels = list(row.get("top_k_labels") or [])
    scores = list(row.get("top_k_scores") or [])
    pairs = list(zip(labels, scores))[1 if skip_first else 0:]
    return "".join(f'<span class="guess">{_esc(label)} <span class="s">'
                   f"{_score(score)}</span></span>" for label, score in pairs)


def _images_section(labels, rows: Sequence[Dict[str, Any]]) -> str:
    parts = ['<section id="images"><h2>Images <span class="muted">'
             "(top-1 label, score, the margin over the second guess, and "
             "the other top-k guesses)</span></h2>"]
    if not rows:
        return _empty(parts)
    if labels.num_rows > len(rows):
        parts.append(f'<p class="warning">The table holds the first '
                     f"{len(rows):,} of {labels.num_rows:,} images in uri "
                     "order; sorting and filtering apply to those. Query "
                     "the labels Parquet files for all.</p>")
    markup = []
    for row in rows:
        scores = list(row.get("top_k_scores") or [])
        margin = (float(scores[0]) - float(scores[1])
                  if len(scores) > 1 else None)
        size = (f"{row['width']}×{row['height']}"
                if row.get("width") is not None else "")
        pixels = (int(row["width"]) * int(row["height"])
                  if row.get("width") is not None else 0)
        markup.append(
            f'<tr><td class="uri">{_uri_html(row["uri"])}</td>'
            f"<td>{_esc(row['label'])}</td>"
            f'<td class="num">{_score(row["score"])}</td>'
            f'<td class="num">{_score(margin)}</td>'
            f"<td>{_guesses(row)}</td>"
            f'<td class="num" data-sort="{pixels}">{size}</td>'
            f"<td>{_esc(row.get('format'))}</td></tr>")
    parts.append(_data_table(
        "images-table",
        [("uri", "text", "34%"), ("label", "text", "13%"),
         ("score", "num", "6%"), ("margin", "num", "6%"),
         ("other guesses", "text", "27%"), ("size", "num", "8%"),
         ("format", "text", "6%")], markup, "images"))
    parts.append("</section>")
    return "".join(parts)


def _figure(uri: str, thumbnails, caption: str, thumbnails_on: bool) -> str:
    src, reason = thumbnails.get(uri, (None, "thumbnails are turned off"
                                       if not thumbnails_on else
                                       "not loaded"))
    if src:
        picture = f'<img src="{src}" alt="{_esc(uri)}" title="{_esc(uri)}">'
    else:
        picture = (f'<div class="placeholder" title="{_esc(uri)}">'
                   f"{_esc(reason)}</div>")
    return (f'<figure data-uri="{_esc(uri)}">{picture}<figcaption>'
            f"{caption}</figcaption></figure>")


def _least_confident_section(rows, thumbnails, thumbnails_on) -> str:
    parts = ['<section id="least-confident"><h2>Least confident '
             '<span class="muted">(lowest top-1 scores, with every top-k '
             "guess)</span></h2>"]
    if not rows:
        return _empty(parts)
    parts.append('<div class="grid">')
    for row in rows:
        guesses = "".join(
            f"<li>{_esc(label)} <span class=\"muted\">{_score(score)}</span>"
            "</li>" for label, score in zip(row.get("top_k_labels") or [],
                                           row.get("top_k_scores") or []))
        caption = (f"{_esc(posixpath.basename(str(row['uri'])))}"
                   f"<ol>{guesses}</ol>")
        parts.append(_figure(str(row["uri"]), thumbnails, caption,
                             thumbnails_on))
    parts.append("</div></section>")
    return "".join(parts)


def _duplicates_section(duplicates: Optional[Duplicates], thumbnails,
                        thumbnails_on: bool) -> str:
    parts = ['<section id="duplicates"><h2>Near-duplicates <span '
             'class="muted">(groups of images whose embeddings have a cosine '
             "similarity at or above the threshold, directly or through "
             "another image of the group)</span></h2>"]
    if duplicates is None or not duplicates.with_embedding:
        parts.append('<p class="muted">no embeddings in this output (the '
                     "model has no feature vector)</p></section>")
        return "".join(parts)
    in_groups = sum(len(g) for g in duplicates.groups)
    parts.append(
        f'<p data-duplicates="{len(duplicates.groups)}">threshold '
        f"{duplicates.threshold:g}: {_plural(len(duplicates.groups), 'group')}"
        f" holding {_plural(in_groups, 'image')}, among "
        f"{duplicates.compared:,} images compared.</p>")
    if duplicates.compared < duplicates.with_embedding:
        parts.append(f'<p class="warning" id="duplicates-capped">Only the '
                     f"first {duplicates.compared:,} of "
                     f"{duplicates.with_embedding:,} images with an "
                     "embedding were compared (in file order), to bound "
                     "time and memory.</p>")
    if duplicates.groups and in_groups > 0.5 * max(duplicates.compared, 1):
        parts.append('<p class="warning">Over half of the images fall in a '
                     "group: at this threshold the embeddings do not tell "
                     "these images apart; try a higher "
                     "--duplicate_threshold.</p>")
    parts.append('<div class="groups">')
    for number, group in enumerate(duplicates.groups[:MAX_DUPLICATE_GROUPS],
                                   1):
        parts.append(f'<div class="dup-group" data-size="{len(group)}">'
                     f"<h3>Group {number} <span class=\"muted\">("
                     f"{_plural(len(group), 'image')})</span></h3>"
                     '<div class="grid">')
        for uri, similarity in group[:DUPLICATE_THUMBNAILS]:
            caption = (f"{_esc(posixpath.basename(uri))}<br>"
                       f'<span class="muted">similarity {similarity:.4f}'
                       "</span>")
            parts.append(_figure(uri, thumbnails, caption, thumbnails_on))
        if len(group) > DUPLICATE_THUMBNAILS:
            hidden = len(group) - DUPLICATE_THUMBNAILS
            parts.append(f'<p class="muted">and {hidden} more</p>')
        parts.append("</div></div>")
    parts.append("</div>")
    if len(duplicates.groups) > MAX_DUPLICATE_GROUPS:
        hidden = len(duplicates.groups) - MAX_DUPLICATE_GROUPS
        parts.append(f'<p class="muted">and {hidden} more groups</p>')
    parts.append("</section>")
    return "".join(parts)


def _thumbnails_section(groups, thumbnails, thumbnails_on) -> str:
    parts = ['<section id="thumbnails"><h2>Most frequent labels <span '
             'class="muted">(their top-scoring images)</span></h2>']
    if not groups:
        parts.append('<p class="muted">no thumbnails</p>')
    parts.append('<div class="groups">')
    for label, count, rows in groups:
        parts.append(f'<div class="label-group" data-label="{_esc(label)}">'
                     f"<h3>{_esc(label)} <span class=\"muted\">("
                     f"{_plural(count, 'image')})</span></h3>"
                     '<div class="grid">')
        for row in rows:
            uri = str(row["uri"])
            caption = (f"{_esc(posixpath.basename(uri))}<br>"
                       f"score {_score(row['score'])}")
            parts.append(_figure(uri, thumbnails, caption, thumbnails_on))
        parts.append("</div></div>")
    parts.append("</div></section>")
    return "".join(parts)


def _errors_section(errors) -> str:
    parts = ['<section id="errors"><h2>Errors</h2>']
    if not errors.num_rows:
        parts.append('<p class="muted">no errors</p></section>')
        return "".join(parts)
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.compute as pc  # pylint: disable=import-outside-toplevel
    # In stage order (read, decode, classify, others), then by uri.
    stage_order = pc.fill_null(pc.index_in(errors.column("stage"),
                                           value_set=pa.array(STAGES)),
                               len(STAGES))
    indices = pc.sort_indices(
        errors.append_column("stage_order", stage_order),
        sort_keys=[("stage_order", "ascending"), ("uri", "ascending")])
    rows = errors.take(indices[:MAX_ERROR_ROWS]).to_pylist()
    if errors.num_rows > MAX_ERROR_ROWS:
        parts.append(f'<p class="warning">{errors.num_rows - MAX_ERROR_ROWS:,}'
                     " more errors not shown; query the errors Parquet files "
                     "for all.</p>")
    markup = [f'<tr><td class="uri">{_uri_html(error["uri"])}</td>'
              f"<td>{_esc(error['stage'])}</td>"
              f"<td>{_esc(error['error_type'])}</td>"
              f'<td class="message">{_esc(error["message"])}</td></tr>'
              for error in rows]
    parts.append(_data_table(
        "errors-table", [("uri", "text", "36%"), ("stage", "text", "8%"),
                         ("error_type", "text", "14%"),
                         ("message", "text", "42%")], markup, "errors"))
    parts.append("</section>")
    return "".join(parts)


def _banners(results: Results, standin: Sequence[str],
             thumbnails: Dict[str, Tuple[Optional[str], str]]) -> str:
    parts = [f'<p class="warning" id="standin-warning">Labels from '
             f"<code>{_esc(m)}</code>, the random-weight STAND-IN module: "
             "they are meaningless.</p>" for m in standin]
    if results.manifest is None:
        parts.append(
            '<p class="warning" id="unfinished-warning">This output is not '
            "finished (no _SUCCESS.json): its job is still running or was "
            "stopped. The page shows every labels-*/errors-*.parquet file "
            "found, so rows of failed or repeated attempts may be counted "
            "twice. Run the job again with --resume to finish it.</p>")
    counts = (results.manifest or {}).get("counts")
    if isinstance(counts, dict):
        found = {"labeled": results.labels.num_rows,
                 "failed": results.errors.num_rows}
        differ = [f"{name} {counts[name]} in the manifest, {n} in the files"
                  for name, n in found.items()
                  if name in counts and counts[name] != n]
        if differ:
            parts.append('<p class="warning" id="counts-warning">The '
                         "manifest's counts differ from the files: "
                         + _esc("; ".join(differ)) + ".</p>")
    missing = sum(1 for src, _ in thumbnails.values() if src is None)
    if missing:
        parts.append(f'<p class="warning" id="thumbnail-warning">'
                     f"{_plural(missing, 'image')} of {len(thumbnails)} "
                     "shown cannot be read any more (moved, deleted or "
                     "unreadable); each has a note in place of its "
                     "thumbnail.</p>")
    return "".join(parts)


_NAV = (("run", "Run"), ("labels", "Labels"), ("images", "Images"),
        ("least-confident", "Least confident"),
        ("duplicates", "Near-duplicates"), ("thumbnails", "By label"),
        ("errors", "Errors"))


@dataclass
class Page:
    """Everything render_html lays out, beyond the read results."""
    table: List[Dict[str, Any]]
    least: List[Dict[str, Any]]
    groups: List[Tuple[str, int, List[Dict[str, Any]]]]
    duplicates: Optional[Duplicates]
    thumbnails: Dict[str, Tuple[Optional[str], str]]
    thumbnails_on: bool = True
    standin_models: Sequence[str] = ()


def render_html(results: Results, page: Page) -> str:
    """The whole page as one string."""
    generated = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    files = (f"{_plural(len(results.label_files), 'labels file')}, "
             f"{_plural(len(results.error_files), 'errors file')}")
    nav = "".join(f'<a href="#{anchor}">{title}</a>'
                  for anchor, title in _NAV)
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">',
        '<meta name="viewport" content="width=device-width">',
        f"<title>Labeling report: {_esc(results.output_dir)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f'<header class="top"><h1>Labeling report</h1>'
        f'<span class="path">{_esc(results.output_dir)}</span>'
        f'<span class="muted" id="files">{files}; generated {generated}'
        f"</span><nav>{nav}</nav></header><main>",
        _banners(results, page.standin_models, page.thumbnails),
        '<div class="overview">',
        _counts_section(results),
        _run_section(results),
        _labels_section(results.labels),
        _scores_section(results.labels),
        "</div>",
        _images_section(results.labels, page.table),
        _least_confident_section(page.least, page.thumbnails,
                                 page.thumbnails_on),
        _duplicates_section(page.duplicates, page.thumbnails,
                            page.thumbnails_on),
        _thumbnails_section(page.groups, page.thumbnails,
                            page.thumbnails_on),
        _errors_section(results.errors),
        f"</main><script>{_SCRIPT}</script></body></html>\n",
    ])


def standin_models(labels) -> List[str]:
    """Model handles in the output that are local stand-in directories
    (remote handles are not fetched just to check)."""
    from pipeline.checks import STANDIN_MARKER  # pylint: disable=import-outside-toplevel
    return [m for m in _distinct(labels.column("model")) if "://" not in m and
            os.path.exists(os.path.join(m, STANDIN_MARKER))]


def build_report(output_dir: str, max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
                 allow_unfinished: bool = False,
                 duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
                 duplicate_max_rows: int = DUPLICATE_MAX_ROWS) -> str:
    """Read an output directory and return the report page."""
    results = read_results(output_dir, allow_unfinished)
    thumbnails_on = max_thumbnails > 0
    groups = thumbnail_groups(results.labels, max_thumbnails)
    least = least_confident(results.labels)
    duplicates = find_duplicates(results.label_files, duplicate_threshold,
                                 duplicate_max_rows)
    wanted = [str(row["uri"]) for _, _, rows in groups for row in rows]
    if thumbnails_on:
        wanted += [str(row["uri"]) for row in least]
        wanted += [uri for group in duplicates.groups[:MAX_DUPLICATE_GROUPS]
                   for uri, _ in group[:DUPLICATE_THUMBNAILS]]
    page = Page(table_rows(results.labels), least, groups, duplicates,
                make_thumbnails(wanted), thumbnails_on,
                standin_models(results.labels))
    return render_html(results, page)


def write_text(path: str, text: str) -> None:
    """Write a file on any Beam filesystem."""
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileSystems.create(path, mime_type="text/html",
                            compression_type=CompressionTypes.UNCOMPRESSED
                            ) as handle:
        handle.write(text.encode("utf-8"))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a cosine similarity from -1 to 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m pipeline report",
        description="Write an HTML report of a labeling run.")
    parser.add_argument("output_dir", nargs="?",
                        help="the --output directory of a labeling run "
                        "(local or gs://)")
    parser.add_argument("--to", default=None,
                        help=f"report file (default: OUTPUT_DIR/{REPORT_NAME})")
    parser.add_argument("--max_thumbnails", type=whole_number,
                        default=DEFAULT_MAX_THUMBNAILS,
                        help="thumbnails in all, up to "
                        f"{THUMBNAILS_PER_LABEL} per label (0: none)")
    parser.add_argument("--duplicate_threshold", type=_similarity,
                        default=DEFAULT_DUPLICATE_THRESHOLD,
                        help="cosine similarity of two images' embeddings "
                        "at or above which they are near-duplicates (the "
                        f"first {DUPLICATE_MAX_ROWS:,} images are compared)")
    parser.add_argument("--allow_unfinished", action="store_true",
                        help="report on an output without _SUCCESS.json "
                        "(a running or stopped job): every labels-*.parquet "
                        "found, so rows may repeat")
    parser.add_argument("--verbose", action="store_true",
                        help="debug logging and full tracebacks")
    return parser


def main(argv: Sequence[str]) -> int:
    """`python -m pipeline report ...`; returns the exit status."""
    return run_subcommand(_main, build_parser(), argv, "report")


def _main(args: argparse.Namespace) -> int:
    if not args.output_dir:
        raise ReportError("give the output directory of a labeling run: "
                          "python -m pipeline report OUTPUT_DIR")
    target = args.to or posixpath.join(args.output_dir.rstrip("/"),
                                       REPORT_NAME)
    require_cloud_credentials({"OUTPUT_DIR": args.output_dir,
                               "--to": target})
    page = build_report(args.output_dir, args.max_thumbnails,
                        args.allow_unfinished, args.duplicate_threshold)
    try:
        write_text(target, page)
    except Exception as exc:  # pylint: disable=broad-except
        raise ReportError(f"cannot write {target}: "
                          f"{one_line(exc)}") from exc
    _LOGGER.info("wrote %s (%d KB)", target, len(page) // 1024)
    sys.stdout.write(target + "\n")
    return EXIT_OK
