"""Step 4: rows → Parquet under the output directory, exactly once per input
under retries, split bundles and duplicate attempts.

    <output>/labels-<run>-<chunk>-<attempt>.parquet   labeled images
    <output>/errors-<run>-<chunk>-<attempt>.parquet   failed images
    <output>/_attempts/<run>-<chunk>-<attempt>.json   an attempt's commit record
    <output>/_incomplete/                             files being written
    <output>/_SUCCESS.json                            the manifest, written last

How it stays exactly-once (the model is Beam's WriteFiles: temporary files
unique per attempt, published by one finalize step; here each chunk is
published as soon as it is complete, so a killed job keeps its work):
  * A chunk is a fixed set of URIs (transforms/label_chunks.py), labeled and
    written by one DoFn call, so a retry or a split bundle redoes whole
    chunks and never mixes them.
  * Each attempt writes under `_incomplete/`, renames its files to names
    unique to the attempt, then writes its commit record. A record always
    names complete files.
  * The finish step runs after every chunk. Only successful attempts' records
    reach it (the runner drops the outputs of failed ones); it deletes every
    other file and record, then writes `_SUCCESS.json` listing what it kept.
  * An attempt still running after the finish began (a duplicate of a chunk
    that already succeeded) finds the run's `.finishing` flag after its
    rename and deletes what it published.
  * After a killed job, --resume keeps one committed attempt per chunk (the
    first by attempt id) and labels only URIs that no kept file holds.
"""
from __future__ import annotations

import datetime
import json
import logging
import re
import uuid
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import retry

from transforms.errors import ErrorRecord
from transforms.labeling import merge_counts
from transforms.manifest import output_path, read_manifest, write_manifest
from transforms.schema import (ERRORS_PREFIX, ERRORS_SCHEMA, LABELS_PREFIX,
                               LABELS_SCHEMA, PARQUET_SUFFIX,
                               dictionary_columns, error_row,
                               statistics_columns)

_LOGGER = logging.getLogger(__name__)

INCOMPLETE_DIR = "_incomplete"
ATTEMPTS_DIR = "_attempts"
RECORD_SUFFIX = ".json"
FINISHING_SUFFIX = ".finishing"
EMPTY_CHUNK = "empty"

#: Rows per Parquet row group: rows are streamed to the file a row group at a
#: time, so committing a chunk only encodes its last group.
ROW_GROUP_ROWS = 1024

_NAME = re.compile(r"^(labels|errors)-(.+)-(c\d+|empty)-([0-9a-f]+)"
                   + re.escape(PARQUET_SUFFIX) + "$")


class ChunkFile(NamedTuple):
    """The parts of a committed file's name."""
    prefix: str
    run_id: str
    chunk: str
    attempt: str


def parse_file_name(name: str) -> Optional[ChunkFile]:
    """`labels-<run>-<chunk>-<attempt>.parquet` → its parts; None for any
    other name (e.g. files of an older layout)."""
    match = _NAME.match(name.rsplit("/", 1)[-1])
    return ChunkFile(*match.groups()) if match else None


def chunk_file_name(prefix: str, run_id: str, chunk: str,
                    attempt: str) -> str:
    return f"{prefix}-{run_id}-{chunk}-{attempt}{PARQUET_SUFFIX}"


def record_name(run_id: str, chunk: str, attempt: str) -> str:
    """A commit record's path relative to the output directory."""
    return f"{ATTEMPTS_DIR}/{run_id}-{chunk}-{attempt}{RECORD_SUFFIX}"


def record_path(output: str, run_id: str, chunk: str, attempt: str) -> str:
    return output_path(output, record_name(run_id, chunk, attempt))


def finishing_path(output: str, run_id: str) -> str:
    return output_path(output, f"{ATTEMPTS_DIR}/{run_id}{FINISHING_SUFFIX}")


def finished_files_pattern(output: str, prefix: str) -> str:
    """Glob of the published files of one kind (never the incomplete ones).
    Complete and free of repeats once `_SUCCESS.json` exists."""
    return output_path(output, f"{prefix}-*{PARQUET_SUFFIX}")


