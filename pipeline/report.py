"""`python -m pipeline report OUTPUT_DIR`: one self-contained HTML page about
a labeling run.

Reads `OUTPUT_DIR/labels-*.parquet` and `OUTPUT_DIR/errors-*.parquet` (any
Beam filesystem: local, gs://, ...; only the small columns, never the
embeddings) and writes `OUTPUT_DIR/report.html` (or `--to PATH`) with:

  * counts: images labeled, errors, errors by stage and by type;
  * a bar chart of the most frequent top-1 labels;
  * thumbnails of the top-scoring images of the most frequent labels, made
    from the input images at their `uri` and embedded as data: URIs (an
    input that cannot be read any more shows a placeholder);
  * a histogram of the top-1 scores;
  * the error table (uri, stage, error_type, message).

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
import logging
import os
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pipeline.options import (DEFAULT_FORMATS, DEFAULT_MAX_FILE_BYTES,
                              DEFAULT_MAX_PIXELS)
from transforms.errors import one_line

_LOGGER = logging.getLogger("pipeline.report")

EXIT_OK, EXIT_USAGE = 0, 2

REPORT_NAME = "report.html"
DEFAULT_MAX_THUMBNAILS = 48
THUMBNAILS_PER_LABEL = 8
THUMBNAIL_SIZE = 160          # pixels, longest side
TOP_LABELS = 25               # bars in the label histogram
SCORE_BINS = 20               # bins over [0, 1]
MAX_ERROR_ROWS = 1000         # rows of the error table shown
STAGES = ("read", "decode", "classify")
_LABEL_COLUMNS = ["uri", "label", "score", "model"]
_ERROR_COLUMNS = ["uri", "stage", "error_type", "message"]
_THUMBNAIL_THREADS = 8


class ReportError(Exception):
    """A problem the user can fix (missing or unreadable results); one line."""


@dataclass
class Results:
    """What the report is made of: plain rows, small columns only."""
    output_dir: str
    labels: List[Dict[str, object]]   # uri, label, score, model
    errors: List[Dict[str, object]]   # uri, stage, error_type, message
    label_files: int = 0
    error_files: int = 0


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


def _read_rows(path: str, columns: Sequence[str]) -> List[Dict[str, object]]:
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    from transforms.schema import read_columns  # pylint: disable=import-outside-toplevel
    try:
        with FileSystems.open(path, compression_type=CompressionTypes
                              .UNCOMPRESSED) as handle:
            table = read_columns(handle, columns)
    except Exception as exc:  # pylint: disable=broad-except
        raise ReportError(f"cannot read {path}: {one_line(exc)}") from exc
    return table.to_pylist()


def read_results(output_dir: str) -> Results:
    """The labels and errors under an output directory (any Beam FS)."""
    root = output_dir.rstrip("/") or "/"
    label_files = _match(posixpath.join(root, "labels-*.parquet"))
    error_files = _match(posixpath.join(root, "errors-*.parquet"))
    if not label_files and not error_files:
        raise ReportError(f"no labels-*.parquet or errors-*.parquet under "
                          f"{output_dir}: is it the --output of a labeling "
                          "run?")
    labels = [row for path in label_files
              for row in _read_rows(path, _LABEL_COLUMNS)]
    errors = [row for path in error_files
              for row in _read_rows(path, _ERROR_COLUMNS)]
    return Results(output_dir, labels, errors, len(label_files),
                   len(error_files))


# ---------------------------------------------------------------------------
# Summaries (plain functions)
# ---------------------------------------------------------------------------

def label_counts(labels: Sequence[Dict[str, object]]
                 ) -> List[Tuple[str, int]]:
    """(label, images) by count descending, then label."""
    counts = collections.Counter(str(row["label"]) for row in labels)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def score_histogram(scores: Sequence[float], bins: int = SCORE_BINS
                    ) -> List[int]:
    """Counts of scores in `bins` equal bins over [0, 1] (1.0 in the last)."""
    counts = [0] * bins
    for score in scores:
        counts[min(bins - 1, max(0, int(float(score) * bins)))] += 1
    return counts


def thumbnail_groups(labels: Sequence[Dict[str, object]], max_thumbnails: int,
                     per_label: int = THUMBNAILS_PER_LABEL
                     ) -> List[Tuple[str, int, List[Dict[str, object]]]]:
    """(label, images, rows to show) for the most frequent labels: up to
    `per_label` top-scoring rows each, `max_thumbnails` rows in all."""
    by_label: Dict[str, List[Dict[str, object]]] = collections.defaultdict(
        list)
    for row in labels:
        by_label[str(row["label"])].append(row)
    groups, left = [], max_thumbnails
    for label, count in label_counts(labels):
        if left <= 0:
            break
        rows = sorted(by_label[label],
                      key=lambda r: (-float(r["score"]), str(r["uri"])))
        shown = rows[:min(per_label, left)]
        groups.append((label, count, shown))
        left -= len(shown)
    return groups


def _check_pixels(width: int, height: int) -> None:
    if width * height > DEFAULT_MAX_PIXELS:
        raise ValueError(f"{width}x{height} pixels is over the limit of "
                         f"{DEFAULT_MAX_PIXELS}")


def make_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> str:
    """Image bytes → `data:image/jpeg;base64,...` of at most size×size,
    upright, alpha over white. Raises on anything Pillow cannot decode, on
    formats outside the job's default list and on images over the job's
    default pixel limit (checked before decoding, as the job does)."""
    from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
    from transforms.decode import (_png_header_size,  # pylint: disable=import-outside-toplevel,protected-access
                                   allowed_formats)
    formats = allowed_formats(DEFAULT_FORMATS.split(","))
    # Pillow's APNG reader allocates a whole frame inside Image.open, so the
    # PNG header size is checked first (as transforms.decode does).
    _check_pixels(*(_png_header_size(data) or (0, 0)))
    with Image.open(io.BytesIO(data), formats=formats) as opened:
        _check_pixels(opened.width, opened.height)
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


def _thumbnail_or_reason(uri: str, read: Callable[[str, int], bytes]
                         ) -> Tuple[Optional[str], str]:
    try:
        return make_thumbnail(read(uri, DEFAULT_MAX_FILE_BYTES)), ""
    except Exception as exc:  # pylint: disable=broad-except
        _LOGGER.warning("no thumbnail for %s: %s", uri, one_line(exc))
        return None, f"{type(exc).__name__}: {one_line(exc)}"


def make_thumbnails(uris: Sequence[str],
                    read: Optional[Callable[[str, int], bytes]] = None
                    ) -> Dict[str, Tuple[Optional[str], str]]:
    """uri → (data URI, "") or (None, why not), read in parallel."""
    if read is None:
        from transforms.read import read_file_bytes  # pylint: disable=import-outside-toplevel
        read = read_file_bytes
    unique = list(dict.fromkeys(uris))
    with ThreadPoolExecutor(_THUMBNAIL_THREADS) as pool:
        made = pool.map(lambda uri: _thumbnail_or_reason(uri, read), unique)
        return dict(zip(unique, made))


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 sans-serif; margin: 24px; color: #222; max-width: 1150px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px;
  border-bottom: 1px solid #ccc; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 8px 12px; }
table { border-collapse: collapse; }
td, th { padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.counts td:first-child { font-weight: bold; }
.bar { background: #4a7fc1; height: 14px; min-width: 1px; }
.bartrack { width: 520px; }
.label-group h3 { font-size: 15px; margin: 18px 0 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; width: 160px; }
figure img, .placeholder { width: 160px; height: 160px; object-fit: contain;
  background: #eee; display: block; }
.placeholder { display: flex; align-items: center; justify-content: center;
  color: #777; text-align: center; font-size: 12px; }
figcaption { font-size: 11px; word-break: break-all; color: #444; }
.errors td { font-size: 12px; word-break: break-all; }
.muted { color: #777; }
svg text { font: 11px sans-serif; fill: #333; }
"""

