"""Step 4b: rows → Parquet files under the output directory, committed as
the job goes.

    <output>/labels-<run>-<digest>.parquet   labeled images (LABELS_SCHEMA)
    <output>/errors-<run>-<digest>.parquet   failed images (ERRORS_SCHEMA)
    <output>/_SUCCESS.json                   written last: the run completed
    <output>/_incomplete/                    files being written (ignore)

Why by hand: Beam's WriteToParquet commits every shard only when the whole
job finalizes, so a run killed at 99% leaves nothing; resumable runs
(`--resume`) need each chunk committed as soon as it is complete.

Each chunk (up to `rows_per_file` rows) is written under `_incomplete/` and
then renamed to its final name, so a partial file never appears under a
final name. The name's digest is a hash of the chunk's URIs: a retried
bundle that writes the same chunk again replaces it instead of adding a copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any, Dict, Iterable, List, Optional, Union

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import retry

from transforms import tally
from transforms.errors import METRICS_NAMESPACE, ErrorRecord
from transforms.schema import (ERRORS_PREFIX, ERRORS_SCHEMA, LABELS_PREFIX,
                               LABELS_SCHEMA, PARQUET_SUFFIX,
                               dictionary_columns, error_row,
                               statistics_columns)

_LOGGER = logging.getLogger(__name__)

INCOMPLETE_DIR = "_incomplete"
SUCCESS_FILE = "_SUCCESS.json"


def output_path(output: str, name: str) -> str:
    """`<output>/<name>` on any Beam filesystem."""
    return FileSystems.join(output.rstrip("/"), name)


def finished_files_pattern(output: str, prefix: str) -> str:
    """Glob of the committed files of one kind (never the incomplete ones)."""
    return output_path(output, f"{prefix}-*{PARQUET_SUFFIX}")


def new_run_id() -> str:
    """A short id naming this run's files (sortable by start time)."""
    import datetime  # pylint: disable=import-outside-toplevel
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


#: Rows per Parquet row group. Row groups are written as rows arrive, so
#: when a chunk (or the job) ends only its last row group is left to encode:
#: writing a whole 5,000-row chunk at the end of a job took ~0.2 s, with
#: the decode threads and the model already idle.
ROW_GROUP_ROWS = 1024


def parquet_writer(handle, schema: pa.Schema) -> pq.ParquetWriter:
    """The job's Parquet writer settings, for every file it writes."""
    return pq.ParquetWriter(handle, schema, compression="snappy",
                            use_dictionary=dictionary_columns(schema),
                            write_statistics=statistics_columns(schema))


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5)
def _rename_into_place(temporary: str, final: str) -> None:
    """Rename a written file to its final name; idempotent, so a retry after
    a half-done rename is safe."""
    if not FileSystems.exists(temporary) and FileSystems.exists(final):
        return  # renamed by an earlier attempt
    if FileSystems.exists(final):
        FileSystems.delete([final])  # same chunk written again: replace
    FileSystems.rename([temporary], [final])


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5)
def _commit(table: pa.Table, temporary: str, final: str) -> None:
    """Write `table` to `temporary`, then rename it to `final`; idempotent."""
    if not FileSystems.exists(temporary) or not FileSystems.exists(final):
        with FileSystems.create(temporary) as handle:
            with parquet_writer(handle, table.schema) as writer:
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    _rename_into_place(temporary, final)


def _temporary_path(output: str, name: str) -> str:
    return output_path(output, f"{INCOMPLETE_DIR}/{uuid.uuid4().hex}-{name}")


def _chunk_path(output: str, prefix: str, run_id: str,
                uris: Iterable[str]) -> str:
    """Final path of a chunk: named by a digest of its URIs, so that a chunk
    written again replaces its earlier copy instead of adding one."""
    digest = hashlib.sha1("\n".join(uris).encode("utf-8")).hexdigest()[:16]
    return output_path(output, f"{prefix}-{run_id}-{digest}{PARQUET_SUFFIX}")


