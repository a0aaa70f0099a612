"""Classification: one forward pass equals the module's own signatures, for
both stand-in formats; softmax/top-k; the handler's contract, with the tf
backend and with a fake one (no TensorFlow); loads counted by Beam."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import LABELS_FILE, PROJECT_ROOT, photo_paths
from transforms import backends as model_lib
from transforms.classify import (Classifications, ClassifierHandler,
                                 classify_batch, softmax, top_k)
from transforms.imaging import DecodedBatch, DecodeSettings, decode_image
from transforms.rows import label_batch
from transforms.schema import LABELS_SCHEMA

SETTINGS = DecodeSettings(max_pixels=10**8, allowed_formats=("JPEG",))


@pytest.fixture(scope="module")
def photo_batch() -> np.ndarray:
    paths = photo_paths()[:12]
    return np.stack([decode_image(open(p, "rb").read(), SETTINGS)[0]
                     for p in paths])


@pytest.fixture(scope="module")
def labels():
    return LABELS_FILE.read_text().splitlines()


def test_softmax_and_top_k():
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [1000.0, 0.0, -1000.0, 999.0]],
                      np.float32)
    probs = softmax(logits)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.isfinite(probs).all()  # no overflow at ±1000
    indices, values = top_k(probs, 3)
    assert indices.tolist() == [[1, 3, 2], [0, 3, 1]]  # ties: lower index
    assert np.all(np.diff(values, axis=1) <= 0)
    assert top_k(probs, 10)[0].shape == (2, 4)


@pytest.mark.slow
def test_tf1_single_pass_equals_both_signatures(standin_tf1, photo_batch):
    import tensorflow as tf
    import tensorflow_hub as hub
    classifier, _ = model_lib.load_classifier(standin_tf1)
    assert classifier.kind == "tf1-hub"
    assert (classifier.num_classes, classifier.embedding_dim) == (1001, 1280)
    logits, embedding = classifier(photo_batch)
    module = hub.load(standin_tf1)
    images = tf.constant(photo_batch)
    direct_logits = module.signatures["image_classification"](
        images=images)["default"].numpy()
    direct_features = module.signatures["image_feature_vector"](
        images=images)["default"].numpy()
    assert np.abs(logits - direct_logits).max() <= 1e-5
    assert np.abs(embedding - direct_features).max() <= 1e-5
    assert np.abs(softmax(logits) - softmax(direct_logits)).max() <= 1e-5
    # Different photos really give different outputs (not a constant).
    assert np.abs(embedding[0] - embedding[1]).max() > 1e-3


@pytest.mark.slow
def test_tf2_module_with_embedding_module(standin_dirs, photo_batch):
    import tensorflow as tf
    import tensorflow_hub as hub
    classifier, _ = model_lib.load_classifier(
        standin_dirs["tf2"], standin_dirs["tf2-feature-vector"])
    assert classifier.kind == "tf2"
    logits, embedding = classifier(photo_batch)
    images = tf.constant(photo_batch)
    direct_logits = hub.load(standin_dirs["tf2"])(images).numpy()
    direct_features = hub.load(standin_dirs["tf2-feature-vector"])(
        images).numpy()
    assert np.abs(logits - direct_logits).max() <= 1e-5
    assert np.abs(embedding - direct_features).max() <= 1e-5
    # Same seed, same weights: the TF2 stand-in agrees with the TF1 one.
    tf1_logits, _ = model_lib.load_classifier(
        standin_dirs["tf1"])[0](photo_batch)
    assert np.abs(tf1_logits - logits).max() <= 1e-3


@pytest.mark.slow
def test_tf2_module_alone_has_no_embedding(standin_dirs, photo_batch):
    classifier, _ = model_lib.load_classifier(standin_dirs["tf2"])
    logits, embedding = classifier(photo_batch)
    assert logits.shape == (12, 1001) and embedding is None


@pytest.mark.slow
def test_module_is_loaded_once_per_process(standin_tf1):
    first, _ = model_lib.load_classifier(standin_tf1)
    again, loaded_now = model_lib.load_classifier(standin_tf1)
    assert again is first and not loaded_now


@pytest.mark.slow
def test_classify_batch_rows(standin_tf1, photo_batch, labels):
    classifier, _ = model_lib.load_classifier(standin_tf1)
    results = classify_batch(classifier, photo_batch,
                             np.asarray(labels, dtype=object), 5)
    logits, embedding = classifier(photo_batch)
    probs = softmax(logits)
    assert isinstance(results, Classifications)
    assert results.top_k_indices.shape == results.top_k_scores.shape == \
        (len(photo_batch), 5)
    for i in range(len(photo_batch)):
        best = int(np.argmax(probs[i]))
        assert results.top_k_indices[i, 0] == best
        assert results.top_k_labels[i, 0] == labels[best]
        assert abs(results.top_k_scores[i, 0] - probs[i, best]) <= 1e-6
        assert np.all(np.diff(results.top_k_scores[i]) <= 0)
    assert np.array_equal(results.embeddings, embedding)


@pytest.mark.slow
def test_handler_runs_decoded_batches_and_checks_labels(
        standin_tf1, photo_batch, labels):
    loader = model_lib.prepare("tf", standin_tf1).local
    handler = ClassifierHandler(loader, labels, model_id=standin_tf1, top_k=3)
    assert handler.backend == "tf"
    # Images arrive batched (by DecodeAndPreprocess): one per model call.
    assert handler.should_skip_batching()
    model = handler.load_model()
    images = DecodedBatch(tuple(f"uri{i}" for i in range(4)), photo_batch[:4],
                          np.full(4, 500, np.int32), np.full(4, 375, np.int32),
                          ("JPEG",) * 4)
    [result] = handler.run_inference(images, model)
    # The files' facts ride along; the pixels stay behind.
    assert result.example.uris == images.uris
    assert result.example.formats == images.formats
    assert result.example.widths is images.widths
    assert result.example.heights is images.heights
    assert result.example.pixels is None
    assert result.inference.top_k_labels.shape == (4, 3)
    assert handler.get_num_bytes(images) == 4 * 96 * 96 * 3 * 4

    # The batch's rows, as written to Parquet: one per image, columns from
    # the batch's arrays.
    rows = label_batch(result, "tf")
    assert rows.schema == LABELS_SCHEMA and rows.num_rows == 4
    logits, embedding = model(photo_batch[:4])
    for i, row in enumerate(rows.to_pylist()):
        best = int(np.argmax(logits[i]))
        assert row["uri"] == f"uri{i}" and row["label"] == labels[best]
        assert row["top_k_indices"][0] == best
        assert row["top_k_labels"] == list(result.inference.top_k_labels[i])
        assert (row["width"], row["height"], row["format"]) == \
            (500, 375, "JPEG")
        assert row["model"] == standin_tf1 and row["backend"] == "tf"
        assert np.allclose(row["embedding"], embedding[i], atol=1e-5)
        assert row["labeled_at"] == result.inference.labeled_at
    wrong = ClassifierHandler(loader, labels[:1000], model_id=standin_tf1)
    with pytest.raises(ValueError, match="1001 classes"):
        wrong.load_model()


def test_unreadable_handles_raise_clear_errors(tmp_path):
    with pytest.raises(model_lib.ModelLoadError, match="not found"):
        model_lib.load_classifier(str(tmp_path / "missing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "saved_model.pb").write_bytes(b"not a proto")
    with pytest.raises(model_lib.ModelLoadError, match="cannot load"):
        model_lib.load_classifier(str(tmp_path / "junk"))


@pytest.mark.slow
def test_a_batch_the_model_fails_on_becomes_one_error_per_image(
        standin_tf1, photo_batch, labels):
    """A batch the module refuses (here one channel, not RGB) becomes one
    classify-stage error per image; other batches are labeled."""
    from transforms.errors import STAGE_CLASSIFY
    from transforms.label_chunks import classify_rows

    def batch(prefix, pixels):
        n = len(pixels)
        return DecodedBatch(tuple(f"{prefix}{i}" for i in range(n)), pixels,
                            np.full(n, 500, np.int32),
                            np.full(n, 375, np.int32), ("JPEG",) * n)

    good = batch("good", photo_batch[:4])
    bad = batch("bad", np.ascontiguousarray(photo_batch[4:7, :, :, :1]))
    handler = ClassifierHandler(model_lib.prepare("tf", standin_tf1).local,
                                labels, model_id=standin_tf1)
    model = handler.load_model()
    rows, errors = classify_rows(handler, model, good, [], "tf")
    assert rows.column("uri").to_pylist() == list(good.uris) and not errors
    rows, errors = classify_rows(handler, model, bad, [], "tf")
    assert rows is None
    assert [(e.uri, e.stage) for e in errors] == [
        (uri, STAGE_CLASSIFY) for uri in bad.uris]


_FAKE_JOB = """
import json, sys
import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from transforms.backends import fake
from apache_beam.ml.inference.base import RunInference
from transforms.classify import MODEL_LOAD_METRIC, ClassifierHandler
from transforms.imaging import DecodeSettings, ImageBytes, decode_batch
from transforms.rows import label_batch

