"""The chunk writer (transforms/write.py) driven directly, without Beam: rows
stream into the chunk's file under _incomplete/ a row group at a time, every
committed file holds exactly rows_per_file rows, and a failing stream falls
back to writing the chunk whole."""
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


def _run_writer(output: Path, batches: List[pa.RecordBatch],
                rows_per_file: int, on_batch=None) -> List[str]:
    writer = write._WriteChunks(str(output), "labels", LABELS_SCHEMA, "run",
                                rows_per_file)
    writer.start_bundle()
    committed = []
    for index, batch in enumerate(batches):
        committed.extend(writer.process(batch))
        if on_batch:
            on_batch(index)
    committed.extend(v.value for v in writer.finish_bundle())
    writer.teardown()
    return committed


def test_rows_stream_into_row_groups_and_every_file_is_full(tmp_path):
    batches = _label_batches(2560)
    rows_per_file = 2500
    incomplete_sizes = []

    def look_at_incomplete(index):
        files = list((tmp_path / write.INCOMPLETE_DIR).glob("*"))
        incomplete_sizes.append(sum(f.stat().st_size for f in files))

    committed = _run_writer(tmp_path, batches, rows_per_file,
                            look_at_incomplete)

    # Written as the rows came: the file under _incomplete/ grew mid-chunk,
    # before the chunk was complete (batch 39 completes it).
    assert incomplete_sizes[14] == 0  # 960 rows: none written yet
    assert 0 < incomplete_sizes[15] < incomplete_sizes[31]  # 1,024; 2,048
    assert len(committed) == 2
    assert not list((tmp_path / write.INCOMPLETE_DIR).glob("*"))
    expected = pa.Table.from_batches(batches, LABELS_SCHEMA)
    first, rest = (pq.ParquetFile(path) for path in committed)
    assert first.metadata.num_rows == rows_per_file
    assert [first.metadata.row_group(i).num_rows
            for i in range(first.num_row_groups)] == [1024, 1024, 452]
    assert rest.metadata.num_rows == 60
    # Statistics for the columns a reader filters on, none for the
    # embedding; dictionaries for the repetitive strings only.
    group = first.metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i)
               for i in range(group.num_columns)}
    assert columns["score"].statistics.has_min_max
    assert columns["width"].statistics.has_min_max
    assert columns["embedding.list.element"].statistics is None
    assert "RLE_DICTIONARY" in columns["label"].encodings
    assert "RLE_DICTIONARY" not in columns["uri"].encodings
    assert "RLE_DICTIONARY" not in columns["embedding.list.element"].encodings
    read_back = pa.concat_tables([first.read(), rest.read()])
    assert read_back.equals(expected)
    # The name's digest is that of the chunk's URIs, as before streaming.
    assert Path(committed[0]).name == Path(write._chunk_path(
        str(tmp_path), "labels", "run",
        expected.column("uri").to_pylist()[:rows_per_file])).name


def test_a_failing_stream_falls_back_to_writing_the_chunk_whole(
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
    committed = _run_writer(tmp_path, batches, rows_per_file=5000)

    assert calls == [1024]  # no further streaming after the failure
    assert "will be written whole" in caplog.text
    assert len(committed) == 1
    assert not list((tmp_path / write.INCOMPLETE_DIR).glob("*"))
    assert pq.read_table(committed[0]).equals(
        pa.Table.from_batches(batches, LABELS_SCHEMA))


def test_a_chunk_written_again_replaces_its_first_copy(tmp_path):
    batches = _label_batches(300)
    first = _run_writer(tmp_path, batches, rows_per_file=5000)
    again = _run_writer(tmp_path, batches, rows_per_file=5000)
    assert first == again
    assert [p.name for p in tmp_path.glob("labels-*.parquet")] == \
        [Path(first[0]).name]
    assert pq.read_table(first[0]).num_rows == 300


@pytest.mark.parametrize("schema_name", ["LABELS_SCHEMA", "ERRORS_SCHEMA"])
def test_an_empty_table_commits_a_readable_file(tmp_path, schema_name):
    schema = getattr(write, schema_name)
    final = str(tmp_path / "empty.parquet")
    write._commit(schema.empty_table(),
                  str(tmp_path / write.INCOMPLETE_DIR / "x"), final)
    table = pq.read_table(final)
    assert table.num_rows == 0 and table.schema.equals(schema)
