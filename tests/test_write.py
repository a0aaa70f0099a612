"""The chunk writer (transforms/write.py) driven directly, without Beam: rows
stream into the attempt's file under _incomplete/ a row group at a time, the
commit publishes files named by run, chunk and attempt with a commit record,
a failing stream falls back to writing the file whole, and an attempt that
commits after the run's finish began removes what it published."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import LABELS_FILE, photo_paths
from transforms import write
from transforms.errors import ErrorRecord
from transforms.schema import LABELS_SCHEMA

BATCH = 64


def _label_batches(n_rows: int) -> List[pa.RecordBatch]:
    """LABELS_SCHEMA rows for the sample photos (URIs repeated under an index)
    in batches of BATCH, with seeded scores and embeddings."""
    labels = LABELS_FILE.read_text().splitlines()
    photos = photo_paths()
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n_rows):
        top = rng.choice(len(labels), 5, replace=False)
        rows.append({
            "uri": f"{photos[i % len(photos)]}#{i}",
            "label": labels[top[0]], "score": 0.5,
            "top_k_indices": top.tolist(),
            "top_k_labels": [labels[t] for t in top],
            "top_k_scores": [0.5, 0.2, 0.1, 0.1, 0.1],
            "embedding": rng.random(1280, dtype=np.float32).tolist(),
            "width": 500, "height": 375, "format": "JPEG",
            "model": "stand-in", "backend": "tf",
            "labeled_at": datetime.datetime(2026, 11, 27,
                                            tzinfo=datetime.timezone.utc)})
    return [pa.RecordBatch.from_pylist(rows[i:i + BATCH], schema=LABELS_SCHEMA)
            for i in range(0, n_rows, BATCH)]


def _write_chunk(output: Path, batches: List[pa.RecordBatch],
                 errors=(), on_batch=None, attempt=None):
    writer = write.ChunkWriter(str(output), "run", "c000001", attempt)
    for index, batch in enumerate(batches):
        writer.add_rows(batch)
        if on_batch:
            on_batch(index)
    writer.add_errors(errors)
    return writer, writer.commit({"labeled": sum(b.num_rows for b in batches),
                                  "failed": len(errors)})


def test_rows_stream_into_row_groups_and_commit_under_the_attempts_name(
        tmp_path):
    batches = _label_batches(2500)
    seen_incomplete = []

    def look(index):
        seen_incomplete.append(len(list(
            (tmp_path / write.INCOMPLETE_DIR).glob("*"))))
    writer, record = _write_chunk(tmp_path, batches, on_batch=look)
    name = f"labels-run-c000001-{writer.attempt}.parquet"
    assert record["files"] == [name]
    assert seen_incomplete[0] == 0 and seen_incomplete[-1] == 1  # streamed
    table = pq.read_table(tmp_path / name)
    assert table.equals(pa.Table.from_batches(batches, LABELS_SCHEMA))
    assert pq.ParquetFile(tmp_path / name).metadata.num_row_groups == 3
    assert write.parse_file_name(name) == write.ChunkFile(
        "labels", "run", "c000001", writer.attempt)
    assert write.read_record(write.record_path(
        str(tmp_path), "run", "c000001", writer.attempt)) == record
    assert not list((tmp_path / write.INCOMPLETE_DIR).glob("*"))


def test_errors_get_their_own_file_in_the_same_commit(tmp_path):
    errors = [ErrorRecord(f"/x/{i}.jpg", "decode", "OSError", "broken")
              for i in range(3)]
    writer, record = _write_chunk(tmp_path, _label_batches(10), errors)
    assert sorted(record["files"]) == [
        f"errors-run-c000001-{writer.attempt}.parquet",
        f"labels-run-c000001-{writer.attempt}.parquet"]
    table = pq.read_table(tmp_path / sorted(record["files"])[0])
    assert table.column("uri").to_pylist() == [e.uri for e in errors]


def test_a_failing_stream_falls_back_to_writing_the_file_whole(
        tmp_path, monkeypatch, caplog):
    batches = _label_batches(1500)
    calls = []
    original = write._StreamedFile.write

    def flaky_write(self, table):
        calls.append(table.num_rows)
        if len(calls) == 1:
            raise OSError("storage went away")
        original(self, table)

    monkeypatch.setattr(write._StreamedFile, "write", flaky_write)
    _, record = _write_chunk(tmp_path, batches)
    assert calls == [1024]  # no further streaming after the failure
    assert "will be written whole" in caplog.text
    assert not list((tmp_path / write.INCOMPLETE_DIR).glob("*"))
    assert pq.read_table(tmp_path / record["files"][0]).equals(
        pa.Table.from_batches(batches, LABELS_SCHEMA))


def test_an_attempt_committing_after_the_finish_began_leaves_nothing(
        tmp_path):
    write._write_bytes(write.finishing_path(str(tmp_path), "run"), b"")
    _, record = _write_chunk(tmp_path, _label_batches(100))
    assert record is None
    assert not list(tmp_path.glob("*.parquet"))
    assert not list((tmp_path / write.ATTEMPTS_DIR).glob("*.json"))


def test_resume_keeps_one_committed_attempt_per_chunk(tmp_path):
    for attempt in ("b0", "a1", "c2"):
        _write_chunk(tmp_path, _label_batches(5), attempt=attempt)
    kept = write.committed_records(str(tmp_path))
    assert [Path(p).name for p in kept] == ["run-c000001-a1.json"]


@pytest.mark.parametrize("schema_name", ["LABELS_SCHEMA", "ERRORS_SCHEMA"])
def test_an_empty_table_writes_a_readable_file(tmp_path, schema_name):
    schema = getattr(write, schema_name)
    final = str(tmp_path / "empty.parquet")
    write._write_whole(schema.empty_table(), final)
    table = pq.read_table(final)
    assert table.num_rows == 0 and table.schema.equals(schema)
