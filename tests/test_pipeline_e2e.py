"""The whole job through its command line, on the real photos and edge cases,
with the multi-process DirectRunner; output read back with pyarrow and
DuckDB."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import (EDGE_DIR, LABELS_FILE, edge_manifest,
                            photo_paths, read_parquet_dir, run_cli)
from transforms.schema import ERRORS_SCHEMA, LABELS_SCHEMA

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def _summary_value(stderr: str, name: str) -> int:
    match = re.search(rf"{name}\s+(\d+)", stderr)
    assert match, f"no '{name}' in summary:\n{stderr[-3000:]}"
    return int(match.group(1))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, standin_tf1):
    """150 photos + 66 edge cases, listed in a CSV manifest, labeled by two
    worker processes in small batches."""
    root = tmp_path_factory.mktemp("mixed")
    inputs = photo_paths() + sorted(
        str(EDGE_DIR / row["file"]) for row in edge_manifest())
    manifest = root / "inputs.csv"
    manifest.write_text("uri,comment\n" + "".join(
        f'"{uri}",x\n' for uri in inputs))
    output = root / "out"
    result = run_cli([
        "--input_manifest", str(manifest), "--output", str(output),
        "--model", standin_tf1, "--labels", str(LABELS_FILE),
        "--top_k", "5", "--max_batch_size", "8",
        "--runner", "DirectRunner",
        "--direct_running_mode", "multi_processing",
        "--direct_num_workers", "2"])
    assert result.returncode == 0, result.stderr[-4000:]
    return {"inputs": inputs, "output": str(output), "result": result}


def test_every_input_is_labeled_or_an_error_exactly_once(mixed_run):
    labels = read_parquet_dir(mixed_run["output"], "labels")
    errors = read_parquet_dir(mixed_run["output"], "errors")
    labeled = labels.column("uri").to_pylist()
    failed = errors.column("uri").to_pylist()
    assert len(labeled) == len(set(labeled))
    assert len(failed) == len(set(failed))
    assert not set(labeled) & set(failed)
    assert sorted(labeled + failed) == sorted(mixed_run["inputs"])
    stderr = mixed_run["result"].stderr
    assert _summary_value(stderr, "inputs") == len(mixed_run["inputs"])
    assert _summary_value(stderr, "labeled") == len(labeled)
    assert _summary_value(stderr, "errors") == len(failed)


def test_edge_case_outcomes_match_their_manifest(mixed_run):
    errors = {row["uri"]: row for row in
              read_parquet_dir(mixed_run["output"], "errors").to_pylist()}
    for row in edge_manifest():
        uri = str(EDGE_DIR / row["file"])
        if row["expected"] == "decodable":
            assert uri not in errors, (row["file"], errors.get(uri))
        else:
            assert uri in errors, row["file"]
            error = errors[uri]
            assert error["stage"] == "decode"
            assert error["error_type"] and error["message"]
    bomb = errors[str(EDGE_DIR / "decompression_bomb.gif")]
    assert bomb["error_type"] == "TooManyPixels"
    assert errors[str(EDGE_DIR / "zero_bytes.jpg")]["error_type"] == \
        "EmptyFile"


def test_module_loaded_at_most_once_per_worker(mixed_run):
    loads = _summary_value(mixed_run["result"].stderr, "module loads")
    assert 1 <= loads <= 2, loads


def test_parquet_matches_the_schema(mixed_run):
    files = sorted(Path(mixed_run["output"]).glob("*.parquet"))
    names = {f.name for f in files}
    assert any(n.startswith("labels-") for n in names)
    assert any(n.startswith("errors-") for n in names)
    assert not list(Path(mixed_run["output"]).glob("**/beam-temp*")), \
        "temporary files must not remain"
    for path in files:
        schema = pq.read_schema(path)
        expected = LABELS_SCHEMA if path.name.startswith("labels-") \
            else ERRORS_SCHEMA
        assert schema.remove_metadata().equals(expected), path.name
    labels = read_parquet_dir(mixed_run["output"], "labels")
    row = labels.slice(0, 1).to_pylist()[0]
    assert len(row["embedding"]) == 1280
    assert len(row["top_k_indices"]) == len(row["top_k_labels"]) == 5
    assert row["label"] == row["top_k_labels"][0]
    assert row["labeled_at"].tzinfo is not None
    label_names = LABELS_FILE.read_text().splitlines()
    for row in labels.to_pylist():
        assert row["top_k_labels"] == [label_names[i]
                                       for i in row["top_k_indices"]]
        assert row["top_k_scores"] == sorted(row["top_k_scores"],
                                             reverse=True)


def test_duckdb_reads_the_output(mixed_run):
    import duckdb
    out = mixed_run["output"]
    con = duckdb.connect()
    total = con.execute(
        f"SELECT count(*) FROM '{out}/labels-*.parquet'").fetchone()[0]
    by_label = con.execute(
        f"SELECT label, count(*) AS n FROM '{out}/labels-*.parquet' "
        "GROUP BY label ORDER BY n DESC").fetchall()
    assert sum(n for _, n in by_label) == total > 0
    dims = con.execute(
        f"SELECT DISTINCT len(embedding) FROM '{out}/labels-*.parquet'"
    ).fetchall()
    assert dims == [(1280,)]
    stages = con.execute(
        f"SELECT stage, count(*) FROM '{out}/errors-*.parquet' GROUP BY 1"
    ).fetchall()
    assert dict(stages)["decode"] == sum(
        r["expected"] == "must-fail-cleanly" for r in edge_manifest())


def test_pipeline_output_equals_direct_module_call(mixed_run, standin_tf1):
    """Parquet scores and embeddings equal the module's own signatures on
    the same preprocessed tensor: ≤ 1e-5 with tf; with xnnpack (what the
    default `auto` picks once its parity gate passes) within the gate's
    bound on probabilities, 1e-3."""
    import tensorflow as tf
    import tensorflow_hub as hub
    from transforms.classify import softmax
    from transforms.imaging import DecodeSettings, decode_image
    rows = {r["uri"]: r for r in
            read_parquet_dir(mixed_run["output"], "labels").to_pylist()}
    paths = photo_paths()[::25]
    settings = DecodeSettings(max_pixels=10**8, allowed_formats=("JPEG",))
    batch = np.stack([decode_image(open(p, "rb").read(), settings)[0]
                      for p in paths])
    module = hub.load(standin_tf1)
    logits = module.signatures["image_classification"](
        images=tf.constant(batch))["default"].numpy()
    features = module.signatures["image_feature_vector"](
        images=tf.constant(batch))["default"].numpy()
    probs = softmax(logits)
    assert {rows[p]["backend"] for p in paths} == {"xnnpack"}
    for i, path in enumerate(paths):
        row = rows[path]
        tolerance = 1e-5 if row["backend"] == "tf" else 1e-3
        assert np.abs(np.array(row["embedding"]) - features[i]).max() <= \
            tolerance * max(1.0, np.abs(features[i]).max())
        assert np.abs(np.array(row["top_k_scores"])
                      - probs[i, row["top_k_indices"]]).max() <= tolerance
        assert row["top_k_indices"][0] == int(np.argmax(probs[i]))


def test_tf2_module_with_embedding_model_end_to_end(tmp_path, standin_dirs):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in photo_paths()[:10]:
        os.symlink(path, photos / os.path.basename(path))
    output = tmp_path / "out"
    result = run_cli([
        "--input", str(photos / "*.JPEG"), "--output", str(output),
        "--model", standin_dirs["tf2"],
        "--embedding_model", standin_dirs["tf2-feature-vector"],
        "--labels", str(LABELS_FILE), "--direct_running_mode", "in_memory"])
    assert result.returncode == 0, result.stderr[-3000:]
    labels = read_parquet_dir(str(output), "labels")
    assert labels.num_rows == 10
    assert all(len(e) == 1280 for e in labels.column("embedding").to_pylist())
    assert read_parquet_dir(str(output), "errors").num_rows == 0
