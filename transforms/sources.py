"""Step 0: where the input URIs come from, as small transforms in the style
of Beam's `fileio`, each giving a `PCollection[str]` of URIs:

    GlobUris(pattern)    a glob on local disk or gs:// (others: Beam's match)
    ManifestUris(path)   a text/CSV file listing one URI per line

`InputSpec` names the input (one of the two) for the job and gives the
launch checks a sample of it, read without listing or reading everything.

A glob is listed without any process holding the whole listing: the pattern
is expanded into directories (GCS: delimiter listings, one element per
prefix) over `fanout_levels` levels, a `Reshuffle` after each level sends the
prefixes to different workers, and each prefix is listed as a separate
element that yields its matches as the pages arrive (GCS: 1,000 objects a
page; a GCS listing can be split by name range while it runs). Beam's `FileSystems.match` returns one list per pattern, and its GCS
listing keeps a set of every name it saw.

Matching follows Beam's glob exactly (`FileSystem.translate_pattern`): `*`
within a path segment, `**` across segments, `?` any one character, `[...]`
a character class; hidden files match like any other. Directories and GCS
"directory placeholder" objects (names ending in "/") are not inputs.
"""
from __future__ import annotations

import csv
import functools
import io
import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider

from transforms.errors import METRICS_NAMESPACE
from transforms.uris import absolute_uri

_LOGGER = logging.getLogger(__name__)

_MANIFEST_HEADERS = frozenset({"uri", "url", "path", "file", "filename"})

GCS_PAGE_SIZE = 1000  # the most objects GCS returns in one list page


def parse_manifest_line(line: str) -> Optional[str]:
    """Return the URI on one manifest line, or None for blanks/comments/header.

    A manifest is plain text (one URI per line) or CSV whose first column is
    the URI; a header whose first field is e.g. "uri" or "path" is skipped.
    A relative local path is made absolute against the current directory
    (transforms.uris.absolute_uri), so the output names each image fully.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    first = next(csv.reader([line]), [""])[0].strip()
    if not first or first.lower() in _MANIFEST_HEADERS:
        return None
    return absolute_uri(first)


def uri_scheme(uri: str) -> str:
    """The filesystem scheme of a URI ("gs", "s3", ...); "file" for paths."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.isalnum() else "file"


# ----------------------------------------------------------------- the glob
def _glob_tokens(pattern: str) -> List[str]:
    """The pattern as one regex per glob token; joined they are exactly
    Beam's `FileSystem.translate_pattern` (kept in step by a test)."""
    tokens, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                tokens.append(".*")
                i += 1
            else:
                tokens.append(r"[^/\\]*")
        elif c == "?":
            tokens.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                tokens.append(r"\[")
            else:
                stuff = pattern[i:j].replace("\\", "\\\\")
                i = j + 1
                if stuff[0] == "!":
                    stuff = "^" + stuff[1:]
                elif stuff[0] == "^":
                    stuff = "\\" + stuff
                tokens.append(f"[{stuff}]")
        else:
            tokens.append(re.escape(c))
    return tokens


class GlobPattern:
    """A glob compiled for listing: which files match, and which
    directories can hold a match (so others are never listed)."""

    def __init__(self, pattern: str):
        if "://" not in pattern and not os.path.isabs(pattern):
            # Beam walks absolute paths, so a relative glob would match none.
            pattern = os.path.join(os.getcwd(), pattern)
        if pattern.endswith("/"):
            pattern += "*"  # as Beam's match does
        self.pattern = pattern
        self.scheme = uri_scheme(pattern)
        self.literal = re.match(r"^[^[*?]*", pattern).group(0)
        tokens = _glob_tokens(pattern[len(self.literal):])
        self._regex = re.compile(
            r"(?ms)" + re.escape(self.literal) + "".join(tokens) + r"\Z")
        # Every prefix of a match: the tokens as nested optional groups.
        nested = ""
        for token in reversed(tokens):
            nested = f"(?:{token}{nested})?"
        self._rest_prefix = re.compile(r"(?ms)" + nested + r"\Z")

    @property
    def root(self) -> str:
        """Where listing starts: the literal part (a name prefix, listed
        from the directory it is in)."""
        return self.literal

    def matches(self, uri: str) -> bool:
        return self._regex.match(uri) is not None

    def may_contain(self, directory: str) -> bool:
        """Whether some path under `directory` (ending in "/") can match."""
        if len(directory) <= len(self.literal):
            return self.literal.startswith(directory)
        return (directory.startswith(self.literal) and self._rest_prefix
                .match(directory, len(self.literal)) is not None)

    def __reduce__(self):
        return GlobPattern, (self.pattern,)