class _StreamedFile:
    """A Parquet file under _incomplete/ that row groups are appended to."""

    def __init__(self, temporary: str, schema: pa.Schema):
        self.temporary = temporary
        self._handle = FileSystems.create(temporary)
        self._writer = parquet_writer(self._handle, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)

    def close(self) -> None:
        self._writer.close()
        self._handle.close()

    def abandon(self) -> None:
        for close in (self._writer.close, self._handle.close):
            try:
                close()
            except Exception:  # pylint: disable=broad-except
                pass  # already broken; the file is discarded anyway
        try:
            FileSystems.delete([self.temporary])
        except Exception:  # pylint: disable=broad-except
            pass  # a leftover in _incomplete/ is deleted by the next launch


Rows = Union[pa.RecordBatch, Dict[str, Any]]


class _WriteChunks(beam.DoFn):
    """Takes rows (RecordBatches, or single rows as dicts) and commits a
    file of exactly `rows_per_file` rows whenever it has that many, and the
    rest at the end of each bundle. Emits the final path of every
    committed file.

    A chunk's rows are written to its file under _incomplete/ a row group
    at a time as they arrive, and the file is renamed into place when the
    chunk is complete. The rows also stay in memory until then: if writing
    the stream fails, the whole chunk is written again with retries.
    """

    def __init__(self, output: str, prefix: str, schema: pa.Schema,
                 run_id: str, rows_per_file: int):
        self._output = output
        self._prefix = prefix
        self._schema = schema
        self._run_id = run_id
        self._rows_per_file = rows_per_file
        self._batches: List[pa.RecordBatch] = []  # the chunk so far
        self._buffered = 0      # rows in _batches
        self._streamed = 0      # leading _batches already in the stream
        self._unwritten = 0     # rows in the other ones
        self._stream: Optional[_StreamedFile] = None
        self._stream_failed = False
        self._files = Metrics.counter(METRICS_NAMESPACE,
                                      f"{prefix}_files_committed")

    def start_bundle(self):
        self._abandon_stream()  # left by a failed bundle, if any
        self._reset()

    def teardown(self):
        self._abandon_stream()

    def _reset(self):
        self._batches, self._buffered = [], 0
        self._streamed, self._unwritten = 0, 0
        self._stream, self._stream_failed = None, False

    def process(self, rows: Rows) -> Iterable[str]:
        if not isinstance(rows, pa.RecordBatch):
            rows = pa.RecordBatch.from_pylist([rows], schema=self._schema)
        while rows.num_rows:  # split so that every file is full
            part = rows.slice(0, self._rows_per_file - self._buffered)
            self._batches.append(part)
            self._buffered += part.num_rows
            self._unwritten += part.num_rows
            rows = rows.slice(part.num_rows)
            if self._buffered >= self._rows_per_file:
                yield self._flush()
            elif self._unwritten >= ROW_GROUP_ROWS:
                self._stream_rows()

    def finish_bundle(self):
        if self._buffered:
            path = self._flush()
            yield beam.utils.windowed_value.WindowedValue(
                path, beam.utils.timestamp.MIN_TIMESTAMP,
                [beam.transforms.window.GlobalWindow()])

    def _stream_rows(self) -> None:
        """Append the rows not yet written to the chunk's file."""
        if self._stream_failed or not self._unwritten:
            return
        try:
            if self._stream is None:
                self._stream = _StreamedFile(_temporary_path(
                    self._output, f"{self._prefix}-{self._run_id}"
                                  f"{PARQUET_SUFFIX}"), self._schema)
            self._stream.write(pa.Table.from_batches(
                self._batches[self._streamed:], self._schema))
            self._streamed, self._unwritten = len(self._batches), 0
        except Exception:  # pylint: disable=broad-except
            _LOGGER.warning("streaming %s rows to %s failed; the chunk will "
                            "be written whole when complete", self._prefix,
                            self._output, exc_info=True)
            self._abandon_stream()
            self._stream_failed = True

    def _abandon_stream(self) -> None:
        if self._stream is not None:
            self._stream.abandon()
            self._stream = None

    def _flush(self) -> str:
        table = pa.Table.from_batches(self._batches, self._schema)
        final = _chunk_path(self._output, self._prefix, self._run_id,
                            table.column("uri").to_pylist())
        self._stream_rows()
        if not self._stream_failed:
            try:
                self._stream.close()
                _rename_into_place(self._stream.temporary, final)
                self._stream = None
            except Exception:  # pylint: disable=broad-except
                _LOGGER.warning("committing the streamed chunk %s failed",
                                final, exc_info=True)
                self._stream_failed = True
        if self._stream_failed:
            self._abandon_stream()
            _commit(table, _temporary_path(self._output,
                                           final.rsplit("/", 1)[-1]), final)
        self._reset()
        self._files.inc()
        return final