def new_run_id() -> str:
    """A short id naming this run's files (sortable by start time)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def new_attempt_id() -> str:
    return uuid.uuid4().hex[:10]


def parquet_writer(handle, schema: pa.Schema) -> pq.ParquetWriter:
    """The job's Parquet writer settings, for every file it writes."""
    return pq.ParquetWriter(handle, schema, compression="snappy",
                            use_dictionary=dictionary_columns(schema),
                            write_statistics=statistics_columns(schema))


def _matching(pattern: str) -> List[str]:
    """Paths matching a glob; [] when nothing (or no directory) is there."""
    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # pylint: disable=broad-except
        return []


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5)
def _write_whole(table: pa.Table, path: str) -> None:
    with FileSystems.create(path) as handle:
        with parquet_writer(handle, table.schema) as writer:
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5)
def _rename(temporary: str, final: str) -> None:
    """Idempotent: a retry after a rename that went through is a no-op."""
    if not FileSystems.exists(temporary) and FileSystems.exists(final):
        return
    FileSystems.rename([temporary], [final])


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5)
def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5)
def delete_if_present(paths: Sequence[str]) -> None:
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)


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
            pass  # a leftover in _incomplete/ is deleted by the finish step


class ChunkWriter:
    """One attempt at one chunk: label rows streamed to a temporary file as
    they come, error rows kept until the end; `commit` publishes both under
    names unique to the attempt and writes the attempt's commit record.

    The rows also stay in memory until the commit: if streaming fails, the
    file is written whole (with retries) instead.
    """

    def __init__(self, output: str, run_id: str, chunk: str,
                 attempt: Optional[str] = None):
        self.output, self.run_id, self.chunk = output, run_id, chunk
        self.attempt = attempt or new_attempt_id()
        self._rows: List[pa.RecordBatch] = []
        self._streamed = 0    # leading batches of _rows already streamed
        self._unstreamed = 0  # rows in the others
        self._errors: List[ErrorRecord] = []
        self._stream: Optional[_StreamedFile] = None
        self._stream_failed = False

    def _temporary(self, prefix: str) -> str:
        return output_path(self.output, f"{INCOMPLETE_DIR}/{self.run_id}-"
                           f"{self.chunk}-{self.attempt}-{prefix}"
                           f"{PARQUET_SUFFIX}")

    def _final(self, prefix: str) -> str:
        return output_path(self.output, chunk_file_name(
            prefix, self.run_id, self.chunk, self.attempt))

    @property
    def rows(self) -> List[pa.RecordBatch]:
        return self._rows

    @property
    def errors(self) -> List[ErrorRecord]:
        return self._errors

    def add_rows(self, rows: pa.RecordBatch) -> None:
        self._rows.append(rows)
        self._unstreamed += rows.num_rows
        if self._unstreamed >= ROW_GROUP_ROWS:
            self._stream_rows()

    def add_errors(self, errors: Iterable[ErrorRecord]) -> None:
        self._errors.extend(errors)

    def _stream_rows(self) -> None:
        if self._stream_failed or not self._unstreamed:
            return
        unstreamed = self._rows[self._streamed:]
        try:
            if self._stream is None:
                self._stream = _StreamedFile(self._temporary(LABELS_PREFIX),
                                             LABELS_SCHEMA)
            self._stream.write(pa.Table.from_batches(unstreamed,
                                                     LABELS_SCHEMA))
            self._streamed, self._unstreamed = len(self._rows), 0
        except Exception:  # pylint: disable=broad-except
            _LOGGER.warning("streaming rows of chunk %s to %s failed; the "
                            "file will be written whole", self.chunk,
                            self.output, exc_info=True)
            self.abandon()
            self._stream_failed = True

    def _labels_file(self) -> Optional[str]:
        """The complete labels file under _incomplete/, or None if no rows."""
        if not self._rows:
            self.abandon()
            return None
        self._stream_rows()
        if not self._stream_failed:
            try:
                self._stream.close()
                return self._stream.temporary
            except Exception:  # pylint: disable=broad-except
                _LOGGER.warning("closing the labels file of chunk %s failed",
                                self.chunk, exc_info=True)
                self.abandon()
        temporary = self._temporary(LABELS_PREFIX)
        _write_whole(pa.Table.from_batches(self._rows, LABELS_SCHEMA),
                     temporary)
        return temporary

    def _errors_file(self) -> Optional[str]:
        if not self._errors:
            return None
        temporary = self._temporary(ERRORS_PREFIX)
        _write_whole(pa.Table.from_pylist(
            [error_row(e) for e in self._errors], schema=ERRORS_SCHEMA),
            temporary)
        return temporary

    def commit(self, counts: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Publish the chunk's files and its commit record; returns the
        record, or None when the run's finish step had already begun (this
        attempt is a late duplicate: what it published is deleted again)."""
        written = [(prefix, temporary) for prefix, temporary in (
            (LABELS_PREFIX, self._labels_file()),
            (ERRORS_PREFIX, self._errors_file())) if temporary]
        finals = []
        for prefix, temporary in written:
            final = self._final(prefix)
            _rename(temporary, final)
            finals.append(final)
        record = {"run_id": self.run_id, "chunk": self.chunk,
                  "attempt": self.attempt,
                  "files": [f.rsplit("/", 1)[-1] for f in finals], **counts}
        marker = record_path(self.output, self.run_id, self.chunk,
                             self.attempt)
        _write_bytes(marker, _json(record))
        if FileSystems.exists(finishing_path(self.output, self.run_id)):
            _LOGGER.warning("chunk %s attempt %s finished after the run's "
                            "finish step began: a duplicate attempt, its "
                            "files are deleted", self.chunk, self.attempt)
            delete_if_present([marker])
            delete_if_present(finals)
            return None
        return record

    def abandon(self) -> None:
        """Drop the temporary file (a failed attempt leaves nothing else)."""
        if self._stream is not None:
            self._stream.abandon()
            self._stream = None


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode("utf-8")


def read_record(path: str) -> Dict[str, Any]:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def committed_records(output: str) -> List[str]:
    """Commit records to keep after a killed run: one per (run, chunk), the
    attempt with the smallest id, so every reader of the same records picks
    the same ones."""
    kept: Dict[tuple, tuple] = {}
    for path in _matching(output_path(output, f"{ATTEMPTS_DIR}/*"
                                              f"{RECORD_SUFFIX}")):
        stem = path.rsplit("/", 1)[-1][:-len(RECORD_SUFFIX)]
        run_chunk, _, attempt = stem.rpartition("-")
        if run_chunk not in kept or attempt < kept[run_chunk][0]:
            kept[run_chunk] = (attempt, path)
    return sorted(path for _, path in kept.values())


class SummaryFn(beam.CombineFn):
    """Commit records → the job's summary: every kept file and record, and
    the counts (sums over chunks)."""

    def create_accumulator(self):
        return {"files": [], "records": [], "counts": merge_counts([])}

    def add_input(self, acc, record):
        acc["files"].extend(record["files"])
        acc["records"].append(record_name(record["run_id"], record["chunk"],
                                          record["attempt"]))
        acc["counts"] = merge_counts([acc["counts"], record])
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            merged["files"].extend(acc["files"])
            merged["records"].extend(acc["records"])
            merged["counts"] = merge_counts([merged["counts"], acc["counts"]])
        return merged

    def extract_output(self, acc):
        return {"files": sorted(acc["files"]),
                "records": sorted(acc["records"]), "counts": acc["counts"]}


class _Finish(beam.DoFn):
    """Runs once, after every chunk: flags the run as finishing, writes an
    empty labels / errors file where there is none (so "none" reads as an
    empty table), deletes every file and record that is not kept, and
    writes the manifest last. Idempotent, so a retry is safe."""

    def __init__(self, output: str, run_id: str, details: Dict[str, Any]):
        self._output = output
        self._run_id = run_id
        self._details = details

    def process(self, summary: Dict[str, Any]) -> Iterable[str]:
        output = self._output
        _write_bytes(finishing_path(output, self._run_id), b"")
        files = list(summary["files"])
        for prefix, schema in ((LABELS_PREFIX, LABELS_SCHEMA),
                               (ERRORS_PREFIX, ERRORS_SCHEMA)):
            if not any(name.startswith(prefix + "-") for name in files):
                name = chunk_file_name(prefix, self._run_id, EMPTY_CHUNK, "0")
                _write_whole(schema.empty_table(), output_path(output, name))
                files.append(name)
        keep = {output_path(output, name) for name in files}
        keep.update(output_path(output, name) for name in summary["records"])
        self._delete_unkept(keep)
        counts = summary["counts"]
        manifest = {"run_id": self._run_id, "files": sorted(files),
                    "finished_at": datetime.datetime.now(
                        datetime.timezone.utc).isoformat(timespec="seconds"),
                    "counts": counts, **self._details}
        yield write_manifest(output, manifest)

    def _delete_unkept(self, keep: set) -> None:
        """Records first, then files: a record never names a missing file."""
        output = self._output
        records = _matching(output_path(output, f"{ATTEMPTS_DIR}/*"
                                                f"{RECORD_SUFFIX}"))
        files = [path for prefix in (LABELS_PREFIX, ERRORS_PREFIX)
                 for path in _matching(finished_files_pattern(output, prefix))]
        stale_records = [p for p in records if p not in keep]
        stale_files = [p for p in files if p not in keep]
        if stale_records or stale_files:
            _LOGGER.info("deleting %d files and %d records of failed or "
                         "duplicate attempts", len(stale_files),
                         len(stale_records))
        incomplete = output_path(output, INCOMPLETE_DIR)
        for group in (stale_records, stale_files,
                      _matching(incomplete + "/*")):
            for start in range(0, len(group), 1000):
                delete_if_present(group[start:start + 1000])
        if "://" not in output:  # a local directory; object stores have none
            delete_if_present([incomplete])


class FinishOutput(beam.PTransform):
    """PCollection of commit records → `_SUCCESS.json`, once every chunk is
    committed (also when there are none)."""

    def __init__(self, output: str, run_id: str,
                 details: Optional[Dict[str, Any]] = None):
        super().__init__()
        self._output = output
        self._run_id = run_id
        self._details = details or {}

    def expand(self, records):
        return (records
                | "Summary" >> beam.CombineGlobally(SummaryFn())
                | "Finish" >> beam.ParDo(
                    _Finish(self._output, self._run_id, self._details)))


def read_uri_column(path: str) -> List[str]:
    """The `uri` column of one committed file: its footer, then that
    column's chunks only."""
    from transforms.schema import read_columns  # pylint: disable=import-outside-toplevel
    with FileSystems.open(path) as handle:
        return read_columns(handle, ["uri"]).column("uri").to_pylist()


