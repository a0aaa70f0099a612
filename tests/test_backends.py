"""Backends as plugins: the registry and --backend choices, the TF1 loader
on other module layouts, the xnnpack backend and its parity gate, `auto`,
the model staged once per job and loaded by workers without TensorFlow."""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import (EDGE_DIR, LABELS_FILE, PHOTOS_DIR, PROJECT_ROOT,
                            photo_paths, read_parquet_dir, run_cli)
from transforms import backends
from transforms.backends import load_classifier
from transforms.backends.xnnpack import Conversion
from transforms.classify import BackendParity, backend_parity
from transforms.imaging import DecodeSettings, decode_image

SETTINGS = DecodeSettings(max_pixels=10**8, allowed_formats=("JPEG",))


@pytest.fixture(scope="module")
def all_photos() -> np.ndarray:
    return np.stack([decode_image(open(p, "rb").read(), SETTINGS)[0]
                     for p in photo_paths()])


@pytest.fixture(scope="module")
def tf1_variants(tmp_path_factory) -> dict:
    """TF1 stand-ins laid out as the real module may be (same seed as
    standin_dirs), built in a subprocess: separate input placeholders per
    signature, and a second {"train"} meta graph."""
    root = tmp_path_factory.mktemp("variants")
    variants = {"separate_inputs": {"separate_inputs": True},
                "train_graph": {"train_graph": True}}
    code = ("import json, sys; from pipeline.standin import build_standin\n"
            "for d, kw in json.loads(sys.argv[1]).items():\n"
            "    build_standin(d, 'tf1', 0, **kw)\n")
    dirs = {name: str(root / name) for name in variants}
    subprocess.run([sys.executable, "-c", code, json.dumps(
        {dirs[name]: kw for name, kw in variants.items()})], check=True,
        cwd=PROJECT_ROOT, capture_output=True, timeout=600)
    return dirs


def test_backend_choices_come_from_the_registry():
    from pipeline.options import build_parser
    action = next(a for a in build_parser()._actions
                  if a.dest == "backend")
    assert tuple(action.choices) == backends.choices() == \
        ("auto", "tf", "xnnpack")
    assert action.default == "auto"
    assert backends.AUTO_ORDER[-1] == backends.REFERENCE == "tf"
    with pytest.raises(backends.ModelLoadError, match="unknown backend"):
        backends.prepare("tflite", "model")


@pytest.mark.slow
def test_a_registered_backend_is_offered_and_gated(standin_tf1, tmp_path,
                                                   monkeypatch):
    """Adding a backend is registering its module: it becomes a --backend
    choice, and a launch gates it against tf like any other (the fake
    model's answers differ, so it is refused with the reason)."""
    from pipeline.checks import LaunchError
    from pipeline.options import build_parser
    monkeypatch.setitem(backends.BACKENDS, "fake", "transforms.backends.fake")
    action = next(a for a in build_parser()._actions if a.dest == "backend")
    assert "fake" in action.choices
    with pytest.raises(LaunchError, match="backend fake: it fails the parity "
                       "gate against tf .*; use --backend tf"):
        _launch("--input", str(PHOTOS_DIR / "n01*.JPEG"), "--output",
                str(tmp_path / "out"), "--model", standin_tf1, "--backend",
                "fake")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["separate_inputs", "train_graph"])
def test_tf1_loader_handles_other_module_layouts(
        standin_tf1, tf1_variants, all_photos, variant, caplog, tmp_path):
    """The loader must not depend on the stand-in's layout: separate
    placeholders per signature are called in two passes (one warning line);
    hub.load picks the inference meta graph over the {"train"} one. Both
    give the plain stand-in's outputs, and convert for xnnpack."""
    photos = all_photos[:16]
    expected_logits, expected_embedding = load_classifier(standin_tf1)[0](
        photos)
    with caplog.at_level(logging.WARNING):
        classifier, _ = load_classifier(tf1_variants[variant])
    two_passes = [r for r in caplog.records
                  if "calling both signatures" in r.getMessage()]
    assert len(two_passes) == (variant == "separate_inputs")
    assert classifier.kind == "tf1-hub"
    logits, embedding = classifier(photos)
    assert np.abs(logits - expected_logits).max() <= 1e-5
    assert np.abs(embedding - expected_embedding).max() <= 1e-5
    candidate, _ = load_classifier(tf1_variants[variant], None,
                                   str(tmp_path), "xnnpack")
    assert backend_parity(classifier, candidate, photos).passes()


@pytest.mark.slow
@pytest.mark.parametrize("formats", [("tf1", None),
                                     ("tf2", "tf2-feature-vector")])