class Entry(NamedTuple):
    """One name in a directory listing: a file, or a directory ending in
    "/"."""
    uri: str
    is_dir: bool


_LISTING_ERRORS = Metrics.counter(METRICS_NAMESPACE, "listing_errors")


def _local_level(directory: str) -> Iterator[Entry]:
    """The entries of one local directory, as os.scandir yields them.

    Like Beam's os.walk: a symlink to a directory is not descended into,
    and a dangling symlink is no file."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                path = os.path.join(directory, entry.name)
                try:
                    if entry.is_dir():
                        if not entry.is_symlink():
                            yield Entry(path + "/", True)
                    elif not entry.is_symlink() or os.path.exists(path):
                        yield Entry(path, False)
                except OSError as exc:
                    _LOGGER.warning("cannot list %s: %s", path, exc)
                    _LISTING_ERRORS.inc()
    except FileNotFoundError:
        return
    except OSError as exc:
        # Beam's os.walk skips these silently; say so and count it.
        _LOGGER.warning("cannot list directory %s: %s", directory, exc)
        _LISTING_ERRORS.inc()


@functools.lru_cache(maxsize=None)
def _gcs_client():
    """The storage client Beam's own GCS filesystem would use (its default
    credentials; options from {}, not from this process's command line)."""
    from apache_beam.io.gcp import gcsio  # pylint: disable=import-outside-toplevel
    return gcsio.GcsIO(pipeline_options={}).client


def _gcs_split(uri: str) -> Tuple[str, str]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    return bucket, name


def _gcs_pages(prefix: str, delimiter: Optional[str],
               names: Optional["NameRange"] = None):
    """The pages of one GCS listing under `prefix`, in name order (only
    names in `names`, when given)."""
    bucket, name = _gcs_split(prefix)
    blobs = _gcs_client().list_blobs(
        bucket, prefix=name or None, delimiter=delimiter,
        start_offset=names.start or None if names else None,
        end_offset=names.stop if names else None,
        page_size=GCS_PAGE_SIZE, fields=(
            "items(name),prefixes,nextPageToken" if delimiter else
            "items(name),nextPageToken"))
    for page in blobs.pages:
        yield bucket, page
        # The iterator keeps every prefix it saw: keep only this page's.
        blobs.prefixes.clear()


def _gcs_level(prefix: str) -> Iterator[Entry]:
    """Objects and sub-prefixes directly under `prefix`, page by page."""
    for bucket, page in _gcs_pages(prefix, "/"):
        for blob in page:
            if not blob.name.endswith("/"):  # a directory placeholder
                yield Entry(f"gs://{bucket}/{blob.name}", False)
        for sub in page.prefixes:
            yield Entry(f"gs://{bucket}/{sub}", True)


def list_level(glob: GlobPattern, prefix: str) -> Iterator[Entry]:
    """Files under `prefix` (one level down) that match, and directories
    that can hold a match, as storage returns them."""
    if glob.scheme == "gs":
        entries = _gcs_level(prefix)
    else:
        entries = _local_level(prefix[:prefix.rfind("/") + 1] or "/")
    for entry in entries:
        if not entry.uri.startswith(prefix):
            continue
        if entry.is_dir:
            if glob.may_contain(entry.uri):
                yield entry
        elif glob.matches(entry.uri):
            yield entry


def list_tree(glob: GlobPattern, prefix: str) -> Iterator[str]:
    """Every match under `prefix`, yielded as it is listed: GCS in one flat
    listing (fewest requests), local disk depth-first, entering only
    directories that can hold a match. Holds one page (GCS) or one open
    directory per level (local), never the listing."""
    if glob.scheme == "gs":
        for bucket, page in _gcs_pages(prefix, None):
            for blob in page:
                uri = f"gs://{bucket}/{blob.name}"
                if not blob.name.endswith("/") and glob.matches(uri):
                    yield uri
        return
    levels = [list_level(glob, prefix)]
    while levels:
        for entry in levels[-1]:
            if entry.is_dir:
                levels.append(list_level(glob, entry.uri))
                break
            yield entry.uri
        else:
            levels.pop()