paths, labels, out = json.loads(sys.stdin.read())
settings = DecodeSettings(max_pixels=10**8, allowed_formats=("JPEG",))
batches = [decode_batch([ImageBytes(p, open(p, "rb").read())
                         for p in paths[i:i + 8]], settings)[0]
           for i in range(0, len(paths), 8)]
handler = ClassifierHandler(fake.loader(), labels, model_id="fake", top_k=3)
pipeline = beam.Pipeline()
classified = pipeline | beam.Create(batches) | RunInference(handler)
_ = (classified
     | beam.FlatMap(lambda r: [json.dumps(
         [row["uri"], row["top_k_indices"], row["backend"]]) for row in
         label_batch(r, handler.backend).to_pylist()])
     | beam.io.WriteToText(out, shard_name_template=""))
result = pipeline.run()
result.wait_until_finish()
rows = [json.loads(line) for line in open(out)]
[loads] = result.metrics().query(MetricsFilter().with_name(
    MODEL_LOAD_METRIC))["distributions"]
model = fake.load()
print(json.dumps({
    "tensorflow": sorted(m for m in sys.modules
                         if m.split(".")[0] == "tensorflow"),
    "load_metric": loads.committed.count, "loads": len(fake.LOADS) - 1,
    "rows": rows,
    "expected": {p: np.argsort(-model(b.pixels[i:i + 1])[0][0],
                               kind="stable")[:3].tolist()
                 for b in batches for i, p in enumerate(b.uris)}}))