RECORDS_TAG = "records"


class _ReadCommitted(beam.DoFn):
    """A kept commit record → the URIs its files hold; the record itself on
    RECORDS_TAG (the finish step keeps its files and counts them)."""

    def __init__(self, output: str):
        self._output = output

    def process(self, path: str):
        record = read_record(path)
        yield beam.pvalue.TaggedOutput(RECORDS_TAG, record)
        for name in record["files"]:
            yield from read_uri_column(output_path(self._output, name))


class ReadCommitted(beam.PTransform):
    """For --resume: the commit records kept from earlier runs of `output`
    → {"uris": URIs already done, RECORDS_TAG: the records}. Records are
    listed in one element, then read in parallel, one each."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, pbegin):
        results = (pbegin
                   | "Output" >> beam.Create([self._output])
                   | "KeptRecords" >> beam.FlatMap(committed_records)
                   | "Spread" >> beam.Reshuffle()
                   | "Read" >> beam.ParDo(_ReadCommitted(self._output))
                   .with_outputs(RECORDS_TAG, main="uris"))
        return {"uris": results.uris, RECORDS_TAG: results[RECORDS_TAG]}


def summary_of(output: str) -> Optional[Dict[str, Any]]:
    """The finished output's counts as its manifest records them."""
    manifest = read_manifest(output)
    return manifest.get("counts") if manifest else None