def iter_matches(pattern: str) -> Iterator[str]:
    """Every match of `pattern`, in one process, yielded as listed (stop
    early to sample). Schemes other than local and gs:// go through Beam's
    FileSystems.match, which lists them whole."""
    glob = GlobPattern(pattern)
    if glob.scheme not in ("file", "gs"):
        for metadata in FileSystems.match([glob.pattern])[0].metadata_list:
            yield metadata.path
        return
    yield from list_tree(glob, glob.root)


# ------------------------------------ splitting one GCS listing by name range
class NameRange(NamedTuple):
    """Object names from `start` (inclusive) to `stop` (exclusive; None:
    to the end of the bucket), in GCS's order (UTF-8 bytes)."""
    start: str
    stop: Optional[str]


def names_under(prefix: str) -> NameRange:
    """Every object name that starts with `prefix`."""
    stripped = prefix.rstrip("\U0010ffff")
    return NameRange(prefix, stripped[:-1] + chr(ord(stripped[-1]) + 1)
                     if stripped else None)


_FIRST, _LAST = 0x20, 0x7E  # printable ASCII: what split points use
_DIGITS = _LAST - _FIRST + 2  # 0 ends a name; 1.. are the characters
_SPLIT_WIDTH = 8               # characters after the common prefix


def _split_digits(name: str, start: int) -> int:
    value = 0
    for i in range(start, start + _SPLIT_WIDTH):
        code = ord(name[i]) if i < len(name) else None
        digit = 0 if code is None else min(max(code - _FIRST + 1, 1),
                                           _DIGITS - 1)
        value = value * _DIGITS + digit
    return value


def _span(low: str, stop: Optional[str]) -> Tuple[int, int, int]:
    """(common prefix length, low, stop) of a name range as numbers: the
    characters after the common prefix as digits."""
    high = stop if stop is not None else chr(_LAST + 1) * (len(low) + 1)
    common = 0
    while common < min(len(low), len(high)) and \
            low[common] == high[common]:
        common += 1
    return common, _split_digits(low, common), _split_digits(high, common)


def name_fraction(name: str, start: str, stop: Optional[str]) -> float:
    """How far `name` lies from `start` to `stop`, in [0, 1], on the same
    scale split_name uses."""
    common, lower, upper = _span(start, stop)
    if upper <= lower:
        return 0.0
    return min(max((_split_digits(name, common) - lower) / (upper - lower),
                   0.0), 1.0)


def split_name(low: str, stop: Optional[str], fraction: float
               ) -> Optional[str]:
    """A name about `fraction` of the way from `low` to `stop` (None: the
    end of the bucket), strictly between them and made of printable ASCII
    (a valid GCS offset); None if there is none.

    By hand: Beam's LexicographicKeyRangeTracker interpolates over all
    byte values, and its points between ASCII names are not valid UTF-8."""
    common, lower, upper = _span(low, stop)
    point = lower + max(1, int((upper - lower) * fraction))
    if point >= upper:
        return None
    characters = []
    for _ in range(_SPLIT_WIDTH):
        point, digit = divmod(point, _DIGITS)
        characters.append(digit)
    name = low[:common]
    for digit in reversed(characters):
        if digit == 0:
            break
        name += chr(_FIRST + digit - 1)
    if name <= low:
        name = low + chr(_FIRST)  # the least printable name after low
    if stop is not None and name >= stop:
        return None
    return name


class _NameRangeTracker(RestrictionTracker):
    """Claims object names in listing order; a split hands the names after
    a split point to another worker (Dataflow's dynamic work rebalancing),
    so one huge prefix is not listed by one worker to the end."""

    def __init__(self, names: NameRange):
        self._names = names
        self._last: Optional[str] = None
        self._done = False

    def current_restriction(self) -> NameRange:
        return self._names

    def try_claim(self, name: Optional[str]) -> bool:
        """`name`: the next name listed; None: the listing has ended."""
        stop = self._names.stop
        if name is None or (stop is not None and name >= stop):
            self._done = True
            return False
        self._last = name
        return True

    def try_split(self, fraction_of_remainder: float):
        if self._done:
            return None
        low = self._names.start if self._last is None else self._last
        split = split_name(low, self._names.stop, fraction_of_remainder)
        if split is None:
            return None
        primary = NameRange(self._names.start, split)
        residual = NameRange(split, self._names.stop)
        self._names = primary
        return primary, residual

    def check_done(self) -> None:
        if not self._done:
            raise ValueError(f"the listing of {self._names} did not end")

    def current_progress(self) -> RestrictionProgress:
        done = 0.0 if self._last is None else name_fraction(
            self._last, self._names.start, self._names.stop)
        return RestrictionProgress(completed=done, remaining=1.0 - done)

    def is_bounded(self) -> bool:
        return True