def test_xnnpack_passes_the_parity_gate_on_the_150_photos(
        standin_dirs, all_photos, tmp_path, formats):
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
    assert parity.max_embedding_delta < 1e-2
    # The converted model is cached by content for later launches.
    assert list(tmp_path.glob("xnnpack-*.tflite"))


@pytest.mark.slow
def test_recorded_gate_result_applies_only_to_its_file(standin_dirs,
                                                      tmp_path):
    """A gate result is tied to the converted file's hash: a changed file
    must be gated again."""
    prepared = backends.prepare("xnnpack", standin_dirs["tf1"], None,
                                str(tmp_path))
    conversion = prepared.conversion
    assert prepared.gate is None
    prepared.record_gate({"images": 64, "top1_agreement": 1.0})
    base = conversion.model_path[:-len(".tflite")]
    assert Conversion(base).parity["images"] == 64
    record = json.loads(open(base + ".json").read())
    assert record["parity"]["tflite_sha256"] == conversion.sha256
    with open(conversion.model_path, "ab") as handle:
        handle.write(b"\0")  # a different file under the same name
    assert Conversion(base).parity is None


@pytest.mark.slow
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

    # Same logits, but another embedding (width, or none): not at parity.
    class Narrow:
        def __init__(self, width):
            self.width = width

        def __call__(self, images):
            logits, embedding = reference(images)
            return logits, (embedding[:, :self.width] if self.width
                            else None)
    for width in (8, None):
        parity = backend_parity(reference, Narrow(width), all_photos[:4])
        assert parity.top1_agreement == 1.0 and parity.max_prob_delta == 0
        assert parity.max_embedding_delta == float("inf")
        assert not parity.passes()


def _launch(*argv):
    from pipeline.checks import run_checks
    from pipeline.options import parse_args
    config, _ = parse_args(["--labels", str(LABELS_FILE), *argv])
    return run_checks(config)


_WORKER = """
import pickle, sys
import numpy as np
from transforms.classify import ClassifierHandler
loader, labels, pixels_path, out_path = pickle.load(sys.stdin.buffer)
classifier = ClassifierHandler(loader, labels, model_id="m").load_model()
logits, embedding = classifier(np.load(pixels_path))
np.savez(out_path, logits=logits, embedding=embedding)
print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
"""


@pytest.mark.slow
def test_workers_load_the_staged_model_with_litert_alone(
        standin_tf1, all_photos, tmp_path):
    """The launcher converts, gates and stages the model under the output;
    what the handler gets (the loader) loads that file in a fresh worker
    process without importing TensorFlow, with the launcher's answers."""
    output = tmp_path / "out"
    facts = _launch("--input", str(PHOTOS_DIR / "n01*.JPEG"), "--output",
                    str(output), "--model", standin_tf1, "--backend",
                    "xnnpack", "--model_cache_dir", str(tmp_path / "cache"))
    assert facts.backend == facts.loader.backend == "xnnpack"
    assert facts.parity.passes()
    staged = dict(facts.loader.options)["model_path"]
    assert os.path.dirname(staged) == str(output / "_model")
    assert os.path.exists(staged[:-len(".tflite")] + ".json")
    np.save(tmp_path / "pixels.npy", all_photos[:8])
    worker = subprocess.run(
        [sys.executable, "-c", _WORKER], cwd=PROJECT_ROOT, timeout=300,
        capture_output=True, input=pickle.dumps((
            facts.loader, facts.labels, str(tmp_path / "pixels.npy"),
            str(tmp_path / "answers.npz"))))
    assert worker.returncode == 0, worker.stderr.decode()[-3000:]
    assert worker.stdout.decode().strip() == "[]"  # no tensorflow module
    answers = np.load(tmp_path / "answers.npz")
    logits, embedding = facts.classifier(all_photos[:8])
    assert np.abs(answers["logits"] - logits).max() <= 1e-5
    assert np.abs(answers["embedding"] - embedding).max() <= 1e-5
    # A staged file that is not the one the launch gated is refused.
    with open(staged, "ab") as handle:
        handle.write(b"\0")
    facts.loader.forget()  # as in a process that has not loaded it
    with pytest.raises(backends.ModelLoadError, match="hash differs"):
        facts.loader.load()


_GS_WORKER = """
import pickle, sys
import numpy as np
prepared, location, pixels_path = pickle.load(sys.stdin.buffer)
loader = prepared.stage(location)
logits, embedding = loader()(np.load(pixels_path))
print(repr(dict(loader.options)["model_path"]), float(logits.sum()),
      sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
"""


