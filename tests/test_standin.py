"""Tests for pipeline.standin: the random-weight MobileNet V2 0.5/96 stand-in."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402

from pipeline import standin  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BATCH = 3
# Every format of one seed is computed from bit-identical weights, so any
# difference between formats is float round-off only (observed: 0.0).
ATOL = 1e-4
TF1_SIGNATURES = {"default", "image_classification", "image_feature_vector"}


def _count(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.fixture(scope="module")
def images() -> tf.Tensor:
    rng = np.random.default_rng(123)
    return tf.constant(rng.uniform(0.0, 1.0, (BATCH, 96, 96, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Every format, seed 0, built once for the module."""
    base = tmp_path_factory.mktemp("standin")
    return {fmt: Path(standin.build_standin(str(base / fmt), fmt=fmt, seed=0))
            for fmt in standin.FORMATS}


@pytest.fixture(scope="module")
def loaded(built):
    return {fmt: hub.load(str(path)) for fmt, path in built.items()}


def _tf1_outputs(module, images) -> tuple[np.ndarray, np.ndarray]:
    logits = module.signatures["image_classification"](images=images)["default"]
    features = module.signatures["image_feature_vector"](images=images)["default"]
    return logits.numpy(), features.numpy()


@pytest.fixture(scope="module")
def outputs(loaded, images) -> dict[str, np.ndarray]:
    logits, features = _tf1_outputs(loaded["tf1"], images)
    return {
        "tf1_logits": logits,
        "tf1_features": features,
        "tf2_logits": loaded["tf2"](images).numpy(),
        "tf2_features": loaded["tf2-feature-vector"](images).numpy(),
    }


def test_tf1_is_tf1_hub_format(built):
    path = built["tf1"]
    assert (path / "saved_model.pb").is_file()
    # Serialized tensorflow_hub.ModuleDef(format=FORMAT_V3): field 1, varint 3.
    assert (path / "tfhub_module.pb").read_bytes() == b"\x08\x03"


@pytest.mark.parametrize("fmt", ["tf2", "tf2-feature-vector"])
def test_tf2_formats_are_plain_saved_models(built, fmt):
    assert (built[fmt] / "saved_model.pb").is_file()
    assert not (built[fmt] / "tfhub_module.pb").exists()


@pytest.mark.parametrize("fmt", standin.FORMATS)
def test_directory_says_it_is_a_standin(built, fmt):
    text = (built[fmt] / standin.README_NAME).read_text()
    assert "RANDOM-WEIGHT STAND-IN" in text and "MEANINGLESS" in text
    assert f"format: {fmt}\n" in text and "seed: 0\n" in text


def test_tf1_signatures(loaded, images, outputs):
    module = loaded["tf1"]
    assert set(module.signatures) == TF1_SIGNATURES
    for key in TF1_SIGNATURES:
        sig = module.signatures[key]
        (spec,) = sig.structured_input_signature[1].values()
        assert list(sig.structured_input_signature[1]) == ["images"]
        assert spec.shape.as_list() == [None, 96, 96, 3] and spec.dtype == tf.float32
        assert list(sig.structured_outputs) == ["default"]
    assert outputs["tf1_logits"].shape == (BATCH, 1001)
    assert outputs["tf1_features"].shape == (BATCH, 1280)
    # `default` is the classifier, as in the real module.
    default = module.signatures["default"](images)["default"].numpy()
    np.testing.assert_array_equal(default, outputs["tf1_logits"])
    # Logits, not probabilities: no softmax at the end.
    assert not np.allclose(outputs["tf1_logits"].sum(axis=1), 1.0)
    assert (outputs["tf1_logits"] < 0).any()


def test_tf1_one_graph_one_pruned_function(loaded, images, outputs):
    """Both outputs come from one graph and its shared variables (one prune)."""
    module = loaded["tf1"]
    graph = module.graph
    fused = module.prune(
        feeds=[graph.get_tensor_by_name("images:0")],
        fetches=(graph.get_tensor_by_name("hub_output/logits:0"),
                 graph.get_tensor_by_name("hub_output/feature_vector:0")))
    logits, features = fused(images)
    np.testing.assert_array_equal(logits.numpy(), outputs["tf1_logits"])
    np.testing.assert_array_equal(features.numpy(), outputs["tf1_features"])
    assert len(module.variables) == 262  # one set of variables, not one per signature


def test_tf2_callables_and_serving_default(loaded, images, outputs):
    assert outputs["tf2_logits"].shape == (BATCH, 1001)
    assert outputs["tf2_features"].shape == (BATCH, 1280)
    for fmt, key in [("tf2", "tf2_logits"), ("tf2-feature-vector", "tf2_features")]:
        served = loaded[fmt].signatures["serving_default"](images=images)["default"]
        np.testing.assert_array_equal(served.numpy(), outputs[key])
    # Any batch size.
    assert loaded["tf2"](images[:1]).shape == (1, 1001)