class _NamesUnder(RestrictionProvider):
    """A GCS prefix's restriction: the range of names under it."""

    def initial_restriction(self, prefix: str) -> NameRange:
        return names_under(_gcs_split(prefix)[1])

    def create_tracker(self, names: NameRange) -> _NameRangeTracker:
        return _NameRangeTracker(names)

    def restriction_size(self, prefix: str, names: NameRange) -> float:
        return 1.0  # unknown until listed


def claim_in_order(entries: Iterable[Tuple[str, bool]],
                   names: "_NameRangeTracker"
                   ) -> Iterator[Tuple[str, bool]]:
    """The (name, is_dir) entries of a listing, in name order, that belong
    to the tracker's range, each claimed before it is yielded; the tracker
    is done when they end or leave the range. A delimiter listing that
    starts inside a sub-prefix returns that sub-prefix (below the range's
    start): the range before this one has it."""
    start = names.current_restriction().start
    for name, is_dir in entries:
        if name < start:
            continue
        if not names.try_claim(name):
            return
        yield name, is_dir
    names.try_claim(None)


def _gcs_entries(prefix: str, subdirs: bool, listed: NameRange
                 ) -> Iterator[Tuple[str, bool]]:
    """(name, is_dir) under a gs:// prefix within `listed`, in name order:
    objects, and with `subdirs` the sub-prefixes (a delimiter listing)."""
    for _, page in _gcs_pages(prefix, "/" if subdirs else None, listed):
        yield from sorted([(blob.name, False) for blob in page] +
                          [(sub, True) for sub in page.prefixes])


class _ListGcs(beam.DoFn):
    """A gs:// prefix → its matching objects (main output) and, with
    `subdirs`, the sub-prefixes that can hold a match (SUBDIRS), as GCS
    lists them by name; splittable by name range."""

    def __init__(self, glob: "GlobPattern", subdirs: bool):
        self._glob = glob
        self._subdirs = subdirs

    def process(self, prefix: str,
                names=beam.DoFn.RestrictionParam(_NamesUnder())):
        head = f"gs://{_gcs_split(prefix)[0]}/"
        entries = _gcs_entries(prefix, self._subdirs,
                               names.current_restriction())
        for name, is_dir in claim_in_order(entries, names):
            uri = head + name
            if is_dir:
                if self._glob.may_contain(uri):
                    yield beam.pvalue.TaggedOutput(_SUBDIRS, uri)
            elif not name.endswith("/") and self._glob.matches(uri):
                yield uri


# ------------------------------------------------------------ the transforms
_SUBDIRS = "subdirs"


class _ListLevel(beam.DoFn):
    """prefix → its matching files (main output) and the directories under
    it that can hold a match (SUBDIRS), each yielded as listed."""

    def __init__(self, glob: GlobPattern):
        self._glob = glob

    def process(self, prefix: str):
        for entry in list_level(self._glob, prefix):
            if entry.is_dir:
                yield beam.pvalue.TaggedOutput(_SUBDIRS, entry.uri)
            else:
                yield entry.uri