"""


def test_classify_with_a_fake_backend_never_imports_tensorflow(labels,
                                                               tmp_path):
    """The handler takes any backend's loader: with the fake one, the
    handler labels real photos in RunInference without importing
    TensorFlow, and RunInference's load metric counts the one load."""
    paths = photo_paths()[:20]
    job = subprocess.run([sys.executable, "-c", _FAKE_JOB],
                         input=json.dumps([paths, labels,
                                           str(tmp_path / "rows.jsonl")]),
                         text=True,
                         capture_output=True, cwd=PROJECT_ROOT, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    report = json.loads(job.stdout.strip().splitlines()[-1])
    assert report["tensorflow"] == []
    assert report["load_metric"] == report["loads"] == 1
    assert sorted(uri for uri, _, _ in report["rows"]) == paths
    for uri, indices, backend in report["rows"]:
        assert backend == "fake"
        assert indices == report["expected"][uri]
    # The fake model's answers depend on the pixels.
    assert len({tuple(i) for _, i, _ in report["rows"]}) > 1


class _LabelWithSharedModel:
    """A DoFn that calls the model itself, as the job's chunk DoFn does."""

    def __new__(cls, handler):
        import apache_beam as beam
        from transforms.classify import SharedClassifier

        class LabelBatches(beam.DoFn):
            def __init__(self):
                self._shared = SharedClassifier(handler)
                self._model = None

            def setup(self):
                self._model = self._shared.acquire()

            def process(self, pixels):
                self._shared.report_load()
                yield classify_batch(self._model, pixels, handler.label_array,
                                     1).top_k_indices[:, 0].tolist()
        return LabelBatches()


def test_shared_classifier_loads_once_and_reports_it(photo_batch, labels):
    """SharedClassifier: one load per process through Beam's Shared,
    counted in RunInference's load metric when processing starts."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from transforms.backends import fake
    from transforms.classify import MODEL_LOAD_METRIC
    loader = fake.loader(seed=7)
    loader.forget()
    handler = ClassifierHandler(loader, labels, model_id="fake")
    before = len(fake.LOADS)
    pipeline = beam.Pipeline()
    _ = (pipeline | beam.Create([photo_batch[i:i + 3] for i in range(0, 12, 3)])
         | beam.ParDo(_LabelWithSharedModel(handler)))
    result = pipeline.run()
    result.wait_until_finish()
    [loads] = result.metrics().query(MetricsFilter().with_name(
        MODEL_LOAD_METRIC))["distributions"]
    assert loads.committed.count == len(fake.LOADS) - before == 1
