"""The xnnpack (TFLite) backend and its parity gate; the threaded DoFn that
overlaps decoding with inference."""
from __future__ import annotations

import json
import os
import re
import sys
import threading

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from tests.conftest import (LABELS_FILE, PHOTOS_DIR, photo_paths,
                            read_parquet_dir, run_cli)
from transforms.classify import BackendParity, backend_parity
from transforms.imaging import DecodeSettings, decode_image
from transforms.model import Conversion, load_classifier
from transforms.threaded import ThreadedDoFn, threaded_pardo

SETTINGS = DecodeSettings(max_pixels=10**8, allowed_formats=("JPEG",))


@pytest.fixture(scope="module")
def all_photos() -> np.ndarray:
    return np.stack([decode_image(open(p, "rb").read(), SETTINGS)[0]
                     for p in photo_paths()])


@pytest.mark.parametrize("formats", [("tf1", None),
                                     ("tf2", "tf2-feature-vector")])
def test_xnnpack_passes_the_parity_gate_on_the_150_photos(
        standin_dirs, all_photos, tmp_path, formats, caplog):
    model = standin_dirs[formats[0]]
    embedding = standin_dirs[formats[1]] if formats[1] else None
    reference, _ = load_classifier(model, embedding)
    candidate, _ = load_classifier(model, embedding, str(tmp_path), "xnnpack")
    assert candidate.backend == "xnnpack" and reference.backend == "tf"
    parity = backend_parity(reference, candidate, all_photos)
    assert parity.images == 150
    assert parity.top1_agreement >= 0.995
    assert parity.max_prob_delta <= 1e-3
    assert parity.passes()
    print(f"xnnpack vs tf ({formats[0]}): top-1 agreement "
          f"{parity.top1_agreement:.3f}, max |Δp| {parity.max_prob_delta:.2e},"
          f" max |Δembedding| {parity.max_embedding_delta:.2e}")
    assert parity.max_embedding_delta < 1e-2
    # The converted model is cached by content: a second process-level
    # load of the same module finds it (no TF load needed).
    assert list(tmp_path.glob("xnnpack-*.tflite"))


def test_recorded_gate_result_applies_only_to_its_file(standin_dirs,
                                                      tmp_path):
    """A gate result is tied to the converted file's hash: a changed file
    must be gated again."""
    candidate, _ = load_classifier(standin_dirs["tf1"], None, str(tmp_path),
                                   "xnnpack")
    conversion = candidate.conversion
    assert conversion is not None and conversion.parity is None
    conversion.record_parity({"images": 64, "top1_agreement": 1.0})
    base = conversion.model_path[:-len(".tflite")]
    assert Conversion(base).parity["images"] == 64
    record = json.loads(open(base + ".json").read())
    assert record["parity"]["tflite_sha256"] == conversion.sha256
    with open(conversion.model_path, "ab") as handle:
        handle.write(b"\0")  # a different file under the same name
    assert Conversion(base).parity is None


def test_parity_gate_rejects_a_different_model(standin_dirs, all_photos):
    """A backend whose answers differ must fail the gate."""
    reference, _ = load_classifier(standin_dirs["tf1"])

    class Shuffled:
        def __call__(self, images):
            logits, embedding = reference(images)
            return np.roll(logits, 1, axis=1), embedding
    parity = backend_parity(reference, Shuffled(), all_photos[:20])
    assert parity.top1_agreement < 0.5 and not parity.passes()
    assert not BackendParity(100, 0.99, 1e-4, 0).passes()
    assert not BackendParity(100, 1.0, 2e-3, 0).passes()


def _imported_tensorflow(stderr: str) -> bool:
    """From `python -X importtime` output: was TensorFlow imported?"""
    return bool(re.search(r"\|\s+tensorflow$", stderr, re.MULTILINE))


def test_pipeline_with_xnnpack_backend(standin_tf1, tmp_path):
    def label(output, *extra):
        result = run_cli([
            "--input", str(PHOTOS_DIR / "n01*.JPEG"), "--output",
            str(output), "--model", standin_tf1, "--labels", str(LABELS_FILE),
            "--backend", "xnnpack", "--model_cache_dir",
            str(tmp_path / "cache"), *extra],
            env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    output = tmp_path / "out"
    first = label(output)
    # First launch: converts, runs the gate against TF, records it.
    assert "backend xnnpack vs tf on" in first.stderr
    assert _imported_tensorflow(first.stderr)
    # Later launches reuse the gated conversion without loading TF at all,
    # and label identically.
    second = label(tmp_path / "out2")
    assert "backend xnnpack vs tf on" not in second.stderr
    assert "passed the parity gate against tf on" in second.stderr
    assert not _imported_tensorflow(second.stderr)
    assert read_parquet_dir(str(tmp_path / "out2"), "labels").sort_by("uri") \
        .select(["uri", "top_k_indices", "embedding"]).equals(
            read_parquet_dir(str(output), "labels").sort_by("uri")
            .select(["uri", "top_k_indices", "embedding"]))
    # --recheck_parity runs the gate on this job's images again.
    third = label(tmp_path / "out3", "--recheck_parity")
    assert "backend xnnpack vs tf on" in third.stderr
    rows = read_parquet_dir(str(output), "labels").to_pylist()
    assert rows and {r["backend"] for r in rows} == {"xnnpack"}
    reference, _ = load_classifier(standin_tf1)
    for row in rows[:5]:
        pixels = decode_image(open(row["uri"], "rb").read(), SETTINGS)[0]
        logits, embedding = reference(pixels[None])
        assert row["top_k_indices"][0] == int(np.argmax(logits[0]))
        assert np.abs(np.array(row["embedding"]) - embedding[0]).max() < 1e-2


class _Square(ThreadedDoFn):
    def work(self, element):
        if element % 7 == 0:
            return [beam.pvalue.TaggedOutput("sevens", element)]
        return [element * element]


@pytest.mark.parametrize("threads", [3, 1])
def test_threaded_dofn_emits_everything_in_its_window(threads):
    values = list(range(500))
    with BeamTestPipeline() as pipeline:
        results = (pipeline
                   | beam.Create(values)
                   | beam.Map(lambda v: window.TimestampedValue(v, v))
                   | beam.WindowInto(window.FixedWindows(100))
                   | threaded_pardo(_Square(threads=threads)).with_outputs(
                       "sevens", main="squares"))
        assert_that(results.squares, equal_to(
            [v * v for v in values if v % 7]), label="squares")
        assert_that(results.sevens, equal_to(
            [v for v in values if v % 7 == 0]), label="sevens")
        # Each output stays in its input's window: count per window.
        per_window = (results.squares
                      | beam.Map(lambda _: 1)
                      | beam.CombineGlobally(sum).without_defaults())
        assert_that(per_window, equal_to(
            [sum(1 for v in range(s, s + 100) if v % 7)
             for s in range(0, 500, 100)]), label="windows")


class _Niceness(ThreadedDoFn):
    def work(self, element):
        return [os.getpriority(os.PRIO_PROCESS, threading.get_native_id())]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="per-thread niceness is Linux behaviour")
def test_pool_threads_run_at_the_given_niceness_and_the_caller_does_not():
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with BeamTestPipeline() as pipeline:
        seen = (pipeline
                | beam.Create(range(12))
                | threaded_pardo(_Niceness(threads=3, niceness=7)))
        assert_that(seen, equal_to([max(own, 7)] * 12))
    assert os.getpriority(os.PRIO_PROCESS,
                          threading.get_native_id()) == own