# Once the page has loaded (the load event waits for every <img>), marks
# <body> with how many images there are and how many decoded (naturalWidth
# > 0): for tests, and for anyone checking a page saved from a browser.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (img) {
    return img.complete && img.naturalWidth > 0;
  }).length;
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-decoded", String(decoded));
  document.body.setAttribute("data-images-ready", "1");
});
"""


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest())
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest.decode()}'; base-uri 'none'; "
            "form-action 'none'")


def _counts_section(results: Results) -> str:
    by_stage = collections.Counter(str(e["stage"]) for e in results.errors)
    stages = list(STAGES) + sorted(set(by_stage) - set(STAGES))
    by_type = collections.Counter((str(e["stage"]), str(e["error_type"]))
                                  for e in results.errors)
    models = collections.Counter(str(r["model"]) for r in results.labels)
    rows = [("images", len(results.labels) + len(results.errors)),
            ("labeled", len(results.labels)),
            ("errors", len(results.errors))]
    rows += [(f"errors at {stage}", by_stage.get(stage, 0))
             for stage in stages]
    parts = ['<section id="counts"><h2>Counts</h2><table class="counts">']
    parts += [f'<tr><td>{_esc(name)}</td><td class="num" '
              f'data-count="{_esc(name)}">{n}</td></tr>' for name, n in rows]
    parts.append("</table>")
    if by_type:
        parts.append('<h3>Errors by type</h3><table><tr><th>stage</th>'
                     '<th>error_type</th><th>images</th></tr>')
        parts += [f"<tr><td>{_esc(stage)}</td><td>{_esc(kind)}</td>"
                  f'<td class="num">{n}</td></tr>'
                  for (stage, kind), n in sorted(
                      by_type.items(), key=lambda item: (-item[1], item[0]))]
        parts.append("</table>")
    if models:
        parts.append("<p>model: " + ", ".join(
            f"<code>{_esc(m)}</code> ({n})" for m, n in models.most_common())
            + "</p>")
    parts.append("</section>")
    return "".join(parts)


def _labels_section(labels: Sequence[Dict[str, object]]) -> str:
    counts = label_counts(labels)
    parts = ['<section id="labels"><h2>Top-1 labels</h2>']
    if not counts:
        parts.append('<p class="muted">no labeled images</p></section>')
        return "".join(parts)
    top = counts[:TOP_LABELS]
    most = top[0][1]
    parts.append(f"<p>{len(counts)} distinct labels over {len(labels)} "
                 "images.</p><table class=\"histogram\">")
    for label, n in top:
        width = 100.0 * n / most
        parts.append(
            f'<tr data-label="{_esc(label)}"><td>{_esc(label)}</td>'
            f'<td class="num">{n}</td><td class="bartrack"><div class="bar" '
            f'style="width: {width:.1f}%"></div></td></tr>')
    parts.append("</table>")
    rest = counts[TOP_LABELS:]
    if rest:
        parts.append(f'<p class="muted">and {len(rest)} more labels with '
                     f"{sum(n for _, n in rest)} images</p>")
    parts.append("</section>")
    return "".join(parts)


def _thumbnails_section(groups, thumbnails) -> str:
    parts = ['<section id="thumbnails"><h2>Most frequent labels</h2>']
    if not groups:
        parts.append('<p class="muted">no thumbnails</p>')
    for label, count, rows in groups:
        parts.append(f'<div class="label-group" data-label="{_esc(label)}">'
                     f"<h3>{_esc(label)} <span class=\"muted\">("
                     f"{_plural(count, 'image')})</span></h3>"
                     '<div class="grid">')
        for row in rows:
            uri = str(row["uri"])
            src, reason = thumbnails.get(uri, (None, "not loaded"))
            caption = (f"<figcaption>{_esc(posixpath.basename(uri))}<br>"
                       f"score {float(row['score']):.3f}</figcaption>")
            if src:
                picture = (f'<img src="{src}" alt="{_esc(uri)}" '
                           f'title="{_esc(uri)}">')
            else:
                picture = (f'<div class="placeholder" title="{_esc(reason)}">'
                           "image not readable</div>")
            parts.append(f'<figure data-uri="{_esc(uri)}">{picture}'
                         f"{caption}</figure>")
        parts.append("</div></div>")
    parts.append("</section>")
    return "".join(parts)


def _scores_section(labels: Sequence[Dict[str, object]]) -> str:
    scores = sorted(float(r["score"]) for r in labels)
    counts = score_histogram(scores)
    parts = ['<section id="scores"><h2>Top-1 scores</h2>']
    if not scores:
        parts.append('<p class="muted">no labeled images</p></section>')
        return "".join(parts)
    median = scores[len(scores) // 2]
    parts.append(f"<p>min {scores[0]:.3f}, median {median:.3f}, max "
                 f"{scores[-1]:.3f}</p>")
    width, height, left, bottom = 640, 200, 40, 24
    bar_w = (width - left) / len(counts)
    most = max(counts) or 1
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 20}" '
           f'height="{height + bottom + 16}" role="img" '
           'aria-label="histogram of top-1 scores">']
    for i, n in enumerate(counts):
        h = (height - 10) * n / most
        low, high = i / len(counts), (i + 1) / len(counts)
        svg.append(
            f'<rect class="score-bin" data-count="{n}" '
            f'x="{left + i * bar_w + 1:.1f}" y="{height - h:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#4a7fc1">'
            f"<title>{low:.2f}-{high:.2f}: {n}</title></rect>")
    svg.append(f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" '
               'stroke="#333"/>')
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * (width - left)
        svg.append(f'<text x="{x:.1f}" y="{height + 16}" '
                   f'text-anchor="middle">{tick:.2f}</text>')
    svg.append(f'<text x="{left - 6}" y="12" text-anchor="end">{most}</text>'
               f'<text x="{left - 6}" y="{height}" text-anchor="end">0</text>'
               f'<text x="{(left + width) / 2:.0f}" y="{height + bottom + 12}"'
               ' text-anchor="middle">top-1 score (bins of '
               f'{1 / len(counts):.2f}; bar height = images)</text></svg>')
    parts.append("".join(svg) + "</section>")
    return "".join(parts)


def _errors_section(errors: Sequence[Dict[str, object]]) -> str:
    parts = ['<section id="errors"><h2>Errors</h2>']
    if not errors:
        parts.append('<p class="muted">no errors</p></section>')
        return "".join(parts)
    rows = sorted(errors, key=lambda e: (STAGES.index(e["stage"])
                                         if e["stage"] in STAGES else 9,
                                         str(e["uri"])))
    parts.append('<table class="errors"><tr><th>uri</th><th>stage</th>'
                 "<th>error_type</th><th>message</th></tr>")
    for error in rows[:MAX_ERROR_ROWS]:
        parts.append("<tr>" + "".join(
            f"<td>{_esc(error[c])}</td>" for c in _ERROR_COLUMNS) + "</tr>")
    parts.append("</table>")
    if len(rows) > MAX_ERROR_ROWS:
        parts.append(f'<p class="muted">{len(rows) - MAX_ERROR_ROWS} more '
                     "errors not shown; query errors-*.parquet for all</p>")
    parts.append("</section>")
    return "".join(parts)


def render_html(results: Results, groups, thumbnails,
                standin_models: Sequence[str] = ()) -> str:
    """The whole page as one string."""
    generated = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    warning = "".join(
        f'<p class="warning" id="standin-warning">Labels from '
        f"<code>{_esc(m)}</code>, the random-weight STAND-IN module: they "
        "are meaningless.</p>" for m in standin_models)
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">',
        '<meta name="viewport" content="width=device-width">',
        f"<title>Labeling report: {_esc(results.output_dir)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Labeling report</h1><p>{_esc(results.output_dir)} "
        f'<span class="muted">({results.label_files} labels files, '
        f"{results.error_files} errors files; generated {generated})</span>"
        "</p>",
        warning,
        _counts_section(results),
        _labels_section(results.labels),
        _scores_section(results.labels),
        _thumbnails_section(groups, thumbnails),
        _errors_section(results.errors),
        f"<script>{_SCRIPT}</script></body></html>\n",
    ])


def standin_models(labels: Sequence[Dict[str, object]]) -> List[str]:
    """Model handles in the output that are local stand-in directories
    (remote handles are not fetched just to check)."""
    from pipeline.checks import STANDIN_MARKER  # pylint: disable=import-outside-toplevel
    models = sorted({str(r["model"]) for r in labels})
    return [m for m in models if "://" not in m and
            os.path.exists(os.path.join(m, STANDIN_MARKER))]


def build_report(output_dir: str, max_thumbnails: int = DEFAULT_MAX_THUMBNAILS
                 ) -> str:
    """Read an output directory and return the report page."""
    results = read_results(output_dir)
    groups = thumbnail_groups(results.labels, max_thumbnails)
    thumbnails = make_thumbnails(
        [str(row["uri"]) for _, _, rows in groups for row in rows])
    return render_html(results, groups, thumbnails,
                       standin_models(results.labels))


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

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ReportError(message)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pipeline report", add_help=False,
                     allow_abbrev=False,
                     description="Write an HTML report of a labeling run.")
    parser.add_argument("output_dir", nargs="?",
                        help="the --output directory of a labeling run "
                        "(local or gs://)")
    parser.add_argument("--to", default=None,
                        help=f"report file (default OUTPUT_DIR/{REPORT_NAME})")
    parser.add_argument("--max_thumbnails", type=_count,
                        default=DEFAULT_MAX_THUMBNAILS,
                        help="thumbnails in all, up to "
                        f"{THUMBNAILS_PER_LABEL} per label (0: none)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    return parser



def main(argv: Sequence[str]) -> int:
    """`python -m pipeline report ...`; returns the exit status."""
    verbose = "--verbose" in argv
    try:
        args = build_parser().parse_args(list(argv))
        if args.help:
            sys.stdout.write(build_parser().format_help())
            return EXIT_OK
        if not args.output_dir:
            raise ReportError("give the output directory of a labeling run: "
                              "python -m pipeline report OUTPUT_DIR")
        target = args.to or posixpath.join(args.output_dir.rstrip("/"),
                                           REPORT_NAME)
        page = build_report(args.output_dir, args.max_thumbnails)
        try:
            write_text(target, page)
        except Exception as exc:  # pylint: disable=broad-except
            raise ReportError(f"cannot write {target}: "
                              f"{one_line(exc)}") from exc
    except ReportError as exc:
        if verbose:
            _LOGGER.exception("report failed")
        _LOGGER.error("%s", exc)
        return EXIT_USAGE
    _LOGGER.info("wrote %s (%d KB)", target, len(page) // 1024)
    sys.stdout.write(target + "\n")
    return EXIT_OK
