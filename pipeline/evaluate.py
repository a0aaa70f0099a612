"""`python -m pipeline evaluate`: top-1 / top-k accuracy of a module on
labeled ImageNet images, next to the published figures for
google/imagenet/mobilenet_v2_050_96/classification (51.2% / 75.8%).

Runs in this process (no Beam pipeline), in batches, with the job's own
reading (`transforms.read.read_file_bytes`), decoding
(`transforms.imaging.decode_image` with the job's default limits) and model
code (`transforms.backends.load_classifier`, `transforms.classify.softmax` /
`top_k`), so it measures exactly what the job would label.

Ground truth:
  * `--input GLOB` (any Beam filesystem): every matched file's name must
    start with its ImageNet synset id, e.g. `n01440764_tench.JPEG`.
  * `--input FILE.csv`: rows of `uri,label`; an optional header row whose
    first field is uri/url/path/file/filename is skipped. `label` is either a
    synset id (`n01440764`) or the module's class index as an integer
    (1..1000; 0 is "background" and never a correct answer). Relative local
    paths are taken relative to the CSV file's directory.

Synset ids are mapped to class indices with the synset list (`--synsets`,
one WordNet id per line in class order: line i (0-based) is class i + 1; a
leading "background" line is allowed and skipped). There is no default: it
is required whenever a label is a synset id. Class names are not used for
the mapping (they are ambiguous: two classes are named "crane").

Files that cannot be read or decoded are counted, logged and left out of
the accuracy; they do not stop the evaluation.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import posixpath
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import (Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import numpy as np

from pipeline.cli_base import (EXIT_OK, CommandParser, UserError,  # pylint: disable=unused-import
                               positive_int, require_cloud_credentials,
                               run_subcommand)
from pipeline.config import JobConfig, default_decode_settings
from pipeline.options import (DEFAULT_LABELS, DEFAULT_MAX_FILE_BYTES,
                              DEFAULT_MODEL)
from transforms.imaging import DecodeSettings, decode_image, warm_up
from transforms.errors import STAGE_DECODE, STAGE_READ, ErrorRecord, \
    error_record, one_line

_LOGGER = logging.getLogger("pipeline.evaluate")


#: Published ImageNet (ILSVRC-2012 validation) accuracy of the module this
#: project is built around (TF-Hub / Kaggle model card).
PUBLISHED_MODULE = "google/imagenet/mobilenet_v2_050_96/classification"
PUBLISHED_TOP1 = 0.512
PUBLISHED_TOP5 = 0.758

SYNSET_RE = re.compile(r"n\d{8}")
_FILENAME_SYNSET_RE = re.compile(r"^(n\d{8})(?![0-9A-Za-z])")
_CSV_HEADERS = frozenset({"uri", "url", "path", "file", "filename"})
_READ_THREADS = 4


class EvaluateError(UserError):
    """A problem the user can fix (input, labels, options); one line."""


@dataclass(frozen=True)
class Example:
    """One labeled image: where it is and its true class index (1..1000)."""
    uri: str
    class_index: int


@dataclass
class EvalResult:
    """Counts of one evaluation."""
    k: int
    total: int = 0          # examples given
    evaluated: int = 0      # decoded and classified
    top1_correct: int = 0
    topk_correct: int = 0
    failures: List[ErrorRecord] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return self.top1_correct / self.evaluated if self.evaluated else 0.0

    @property
    def topk(self) -> float:
        return self.topk_correct / self.evaluated if self.evaluated else 0.0


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------

def parse_synsets(text: str) -> Dict[str, int]:
    """Synset list → {synset id: class index}. Line i is class i + 1 (the
    module's class 0 is "background"); a leading "background" line, as in
    synsets_with_background_1001.txt, is skipped."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if lines and lines[0].lower() == "background":
        lines = lines[1:]
        first_line = 2
    else:
        first_line = 1
    index: Dict[str, int] = {}
    for number, synset in enumerate(lines):
        if not SYNSET_RE.fullmatch(synset):
            raise EvaluateError(
                f"synset file line {number + first_line}: {synset[:40]!r} is "
                "not a WordNet id like n01440764")
        if synset in index:
            raise EvaluateError(
                f"synset file line {number + first_line}: {synset} is listed "
                "twice")
        index[synset] = number + 1
    if not index:
        raise EvaluateError("synset file is empty")
    return index


def synset_from_filename(uri: str) -> Optional[str]:
    """The synset id a file name starts with (n01440764_tench.JPEG →
    n01440764), or None."""
    match = _FILENAME_SYNSET_RE.match(posixpath.basename(uri.rstrip("/")))
    return match.group(1) if match else None


def class_index_of(label: str, synsets: Optional[Dict[str, int]],
                   where: str) -> int:
    """A label (synset id or class index 1..1000) → class index."""
    label = label.strip()
    if SYNSET_RE.fullmatch(label):
        if synsets is None:
            raise EvaluateError(f"{where}: label {label} is a synset id; "
                                "pass --synsets FILE (WordNet ids in class "
                                "order) to map it to a class")
        if label not in synsets:
            raise EvaluateError(f"{where}: unknown synset {label} (not in the "
                                "--synsets file)")
        return synsets[label]
    if label.isdigit():
        value = int(label)
        if value < 1:
            raise EvaluateError(f"{where}: class index {value} is background;"
                                " labels are 1..1000")
        return value
    raise EvaluateError(f"{where}: label {label[:60]!r} is neither a synset id "
                        "(n01440764) nor a class index (1..1000)")


def examples_from_uris(uris: Sequence[str],
                       synsets: Optional[Dict[str, int]]) -> List[Example]:
    """Files named after their synset → Examples."""
    examples = []
    for uri in uris:
        synset = synset_from_filename(uri)
        if synset is None:
            raise EvaluateError(
                f"{uri}: file name does not start with a synset id like "
                "n01440764_; name files after their class or give a CSV of "
                "uri,label")
        examples.append(Example(uri, class_index_of(synset, synsets, uri)))
    return examples


def _is_relative_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith("/")


def examples_from_csv(text: str, synsets: Optional[Dict[str, int]],
                      base: str = "", name: str = "CSV") -> List[Example]:
    """`uri,label` rows → Examples. Blank lines and lines starting with #
    are skipped, as is a header whose first field is e.g. "uri". Relative
    local paths are joined to `base` (the CSV's directory)."""
    examples = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or \
                row[0].lstrip().startswith("#"):
            continue
        if number == 1 and row[0].strip().lower() in _CSV_HEADERS:
            continue
        where = f"{name} line {number}"
        if len(row) < 2 or not row[0].strip():
            raise EvaluateError(f"{where}: expected uri,label")
        uri = row[0].strip()
        if base and _is_relative_local(uri):
            uri = posixpath.join(base, uri)
        examples.append(Example(uri, class_index_of(row[1], synsets, where)))
    if not examples:
        raise EvaluateError(f"{name} lists no images")
    return examples


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------

def count_hits(probabilities: np.ndarray, truth: np.ndarray, k: int
               ) -> Tuple[int, int]:
    """(top-1 hits, top-k hits) of a batch: [B, C] scores, [B] true classes."""
    from transforms.classify import top_k  # pylint: disable=import-outside-toplevel
    indices, _ = top_k(probabilities, k)
    hits = indices == truth[:, None]
    return int(hits[:, 0].sum()), int(hits.any(axis=1).sum())


def _load_pixels(uri: str, settings: DecodeSettings, max_bytes: int,
                 read: Callable[[str, int], bytes]
                 ) -> Tuple[Optional[np.ndarray], Optional[ErrorRecord]]:
    try:
        data = read(uri, max_bytes)
    except Exception as exc:  # pylint: disable=broad-except
        return None, error_record(uri, STAGE_READ, exc)
    try:
        return decode_image(data, settings)[0], None
    except Exception as exc:  # pylint: disable=broad-except
        return None, error_record(uri, STAGE_DECODE, exc)


def _batches(items: Sequence[Example], size: int) -> Iterator[Sequence[Example]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def evaluate(examples: Sequence[Example],
             classifier: Callable[[np.ndarray], Tuple[np.ndarray, object]],
             *, k: int = 5, batch_size: int = 64,
             settings: Optional[DecodeSettings] = None,
             max_bytes: int = DEFAULT_MAX_FILE_BYTES,
             read: Optional[Callable[[str, int], bytes]] = None
             ) -> EvalResult:
    """Read, decode and classify `examples` in batches; count the hits.

    `classifier` maps [B, 96, 96, 3] float32 to (logits [B, C], anything),
    as transforms.backends.ImageClassifier does.
    """
    from transforms.classify import softmax  # pylint: disable=import-outside-toplevel
    if read is None:
        from transforms.read import read_file_bytes  # pylint: disable=import-outside-toplevel
        read = read_file_bytes
    settings = settings or default_decode_settings()
    result = EvalResult(k=k, total=len(examples))
    warm_up()  # decoder messages to the debug log, not the console
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        for batch in _batches(examples, batch_size):
            loaded = list(pool.map(
                lambda ex: _load_pixels(ex.uri, settings, max_bytes, read),
                batch))
            pixels, truth = [], []
            for example, (image, failure) in zip(batch, loaded):
                if failure is not None:
                    _LOGGER.warning("skipped %s: %s at %s: %s", failure.uri,
                                    failure.error_type, failure.stage,
                                    failure.message)
                    result.failures.append(failure)
                else:
                    pixels.append(image)
                    truth.append(example.class_index)
            if not pixels:
                continue
            logits, _ = classifier(np.stack(pixels))
            top1, topk = count_hits(softmax(np.asarray(logits, np.float32)),
                                    np.asarray(truth), k)
            result.evaluated += len(pixels)
            result.top1_correct += top1
            result.topk_correct += topk
            _LOGGER.debug("%d / %d images evaluated", result.evaluated +
                          len(result.failures), result.total)
    return result


def format_result(result: EvalResult, model: str, standin: bool) -> str:
    """The accuracy table printed on stdout."""
    failed = len(result.failures)
    by_stage = ", ".join(
        f"{stage} {n}" for stage in (STAGE_READ, STAGE_DECODE)
        if (n := sum(f.stage == stage for f in result.failures)))
    lines = [
        f"module     {model}",
        f"images     {result.evaluated} evaluated of {result.total}; "
        f"{failed} failed" + (f" ({by_stage})" if by_stage else ""),
        "",
        f"{'':8}{'measured':>10}{'':14}{'published':>10}",
        _row("top-1", result.top1_correct, result.evaluated, PUBLISHED_TOP1),
    ]
    if result.k > 1:
        lines.append(_row(f"top-{result.k}", result.topk_correct,
                          result.evaluated,
                          PUBLISHED_TOP5 if result.k == 5 else None))
    lines.append(f"(published: {PUBLISHED_MODULE}, ImageNet validation set)")
    if standin:
        lines.append("WARNING: random-weight STAND-IN module (STANDIN.txt): "
                     "expect chance level (0.1% top-1, 0.5% top-5)")
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _row(name: str, hits: int, evaluated: int,
         published: Optional[float]) -> str:
    measured = _pct(hits / evaluated) if evaluated else "-"
    return (f"{name:8}{measured:>10}  {f'({hits}/{evaluated})':12}"
            f"{_pct(published) if published is not None else '-':>10}")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m pipeline evaluate",
        description="Top-1 / top-k accuracy of a module on labeled images.")
    parser.add_argument(
        "--input",
        help="glob of images named after their synset (n01440764_*.JPEG), "
        "or a .csv file of uri,label (label: synset id or class index "
        "1..1000; relative paths are taken relative to the CSV file)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="module handle, as for the labeling job")
    parser.add_argument("--labels", default=DEFAULT_LABELS,
                        help="the module's label file (one line per class)")
    parser.add_argument(
        "--synsets", default=None,
        help="WordNet ids in class order (line i = class i + 1); required "
        "when labels are synset ids")
    job = JobConfig.defaults()  # the labeling job's defaults
    parser.add_argument("--top_k", type=positive_int, default=job.top_k,
                        help="k of the top-k accuracy")
    parser.add_argument("--batch_size", type=positive_int,
                        default=job.max_batch_size,
                        help="images per model call")
    parser.add_argument("--verbose", action="store_true",
                        help="debug logging and full tracebacks")
    return parser


def _read_text(location: str, what: str) -> str:
    """A small text file on any Beam filesystem."""
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    try:
        with FileSystems.open(location, compression_type=CompressionTypes
                              .UNCOMPRESSED) as handle:
            return handle.read().decode("utf-8")
    except Exception as exc:  # pylint: disable=broad-except
        raise EvaluateError(f"cannot read {what} {location}: "
                            f"{one_line(exc)}") from exc



def load_examples(input_: str, synsets: Optional[Dict[str, int]]
                  ) -> List[Example]:
    """--input (a .csv file or a glob) → Examples."""
    if input_.lower().endswith(".csv"):
        return examples_from_csv(_read_text(input_, "--input"), synsets,
                                 base=posixpath.dirname(input_),
                                 name=input_)
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    try:
        matched = FileSystems.match([input_])[0].metadata_list
    except Exception as exc:  # pylint: disable=broad-except
        raise EvaluateError(f"cannot list --input {input_}: "
                            f"{one_line(exc)}") from exc
    if not matched:
        raise EvaluateError(f"--input {input_} matches no files")
    return examples_from_uris(sorted(m.path for m in matched), synsets)


def _run(args: argparse.Namespace) -> int:
    from pipeline.checks import (LaunchError, check_model,  # pylint: disable=import-outside-toplevel
                                 is_standin, load_labels)
    synsets = parse_synsets(_read_text(args.synsets, "--synsets")) \
        if args.synsets else None
    examples = load_examples(args.input, synsets)
    try:
        labels = load_labels(args.labels)
        classifier = check_model(args.model, None, labels, None)
    except LaunchError as exc:
        raise EvaluateError(str(exc)) from exc
    if synsets is not None and len(synsets) != classifier.num_classes - 1:
        raise EvaluateError(
            f"--synsets lists {len(synsets)} classes but module {args.model} "
            f"has {classifier.num_classes - 1} (plus background)")
    bad = next((ex for ex in examples
                if ex.class_index >= classifier.num_classes), None)
    if bad is not None:
        raise EvaluateError(f"{bad.uri}: class index {bad.class_index} is out "
                            f"of range 1..{classifier.num_classes - 1}")
    standin = is_standin(args.model, None)
    if standin:
        _LOGGER.warning("%s is the random-weight STAND-IN module: its "
                        "accuracy is chance level, not the real module's",
                        args.model)
    _LOGGER.info("evaluating %s on %d images", args.model, len(examples))
    result = evaluate(examples, classifier, k=args.top_k,
                      batch_size=args.batch_size)
    sys.stdout.write(format_result(result, args.model, standin))
    if not result.evaluated:
        raise EvaluateError(f"none of the {result.total} images could be read"
                            " and decoded")
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """`python -m pipeline evaluate ...`; returns the exit status."""
    return run_subcommand(_main, build_parser(), argv, "evaluate")


def _main(args: argparse.Namespace) -> int:
    if not args.input:
        raise EvaluateError("--input is required: a glob of images named "
                            "after their synset, or a .csv of uri,label")
    require_cloud_credentials({"--input": args.input, "--model": args.model,
                               "--labels": args.labels,
                               "--synsets": args.synsets})
    return _run(args)