class WriteParquetChunks(beam.PTransform):
    """Rows of `schema` (RecordBatches or dicts) → committed
    `<output>/<prefix>-<run>-*.parquet` files; returns the PCollection of
    their paths."""

    def __init__(self, output: str, prefix: str, schema: pa.Schema,
                 run_id: str, rows_per_file: int):
        super().__init__()
        self._args = (output, prefix, schema, run_id, rows_per_file)

    def expand(self, rows):
        return rows | "WriteChunks" >> beam.ParDo(_WriteChunks(*self._args))


class WriteLabels(WriteParquetChunks):
    """Label RecordBatches → <output>/labels-<run>-<digest>.parquet."""

    def __init__(self, output: str, run_id: str, rows_per_file: int):
        super().__init__(output, LABELS_PREFIX, LABELS_SCHEMA, run_id,
                         rows_per_file)


def _counted_error_row(record: ErrorRecord) -> dict:
    """Count an error (`images_failed_<stage>`) as it is written: the one
    place every error passes, whichever step and thread produced it."""
    Metrics.counter(METRICS_NAMESPACE, f"images_failed_{record.stage}").inc()
    Metrics.counter(METRICS_NAMESPACE,
                    f"errors:{record.stage}/{record.error_type}").inc()
    tally.add("failed")
    return error_row(record)


class WriteErrors(beam.PTransform):
    """ErrorRecords → <output>/errors-<run>-<digest>.parquet."""

    def __init__(self, output: str, run_id: str, rows_per_file: int):
        super().__init__()
        self._output = output
        self._run_id = run_id
        self._rows_per_file = rows_per_file

    def expand(self, errors):
        return (errors
                | "ToErrorRow" >> beam.Map(_counted_error_row)
                | "WriteChunks" >> WriteParquetChunks(
                    self._output, ERRORS_PREFIX, ERRORS_SCHEMA, self._run_id,
                    self._rows_per_file))


class _Finish(beam.DoFn):
    """Runs once, after every file is committed: makes sure a labels and an
    errors file exist (so "none" reads as an empty table, not a missing
    one) and writes the _SUCCESS.json marker."""

    def __init__(self, output: str, run_id: str, details: Dict[str, Any]):
        self._output = output
        self._run_id = run_id
        self._details = details

    def process(self, _once, files: List[str]) -> Iterable[str]:
        files = list(files)
        for prefix, schema in ((LABELS_PREFIX, LABELS_SCHEMA),
                               (ERRORS_PREFIX, ERRORS_SCHEMA)):
            if any(f"/{prefix}-{self._run_id}-" in f for f in files):
                continue
            final = output_path(self._output, f"{prefix}-{self._run_id}"
                                              f"-empty{PARQUET_SUFFIX}")
            _commit(schema.empty_table(), output_path(
                self._output, f"{INCOMPLETE_DIR}/{uuid.uuid4().hex}"), final)
            files.append(final)
        marker = {"run_id": self._run_id,
                  "files": sorted(f.rsplit("/", 1)[-1] for f in files),
                  **self._details}
        with FileSystems.create(output_path(self._output, SUCCESS_FILE)) as f:
            f.write(json.dumps(marker, indent=2).encode("utf-8"))
        incomplete = output_path(self._output, INCOMPLETE_DIR)
        if FileSystems.exists(incomplete):  # every chunk is committed now
            FileSystems.delete([incomplete])
        yield output_path(self._output, SUCCESS_FILE)


class FinishOutput(beam.PTransform):
    """PCollection of committed file paths → _SUCCESS.json, once all exist."""

    def __init__(self, output: str, run_id: str,
                 details: Optional[Dict[str, Any]] = None):
        super().__init__()
        self._output = output
        self._run_id = run_id
        self._details = details or {}

    def expand(self, files):
        # One element with every path as a side input: it runs once, after
        # all files are committed, and also when there are none. (ToList
        # does the same as a global combine: ~15 more transforms to build
        # and three more stages to run at the end of the job.)
        return (files.pipeline
                | "Once" >> beam.Create([None])
                | "Finish" >> beam.ParDo(
                    _Finish(self._output, self._run_id, self._details),
                    beam.pvalue.AsList(files)))
