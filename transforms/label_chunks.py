"""URIs → fixed chunks → one DoFn call per chunk: read, decode, classify and
commit its Parquet files.

A chunk is the set of URIs whose hash falls in one of ceil(inputs /
rows_per_file) buckets: it depends on the URIs alone, never on bundles, so
a retried or split bundle redoes whole chunks and each chunk's files are
published by exactly one successful attempt (transforms/write.py). The
grouping also removes repeated URIs and, on --resume, URIs already done.

Beam sees one element per chunk from here on, not one per image: per-image
work runs in plain functions (transforms/labeling.py).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
from dataclasses import dataclass
from typing import (Any, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.counting import count
from transforms.classify import SharedClassifier
from transforms.errors import (STAGE_CLASSIFY, STAGE_READ, ErrorRecord,
                               error_record)
from transforms.cores import (cores_per_process, memory_per_process,
                             share_machine)
from transforms.imaging import (DECODE_THREAD_NICENESS, ImageBytes,
                                decode_batch, warm_up)
from transforms.labeling import (ChunkCounts, batches_of,
                                 lower_this_thread_priority, pipelined,
                                 process_file_slots, process_pool,
                                 reads_within_slots)
from transforms.read import check_uri_allowed, read_file_bytes
from transforms.rows import label_batch
from transforms.write import ChunkWriter

_LOGGER = logging.getLogger(__name__)

Chunk = Tuple[str, List[str]]  # (chunk id, its URIs, sorted)


def chunk_count(inputs: int, rows_per_file: int) -> int:
    """Chunks for `inputs` URIs: about rows_per_file URIs each."""
    return max(1, math.ceil(inputs / rows_per_file))


def chunk_of(uri: str, chunks: int) -> str:
    """The chunk id of a URI: a stable hash (the same in every process and
    run), modulo the chunk count."""
    digest = hashlib.blake2b(uri.encode("utf-8"), digest_size=8).digest()
    return f"c{int.from_bytes(digest, 'big') % chunks:06d}"


class _GroupByChunkInBundle(beam.DoFn):
    """URIs → (chunk id, [URIs]): the URIs of one bundle grouped by chunk
    before the shuffle, so that it moves about one element per chunk and
    bundle instead of one per URI (as Beam's combiner lifting does for a
    combine). Buffers at most `max_buffered` URIs."""

    def __init__(self, rows_per_file: int, max_buffered: int = 10_000):
        self._rows_per_file = rows_per_file
        self._max_buffered = max_buffered
        self._groups: Dict[str, List[str]] = {}
        self._buffered = 0

    def start_bundle(self):
        self._groups, self._buffered = {}, 0

    def process(self, uri: str, inputs: int
                ) -> Iterable[Tuple[str, List[str]]]:
        chunk = chunk_of(uri, chunk_count(inputs, self._rows_per_file))
        self._groups.setdefault(chunk, []).append(uri)
        self._buffered += 1
        if self._buffered >= self._max_buffered:
            yield from self._flush()

    def finish_bundle(self) -> Iterable[WindowedValue]:
        for group in self._flush():
            yield WindowedValue(group, MIN_TIMESTAMP, [GlobalWindow()])

    def _flush(self) -> Iterator[Tuple[str, List[str]]]:
        groups, self._groups, self._buffered = self._groups, {}, 0
        yield from groups.items()


class _KeepUndone(beam.DoFn):
    """(chunk, {"inputs": lists of URIs, "done": lists of URIs}) → (chunk,
    sorted URIs that are not done), each URI once."""

    def process(self, grouped) -> Iterable[Chunk]:
        chunk, groups = grouped
        inputs = set(itertools.chain.from_iterable(groups["inputs"]))
        undone = inputs.difference(
            itertools.chain.from_iterable(groups["done"]))
        count("images_skipped_done", len(inputs) - len(undone))
        if undone:
            yield chunk, sorted(undone)


class ChunkUris(beam.PTransform):
    """PCollection[str] of URIs (repeats allowed) → PCollection[Chunk].

    `done`: URIs already in committed files (--resume), left out.
    `max_buffered`: URIs a worker groups by chunk before it flushes them
    to the shuffle."""

    def __init__(self, rows_per_file: int, done=None,
                 max_buffered: int = 10_000):
        super().__init__()
        self._rows_per_file = rows_per_file
        self._done = done
        self._max_buffered = max_buffered

    def expand(self, uris):
        count = beam.pvalue.AsSingleton(
            uris | "Count" >> beam.combiners.Count.Globally())
        done = self._done if self._done is not None else (
            uris.pipeline | "NoneDone" >> beam.Create([]))
        return ({"inputs": uris | "KeyInputs" >> beam.ParDo(
                    _GroupByChunkInBundle(self._rows_per_file,
                                          self._max_buffered), count),
                 "done": done | "KeyDone" >> beam.ParDo(
                    _GroupByChunkInBundle(self._rows_per_file,
                                          self._max_buffered), count)}
                | "Group" >> beam.CoGroupByKey()
                | "KeepUndone" >> beam.ParDo(_KeepUndone()))


@dataclass(frozen=True)
class ChunkSettings:
    """What labeling a chunk needs to know (typed values from the config)."""
    output: str
    run_id: str
    decode: Any                      # imaging DecodeSettings
    max_file_bytes: int
    allowed_schemes: Tuple[str, ...]
    batch_size: int
    decode_threads: Optional[int]    # None: this process's cores + 1
    read_threads: int                # 1: read on the decode threads
    backend: str
    processes_per_machine: int = 1   # cores.ONE_PER_CORE: one per core
    max_bytes_in_flight: Optional[int] = None  # None: a quarter of the
    # process's share of memory

    def threads(self) -> int:
        """Decode threads: given, or this process's share of the cores and
        one more (decoding overlaps the model on the bundle thread)."""
        return self.decode_threads or cores_per_process() + 1

    def file_slots(self) -> int:
        """Files read and not yet decoded at once in this process."""
        budget = self.max_bytes_in_flight or memory_per_process() // 4
        return max(1, budget // self.max_file_bytes)


def batches_in_flight(decode_threads: int) -> int:
    """Batches read and decoded ahead of the model: two per decode thread
    and two more, so a thread that finishes while the model runs on an
    older batch starts the next one at once."""
    return 2 * (decode_threads + 1)


class _LabelChunk(beam.DoFn):
    """Chunk → its commit record (see transforms/write.py), after its files
    are published. The model is loaded once per process (Beam's Shared);
    decode threads are one pool per process."""

    def __init__(self, settings: ChunkSettings, handler):
        self._settings = settings
        self._handler = handler
        self._classifier = SharedClassifier(handler)
        self._model = None

    def setup(self):
        settings = self._settings
        share_machine(settings.processes_per_machine)  # before pools, model
        self._model = self._classifier.acquire()
        self._threads = settings.threads()
        self._decode_pool = process_pool(
            "decode", self._threads,
            lambda: lower_this_thread_priority(DECODE_THREAD_NICENESS))
        self._read_pool = (process_pool("read", settings.read_threads)
                           if settings.read_threads > 1 else None)
        self._slots = process_file_slots(settings.file_slots())
        warm_up()  # decoder warnings go to the debug log and error rows

    def _read(self, uri: str):
        settings = self._settings
        try:
            check_uri_allowed(uri, settings.allowed_schemes)
            return ImageBytes(uri, read_file_bytes(uri,
                                                   settings.max_file_bytes))
        except Exception as exc:  # pylint: disable=broad-except
            _LOGGER.debug("read failed for %s", uri, exc_info=True)
            return error_record(uri, STAGE_READ, exc)

    def _prepare(self, uris: Sequence[str]):
        """On a decode thread: read and decode one batch, each file decoded
        as soon as it is read (its bytes are dropped then)."""
        read_errors: List[ErrorRecord] = []
        images = _LazyImages(len(uris), reads_within_slots(
            uris, self._read, self._slots, read_errors, self._read_pool,
            self._settings.read_threads))
        decoded, errors = decode_batch(images, self._settings.decode)
        return decoded, read_errors + errors

    def _classify(self, prepared):
        decoded, errors = prepared
        return classify_rows(self._handler, self._model, decoded, errors,
                             self._settings.backend)

    def process(self, chunk: Chunk) -> Iterable[Dict[str, Any]]:
        self._classifier.report_load()
        chunk_id, uris = chunk
        settings = self._settings
        writer = ChunkWriter(settings.output, settings.run_id, chunk_id)
        try:
            for rows, errors in pipelined(
                    batches_of(uris, settings.batch_size), self._prepare,
                    self._classify, self._decode_pool,
                    batches_in_flight(self._threads)):
                if rows is not None:
                    writer.add_rows(rows)
                writer.add_errors(errors)
            record = writer.commit(
                ChunkCounts.of(writer.rows, writer.errors)._asdict())
        except BaseException:
            writer.abandon()
            raise
        if record is not None:
            count_committed(record)
            yield record


def classify_rows(handler, model, decoded, errors: List[ErrorRecord],
                  backend: str):
    """On the bundle thread: the model on one decoded batch → (label rows or
    None, errors). A batch the model refuses becomes one classify-stage
    error per image, so a failed batch loses nothing."""
    if decoded is None:
        return None, errors
    try:
        result = handler.run_inference(decoded, model)[0]
        return label_batch(result, backend), errors
    except Exception as exc:  # pylint: disable=broad-except
        _LOGGER.warning("classifying a batch of %d images failed: %s",
                        len(decoded.uris), exc, exc_info=True)
        return None, errors + [error_record(uri, STAGE_CLASSIFY, exc)
                               for uri in decoded.uris]


def count_committed(record: Dict[str, Any]) -> None:
    """The counts of a committed chunk, from its commit record: the runner
    keeps only the counters of successful attempts, so each image is
    counted once."""
    count("images_labeled", record["labeled"])
    count("chunks_committed")
    for kind, images in record["errors_by_type"].items():
        count(f"images_failed_{kind.split('/', 1)[0]}", images)
        count(f"errors:{kind}", images)


class _LazyImages:
    """The files of a batch as decode_batch takes them: its length up front
    (to size the pixel array), the files one at a time as they are read."""

    def __init__(self, length: int, images: Iterator[Any]):
        self._length = length
        self._images = images

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Any]:
        return self._images


class LabelChunks(beam.PTransform):
    """PCollection[Chunk] → PCollection of commit records, one per chunk."""

    def __init__(self, settings: ChunkSettings, handler):
        super().__init__()
        self._settings = settings
        self._handler = handler

    def expand(self, chunks):
        return chunks | "LabelChunk" >> beam.ParDo(
            _LabelChunk(self._settings, self._handler))