def test_formats_agree(loaded, outputs):
    np.testing.assert_allclose(outputs["tf1_logits"], outputs["tf2_logits"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(outputs["tf1_features"], outputs["tf2_features"], atol=ATOL, rtol=0)
    # tf2 logits == Dense(tf2-feature-vector features): same backbone weights.
    weights = {v.name: v.numpy() for v in loaded["tf2"].variables}
    dense = outputs["tf2_features"] @ weights["Logits/kernel:0"] + weights["Logits/bias:0"]
    np.testing.assert_allclose(dense, outputs["tf2_logits"], atol=ATOL, rtol=0)


def test_inputs_rescaled_to_minus_one_one_inside(outputs):
    """The modules take [0, 1] and feed the network 2x - 1."""
    model = standin._keras_model()
    model.set_weights(standin._random_weights(model.weights, seed=0))
    rng = np.random.default_rng(123)  # the `images` fixture's values
    x = rng.uniform(0.0, 1.0, (BATCH, 96, 96, 3)).astype(np.float32)
    logits, features = (t.numpy() for t in model(2.0 * x - 1.0, training=False))
    np.testing.assert_allclose(outputs["tf1_logits"], logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(outputs["tf2_features"], features, atol=ATOL, rtol=0)
    unscaled, _ = model(x, training=False)
    assert np.abs(unscaled.numpy() - logits).max() > 0.1


def test_parameter_count(loaded):
    for fmt in ("tf1", "tf2"):
        n = _count(loaded[fmt].variables)
        assert abs(n - 1_950_000) <= 0.05 * 1_950_000, (fmt, n)
        assert n == 1_988_505  # the figure quoted in the module docstring
    # The feature-vector module is the same minus the 1281 x 1001 classifier.
    assert _count(loaded["tf2-feature-vector"].variables) == 1_988_505 - 1281 * 1001
    assert _count(loaded["tf2"].trainable_variables) == 1_969_961


def test_cli_builds_identical_loadable_module(built, loaded, images, outputs, tmp_path):
    """A second build (here via the CLI, in another process) gives the same module."""
    out = tmp_path / "cli_tf1"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.standin", str(out), "--format", "tf1", "--seed", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr
    assert "WARNING pipeline.standin" in proc.stderr and "RANDOM-WEIGHT STAND-IN" in proc.stderr
    assert (out / "tfhub_module.pb").is_file() and (out / standin.README_NAME).is_file()
    module = hub.load(str(out))
    logits, features = _tf1_outputs(module, images)
    np.testing.assert_array_equal(logits, outputs["tf1_logits"])
    np.testing.assert_array_equal(features, outputs["tf1_features"])
    for a, b in zip(module.variables, loaded["tf1"].variables):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_different_seed_differs(outputs, images, tmp_path):
    path = standin.build_standin(str(tmp_path / "fv1"), fmt="tf2-feature-vector", seed=1)
    features = hub.load(path)(images).numpy()
    assert np.abs(features - outputs["tf2_features"]).max() > 0.1


def test_rejects_non_empty_directory_and_unknown_format(tmp_path):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file").write_text("x")
    with pytest.raises(FileExistsError):
        standin.build_standin(str(tmp_path / "occupied"))
    with pytest.raises(ValueError):
        standin.build_standin(str(tmp_path / "new"), fmt="tf3")
    assert standin.main([str(tmp_path / "occupied")]) == 2
    assert not (tmp_path / "new").exists()


def test_importing_the_standin_module_does_not_import_tensorflow():
    """The CLI imports it to check --create_standin_model: TensorFlow only
    loads when a module is built."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, pipeline.standin; print(sorted("
         "m for m in sys.modules if m.split('.')[0] in ('tensorflow', "
         "'tf_keras')))"], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tf1_variant(tmp_path_factory) -> Path:
    """Both TF1 variants at once: separate placeholders and a {"train"}
    meta graph."""
    return Path(standin.build_standin(
        str(tmp_path_factory.mktemp("variant") / "tf1"), "tf1", seed=0,
        separate_inputs=True, train_graph=True))


def test_tf1_variant_layout(tf1_variant, images, outputs):
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tf1_variant / "saved_model.pb").read_bytes())
    assert [list(m.meta_info_def.tags) for m in saved.meta_graphs] == \
        [[], ["train"]]
    # hub.load picks the inference graph: the plain stand-in's outputs.
    module = hub.load(str(tf1_variant))
    classify = module.signatures["image_classification"]
    embed = module.signatures["image_feature_vector"]
    assert classify.inputs[0].name != embed.inputs[0].name
    logits, features = _tf1_outputs(module, images)
    np.testing.assert_allclose(logits, outputs["tf1_logits"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(features, outputs["tf1_features"], atol=ATOL, rtol=0)
    # The {"train"} graph normalises with batch statistics instead.
    train = tf.compat.v1.saved_model.load_v2(str(tf1_variant), tags=["train"])
    train_logits = train.signatures["image_classification"](images=images)["default"]
    assert np.abs(train_logits.numpy() - outputs["tf1_logits"]).max() > 0.1


def test_variants_are_tf1_only(tmp_path):
    with pytest.raises(ValueError, match="TF1 variants"):
        standin.build_standin(str(tmp_path / "m"), "tf2", train_graph=True)
