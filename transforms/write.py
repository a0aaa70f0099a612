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
                               dictionary_columns, error_row)

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


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5)
def _commit(table: pa.Table, temporary: str, final: str) -> None:
    """Write `table` to `temporary`, then rename it to `final`; idempotent,
    so a retry after a half-done rename is safe."""
    if not FileSystems.exists(temporary) or not FileSystems.exists(final):
        with FileSystems.create(temporary) as handle:
            pq.write_table(table, handle, compression="snappy",
                           use_dictionary=dictionary_columns(table.schema))
    if FileSystems.exists(final):
        FileSystems.delete([final])  # same chunk written again: replace
    FileSystems.rename([temporary], [final])


def write_chunk(table: pa.Table, output: str, prefix: str,
                run_id: str) -> str:
    """Commit one chunk of rows as a Parquet file; return its final path."""
    digest = hashlib.sha1("\n".join(table.column("uri").to_pylist())
                          .encode("utf-8")).hexdigest()[:16]
    name = f"{prefix}-{run_id}-{digest}{PARQUET_SUFFIX}"
    final = output_path(output, name)
    temporary = output_path(output, f"{INCOMPLETE_DIR}/{uuid.uuid4().hex}-"
                                    f"{name}")
    _commit(table, temporary, final)
    return final


Rows = Union[pa.RecordBatch, Dict[str, Any]]


class _WriteChunks(beam.DoFn):
    """Buffers rows (RecordBatches, or single rows as dicts) and commits a
    file of exactly `rows_per_file` rows whenever it has that many, and the
    rest at the end of each bundle. Emits the final path of every
    committed file."""

    def __init__(self, output: str, prefix: str, schema: pa.Schema,
                 run_id: str, rows_per_file: int):
        self._output = output
        self._prefix = prefix
        self._schema = schema
        self._run_id = run_id
        self._rows_per_file = rows_per_file
        self._batches: List[pa.RecordBatch] = []
        self._rows: List[Dict[str, Any]] = []
        self._buffered = 0
        self._files = Metrics.counter(METRICS_NAMESPACE,
                                      f"{prefix}_files_committed")

    def start_bundle(self):
        self._reset()

    def _reset(self):
        self._batches, self._rows, self._buffered = [], [], 0

    def process(self, rows: Rows) -> Iterable[str]:
        if not isinstance(rows, pa.RecordBatch):
            self._rows.append(rows)
            self._buffered += 1
        else:
            while rows.num_rows:  # split so that every file is full
                room = self._rows_per_file - self._buffered
                self._batches.append(rows.slice(0, room))
                self._buffered += min(room, rows.num_rows)
                rows = rows.slice(room)
                if self._buffered >= self._rows_per_file:
                    yield self._flush()
        if self._buffered >= self._rows_per_file:
            yield self._flush()

    def finish_bundle(self):
        if self._buffered:
            path = self._flush()
            yield beam.utils.windowed_value.WindowedValue(
                path, beam.utils.timestamp.MIN_TIMESTAMP,
                [beam.transforms.window.GlobalWindow()])

    def _flush(self) -> str:
        tables = [pa.Table.from_batches(self._batches, self._schema)] \
            if self._batches else []
        if self._rows:
            tables.append(pa.Table.from_pylist(self._rows, self._schema))
        self._reset()
        path = write_chunk(pa.concat_tables(tables), self._output,
                           self._prefix, self._run_id)
        self._files.inc()
        return path


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

    def process(self, files: List[str]) -> Iterable[str]:
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
        return (files
                | "AllFiles" >> beam.combiners.ToList()
                | "Finish" >> beam.ParDo(_Finish(self._output, self._run_id,
                                                 self._details)))