@pytest.mark.slow
def test_model_is_staged_and_loaded_on_gs(standin_tf1, all_photos,
                                          tmp_path):
    """Staging and the workers' read go through Beam's filesystems: on
    gs:// (the emulator), still without importing TensorFlow."""
    from tests.gcs_emulator import GcsEmulator
    prepared = backends.prepare("xnnpack", standin_tf1, None,
                                str(tmp_path / "cache"))
    np.save(tmp_path / "pixels.npy", all_photos[:4])
    expected = float(prepared.local()(all_photos[:4])[0].sum())
    with GcsEmulator() as emulator:
        emulator.create_bucket("staging")
        worker = subprocess.run(
            [sys.executable, "-c", _GS_WORKER], cwd=PROJECT_ROOT,
            timeout=300, capture_output=True,
            env={**os.environ, **emulator.env()}, input=pickle.dumps((
                prepared, "gs://staging/out/_model",
                str(tmp_path / "pixels.npy"))))
        assert worker.returncode == 0, worker.stderr.decode()[-3000:]
        staged = sorted(emulator.list("staging", "out/_model/"))
    path, total, tensorflow = worker.stdout.decode().split(" ", 2)
    assert path.strip("'") == \
        f"gs://staging/out/_model/{prepared.conversion.name}.tflite"
    assert [name.rsplit("/", 1)[-1] for name in staged] == [
        f"{prepared.conversion.name}.json",
        f"{prepared.conversion.name}.tflite"]
    assert abs(float(total) - expected) <= 1e-3 * max(1.0, abs(expected))
    assert tensorflow.strip() == "[]"


@pytest.mark.slow
def test_auto_falls_back_to_tf_with_one_warning(standin_tf1, tmp_path,
                                                caplog):
    """When xnnpack cannot be gated on the job's images (none decodes),
    auto labels with tf and says why in one warning line."""
    manifest = tmp_path / "inputs.txt"
    manifest.write_text("".join(f"{EDGE_DIR / name}\n" for name in (
        "broken.png", "zero_bytes.jpg", "text_file_renamed.jpg")))
    with caplog.at_level(logging.INFO):
        facts = _launch("--input_manifest", str(manifest), "--output",
                        str(tmp_path / "out"), "--model", standin_tf1,
                        "--model_cache_dir", str(tmp_path / "cache"))
    assert facts.backend == facts.loader.backend == "tf"
    assert facts.classifier.backend == "tf" and facts.parity is None
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "backend auto" in
                r.getMessage()]
    assert warnings == ["backend auto: not xnnpack, as its parity gate "
                        "cannot run: none of the first 3 inputs decodes; "
                        "trying tf"]
    assert facts.backend_record()["backend"] == "tf"
    # Forced, the same problem stops the launch.
    from pipeline.checks import LaunchError
    with pytest.raises(LaunchError, match="none of the first 3 inputs"):
        _launch("--input_manifest", str(manifest), "--output",
                str(tmp_path / "out2"), "--model", standin_tf1,
                "--backend", "xnnpack", "--model_cache_dir",
                str(tmp_path / "cache"))


def _imported_tensorflow(stderr: str) -> bool:
    """From `python -X importtime` output: was TensorFlow imported?"""
    return bool(re.search(r"\|\s+tensorflow$", stderr, re.MULTILINE))


@pytest.mark.slow
def test_pipeline_with_the_default_auto_backend(standin_tf1, tmp_path):
    def label(output, *extra):
        result = run_cli([
            "--input", str(PHOTOS_DIR / "n01*.JPEG"), "--output",
            str(output), "--model", standin_tf1, "--labels", str(LABELS_FILE),
            "--model_cache_dir", str(tmp_path / "cache"), *extra],
            env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    output = tmp_path / "out"
    first = label(output)
    # First launch: converts, runs the gate against TF, records it, and
    # auto chooses xnnpack.
    assert "backend xnnpack vs tf on" in first.stderr
    assert "backend xnnpack (chosen by --backend auto)" in first.stderr
    assert _imported_tensorflow(first.stderr)
    # Later launches reuse the gated conversion without importing TF at
    # all, and label identically.
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
    from transforms.manifest import read_manifest
    assert read_manifest(str(output))["backend"] == "xnnpack"
    reference, _ = load_classifier(standin_tf1)
    for row in rows[:5]:
        pixels = decode_image(open(row["uri"], "rb").read(), SETTINGS)[0]
        logits, embedding = reference(pixels[None])
        assert row["top_k_indices"][0] == int(np.argmax(logits[0]))
        assert np.abs(np.array(row["embedding"]) - embedding[0]).max() < 1e-2
    # --backend tf forces the reference.
    forced = label(tmp_path / "out4", "--backend", "tf")
    assert "backend tf: the reference backend" in forced.stderr
    assert {r["backend"] for r in read_parquet_dir(
        str(tmp_path / "out4"), "labels").to_pylist()} == {"tf"}