class GlobUris(beam.PTransform):
    """Every file matching a glob, as a `PCollection[str]` of URIs.

    The first `fanout_levels` directory levels below the glob's literal part
    are listed one directory per element, each level spread over the
    workers by a Reshuffle; the directories below them are listed whole,
    one element each. No element holds more than a page of the listing, so
    memory does not grow with the number of files. On gs:// each listing
    is a splittable DoFn over a range of names, so the runner can hand the
    rest of a huge prefix to other workers while it is listed (Dataflow's
    dynamic work rebalancing); a local directory is listed by one worker.
    Order within a directory is the storage's (GCS: by name; local:
    os.scandir's).

    Local and gs:// globs are listed this way; other filesystems go through
    Beam's FileSystems.match in one element.
    """

    def __init__(self, pattern: str, fanout_levels: int = 2):
        super().__init__()
        self._glob = GlobPattern(pattern)
        self._fanout_levels = fanout_levels

    def expand(self, pbegin):
        glob = self._glob
        if glob.scheme not in ("file", "gs"):
            return (pbegin | "Pattern" >> beam.Create([glob.pattern])
                    | "Match" >> beam.FlatMap(iter_matches))
        gcs = glob.scheme == "gs"
        prefixes = pbegin | "Root" >> beam.Create([glob.root])
        found = []
        for level in range(self._fanout_levels):
            listed = prefixes | f"ListLevel{level}" >> beam.ParDo(
                _ListGcs(glob, subdirs=True) if gcs else _ListLevel(glob)
            ).with_outputs(_SUBDIRS, main="uris")
            found.append(listed.uris)
            prefixes = listed[_SUBDIRS] | f"Spread{level}" >> beam.Reshuffle()
        found.append(prefixes | "ListTrees" >> (
            beam.ParDo(_ListGcs(glob, subdirs=False)) if gcs else
            beam.FlatMap(_tree, glob)))
        return tuple(found) | "Matches" >> beam.Flatten()


def _tree(prefix: str, glob: GlobPattern) -> Iterator[str]:
    return list_tree(glob, prefix)


def _uris_on_line(line: str) -> List[str]:
    uri = parse_manifest_line(line)
    return [uri] if uri else []


class ManifestUris(beam.PTransform):
    """The URIs a manifest lists (see parse_manifest_line), as a
    `PCollection[str]`.

    The manifest is read by Beam's ReadFromText, which splits it into byte
    ranges read on different workers; no process reads it whole. URIs are
    not de-duplicated here: the job's chunking step groups URIs by a hash
    of the URI and drops duplicates within each group."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pbegin):
        return (pbegin
                | "ReadManifest" >> beam.io.ReadFromText(self._path)
                | "ParseManifest" >> beam.FlatMap(_uris_on_line))


# ------------------------------------------------------------ the input spec
def manifest_uris(path: str) -> Iterator[str]:
    """The URIs of a manifest in order, read line by line (any Beam
    filesystem; compressed as ReadFromText would read it)."""
    with FileSystems.open(path) as raw:
        for line in io.TextIOWrapper(raw, encoding="utf-8", errors="replace"):
            uri = parse_manifest_line(line)
            if uri:
                yield uri


class InputSample(NamedTuple):
    """The first URIs of an input, and whether they are all of it."""
    uris: Tuple[str, ...]
    complete: bool

    @property
    def count(self) -> Optional[int]:
        """The number of inputs when known (the sample is all of them)."""
        return len(self.uris) if self.complete else None


@dataclass(frozen=True)
class InputSpec:
    """The job's input: a glob (`pattern`) or a manifest, and the
    filesystems its URIs may be on (default: the input's own)."""
    pattern: Optional[str] = None
    manifest: Optional[str] = None
    allowed_schemes: Tuple[str, ...] = field(default=())

    def __post_init__(self):
        if (self.pattern is None) == (self.manifest is None):
            raise ValueError("give exactly one of pattern or manifest")
        object.__setattr__(self, "allowed_schemes", tuple(
            self.allowed_schemes) or (uri_scheme(self.location),))

    @property
    def location(self) -> str:
        return self.pattern if self.pattern is not None else self.manifest

    @property
    def flag(self) -> str:
        """The command-line option that names this input."""
        return "--input" if self.pattern is not None else "--input_manifest"

    def allows(self, uri: str) -> bool:
        return uri_scheme(uri) in self.allowed_schemes

    def uris(self) -> beam.PTransform:
        """The transform that gives every input URI."""
        return (GlobUris(self.pattern) if self.pattern is not None
                else ManifestUris(self.manifest))

    def sample(self, k: int) -> InputSample:
        """The first k distinct URIs as listed or as the manifest gives
        them; listing or reading stops there."""
        uris = iter_matches(self.pattern) if self.pattern is not None \
            else manifest_uris(self.manifest)
        first = {}
        for uri in uris:
            first[uri] = None
            if len(first) > k:
                break
        complete = len(first) <= k
        return InputSample(tuple(itertools.islice(first, k)), complete)


__all__ = ["GlobUris", "ManifestUris", "InputSpec", "InputSample",
           "GlobPattern", "iter_matches", "list_level", "list_tree",
           "manifest_uris", "parse_manifest_line", "uri_scheme"]
