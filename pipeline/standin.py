"""Random-weight stand-in for the TF-Hub MobileNet V2 (alpha 0.5, 96x96) module.

The real module, ``google/imagenet/mobilenet_v2_050_96/classification``, cannot
be downloaded in this environment, so this module writes an
*architecture-identical* replacement with seeded random weights. Its
predictions (and so its labels) are MEANINGLESS; it exists so that the
pipeline can be run and tested end to end without network access. Every build
logs a WARNING and writes a ``STANDIN.txt`` file into the module directory
saying so.

Architecture: ``tf_keras.applications.MobileNetV2`` with depth multiplier 0.5,
input 96x96x3, global-average-pooled 1280-d feature vector and a
``Dense(1001)`` classifier without softmax (class 0 is "background", as in the
TF-Hub ImageNet modules). Parameter count: 1,988,505 in total, of which
1,969,961 are trainable (the rest are batch-norm moving statistics); the model
card says 1.95 M (1.0-2.0 % off, within the 5 % the tests allow).

Formats (``fmt``):

* ``"tf1"`` - TF1 Hub format, like version 2 of the real module: a SavedModel
  built in ``tf.compat.v1`` graph mode plus a ``tfhub_module.pb`` marker. One
  meta graph with the empty tag set (the one ``hub.load`` picks) holding the
  signatures ``default`` and ``image_classification`` (``images`` -> logits
  under key ``default``) and ``image_feature_vector`` (``images`` -> features
  under key ``default``), all in one graph over the same variables. Inputs
  are float32 RGB in [0, 1]; the graph rescales them to [-1, 1]. Graph tensor
  names: ``images:0`` -> ``hub_output/logits:0`` and
  ``hub_output/feature_vector:0`` (read them from the signatures rather than
  hard-coding them if the real module may be used too). By default there is
  no ``{"train"}`` meta graph and both signatures share the ``images``
  placeholder; ``build_standin``'s ``train_graph`` and ``separate_inputs``
  build those variants of the real module's layout.
* ``"tf2"`` - TF2 SavedModel like versions 4/5 of the real module: a callable
  ``images -> logits`` plus a ``serving_default`` signature.
* ``"tf2-feature-vector"`` - the matching feature-vector module (like
  ``.../feature_vector/4``): ``images -> features`` with the same backbone
  weights as ``"tf2"`` for the same seed (706,224 parameters: no classifier).

The TF2 modules follow the Reusable SavedModel API (``variables``,
``trainable_variables``, ``regularization_losses``), so ``hub.KerasLayer``
accepts them as well.

All formats of one seed share identical weights, generated with NumPy's
seeded generator (independent of TensorFlow's global random state), so the
same seed gives identical outputs in every build.

CLI::

    python -m pipeline.standin DIR [--format tf1|tf2|tf2-feature-vector] [--seed 0]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# Not __name__: under `python -m` that would be "__main__".
logger = logging.getLogger("pipeline.standin")

HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v2_050_96/classification"
IMAGE_SIZE = 96
ALPHA = 0.5
NUM_CLASSES = 1001
FEATURE_DIM = 1280
MODEL_CARD_PARAMS = 1_950_000
FORMATS = ("tf1", "tf2", "tf2-feature-vector")

README_NAME = "STANDIN.txt"
_HUB_MODULE_PB = "tfhub_module.pb"  # tensorflow_hub.module_v2._MODULE_PROTO_FILENAME_PB
IMAGES_SHAPE = [None, IMAGE_SIZE, IMAGE_SIZE, 3]

_WARNING = (
    "%s is a RANDOM-WEIGHT STAND-IN for %s (format %s, seed %d): same "
    "architecture, meaningless predictions and labels."
)


def _readme(fmt: str, seed: int, n_params: int) -> str:
    return (
        "RANDOM-WEIGHT STAND-IN - NOT THE REAL MODEL\n"
        "\n"
        f"This directory imitates {HANDLE}\n"
        "(MobileNet V2, depth multiplier 0.5, 96x96 RGB input in [0, 1],\n"
        f"{NUM_CLASSES} classes with 0 = background, {FEATURE_DIM}-d feature vector).\n"
        "The architecture matches, but the weights are seeded random numbers:\n"
        "its logits, labels and feature vectors are MEANINGLESS.\n"
        "\n"
        f"format: {fmt}\n"
        f"seed: {seed}\n"
        f"parameters: {n_params}\n"
        "generator: python -m pipeline.standin\n"
    )


def _module_def_bytes() -> bytes:
    """Serialize ``tensorflow_hub.ModuleDef(format=FORMAT_V3)``.

    tensorflow_hub 0.16 no longer ships ``module_def_pb2``, so the message is
    declared here from tensorflow_hub/module_def.proto (proto3: ``Format
    format = 1`` with ``FORMAT_V3 = 3``; ``repeated string required_features =
    2``) in a private descriptor pool, to avoid clashing with any other
    registration of the same name.
    """
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_hub/module_def.proto", package="tensorflow_hub", syntax="proto3")
    msg = fdp.message_type.add(name="ModuleDef")
    enum = msg.enum_type.add(name="Format")
    enum.value.add(name="FORMAT_UNSPECIFIED", number=0)
    enum.value.add(name="FORMAT_V3", number=3)
    F = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="format", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_ENUM,
                  type_name=".tensorflow_hub.ModuleDef.Format")
    msg.field.add(name="required_features", number=2, label=F.LABEL_REPEATED,
                  type=F.TYPE_STRING)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    module_def_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow_hub.ModuleDef"))
    return module_def_cls(format=3).SerializeToString()


def _import_tf():
    """TensorFlow and tf_keras, imported when a module is built (importing
    this module must not load TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    return tf, tf_keras


def _keras_model() -> "tf_keras.Model":
    """MobileNet V2 0.5/96 with two outputs, ``[logits, features]``.

    Works both eagerly and inside a ``tf.Graph().as_default()`` block. Layer
    names are fixed, so the weight order (and names) are the same every time.
    """
    _, tf_keras = _import_tf()
    backbone = tf_keras.applications.MobileNetV2(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=ALPHA, include_top=False,
        weights=None, pooling="avg")
    # Equivalent to include_top=True with classifier_activation=None, but keeps
    # the pooled features reachable as a second output.
    logits = tf_keras.layers.Dense(NUM_CLASSES, name="Logits")(backbone.output)
    return tf_keras.Model(backbone.input, [logits, backbone.output],
                          name="mobilenet_v2_050_96_standin")


def _random_weights(weights: Sequence["tf.Variable"], seed: int) -> list[np.ndarray]:
    """Seeded values for ``weights`` (in order), chosen by variable kind.

    He-normal kernels keep activations in a sane range through all 17 blocks
    (checked: features vary across inputs instead of collapsing). Batch-norm
    parameters are jittered away from the identity so that a failure to load
    them would change the outputs.
    """
    rng = np.random.default_rng(seed)
    values = []
    for w in weights:
        kind = w.name.split("/")[-1].split(":")[0]
        shape = tuple(int(d) for d in w.shape)
        if kind == "kernel" and w.name.startswith("Logits/"):
            value = rng.normal(0.0, np.sqrt(1.0 / shape[0]), shape)  # LeCun: modest logits
        elif kind == "kernel":  # conv kernel (h, w, in, out)
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif kind == "depthwise_kernel":  # (h, w, in, 1): fan-in is h*w
            value = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1])), shape)
        elif kind in ("gamma", "moving_variance"):
            value = rng.uniform(0.8, 1.2, shape)
        elif kind in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.05, shape)
        else:
            raise ValueError(f"unexpected weight {w.name!r}")
        values.append(value.astype(w.dtype.as_numpy_dtype))
    return values


def _check_param_count(n_params: int) -> None:
    # Guards against a tf_keras change silently altering the architecture.
    if abs(n_params - MODEL_CARD_PARAMS) > 0.05 * MODEL_CARD_PARAMS:
        raise RuntimeError(
            f"stand-in has {n_params} parameters, expected about {MODEL_CARD_PARAMS}")


def _tf1_graph(training: bool, separate_inputs: bool):
    """One TF1 graph of the module: (graph, signature_def_map, keras
    model). `training` builds the training-mode graph of the
    {"train"} meta graph (batch norm on batch statistics)."""
    tf, _ = _import_tf()
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, IMAGES_SHAPE, name="images")
        model = _keras_model()
        # Hub image modules take RGB in [0, 1]; MobileNet expects [-1, 1].
        logits, features = model(images * 2.0 - 1.0, training=training)
        feature_images = images
        if separate_inputs:
            # A placeholder of its own for image_feature_vector, as a module
            # built from one module_fn call per signature would have.
            feature_images = tf.compat.v1.placeholder(
                tf.float32, IMAGES_SHAPE, name="feature_images")
            _, features = model(feature_images * 2.0 - 1.0, training=training)
        # Stable, readable tensor names for consumers that prune the graph
        # ("hub_output/logits:0", "hub_output/feature_vector:0"). A bare
        # "logits" would become "logits_1": op names collide case-insensitively
        # with the Keras "Logits" scope.
        with tf.name_scope("hub_output"):
            logits = tf.identity(logits, name="logits")
            features = tf.identity(features, name="feature_vector")
        classify = tf.compat.v1.saved_model.predict_signature_def(
            inputs={"images": images}, outputs={"default": logits})
        embed = tf.compat.v1.saved_model.predict_signature_def(
            inputs={"images": feature_images}, outputs={"default": features})
    signatures = {"default": classify, "image_classification": classify,
                  "image_feature_vector": embed}
    return graph, signatures, model


def _write_tf1(directory: str, seed: int, separate_inputs: bool = False,
               train_graph: bool = False) -> int:
    """Write the TF1 Hub format module; return the parameter count."""
    tf, _ = _import_tf()
    graph, signatures, model = _tf1_graph(False, separate_inputs)
    builder = tf.compat.v1.saved_model.Builder(directory)
    with graph.as_default():
        values = _random_weights(model.weights, seed)
        n_params = model.count_params()
        with tf.compat.v1.Session(graph=graph) as sess:
            # Feed the seeded values into the variables' own initializers
            # (what Variable.load does): no extra assign ops end up in the graph.
            sess.run([w.initializer for w in model.weights],
                     feed_dict={w.initializer.inputs[1]: v for w, v in zip(model.weights, values)})
            # Empty tag set, as in the real module: hub.load() passes tags=[]
            # when it finds tfhub_module.pb.
            builder.add_meta_graph_and_variables(
                sess, tags=[], strip_default_attrs=True,
                signature_def_map=signatures)
    if train_graph:
        # The real module's second meta graph, over the same variables.
        train, train_signatures, _ = _tf1_graph(True, separate_inputs)
        with train.as_default():
            builder.add_meta_graph(["train"], strip_default_attrs=True,
                                   signature_def_map=train_signatures)
    builder.save()
    with open(os.path.join(directory, _HUB_MODULE_PB), "wb") as f:
        f.write(_module_def_bytes())
    return n_params


class _Untracked:
    """Holds an object without tf.Module tracking it.

    Keeps the Keras model out of the SavedModel object graph (saving it would
    trace every layer's call function: slow and bulky); its variables are
    tracked explicitly instead.
    """

    def __init__(self, obj: object) -> None:
        self.obj = obj


def _standin_module(model: "tf_keras.Model", name: str) -> "tf.Module":
    """TF2 reusable SavedModel: ``module(images) -> logits or features``."""
    tf, _ = _import_tf()
    images_spec = tf.TensorSpec(IMAGES_SHAPE, tf.float32, name="images")

    class StandinModule(tf.Module):
        # Shadow tf.Module's read-only properties so that these attributes of
        # the Reusable SavedModel API (used by hub.KerasLayer) are saved and
        # restored.
        variables = None
        trainable_variables = None

        def __init__(self) -> None:
            super().__init__(name=name)
            self._net = _Untracked(model)
            self.variables = list(model.variables)
            self.trainable_variables = list(model.trainable_variables)
            self.regularization_losses = []

        def _forward(self, images):
            # Hub image modules take RGB in [0, 1]; MobileNet expects [-1, 1].
            return self._net.obj(images * 2.0 - 1.0, training=False)

        @tf.function(input_signature=[images_spec])
        def __call__(self, images):
            return self._forward(images)

        # Not via self(images): a nested tf.function would pass the variables
        # on as oddly named inputs in the saved signature.
        @tf.function(input_signature=[images_spec])
        def serve(self, images):
            return {"default": self._forward(images)}

    return StandinModule()


def _write_tf2(directory: str, seed: int, feature_vector: bool) -> int:
    """Write a TF2 SavedModel (classifier or feature vector); return its parameter count."""
    tf, tf_keras = _import_tf()
    model = _keras_model()
    # Seeded for the full classifier in both cases, so the backbone weights of
    # "tf2" and "tf2-feature-vector" are identical for one seed.
    model.set_weights(_random_weights(model.weights, seed))
    logits, features = model.outputs
    head = features if feature_vector else logits
    net = tf_keras.Model(model.input, head, name=model.name)
    module = _standin_module(net, "feature_vector" if feature_vector else "classification")
    tf.saved_model.save(module, directory,
                        signatures={"serving_default": module.serve.get_concrete_function()})
    return net.count_params()


def build_standin(directory: str, fmt: str = "tf1", seed: int = 0, *,
                  separate_inputs: bool = False, train_graph: bool = False) -> str:
    """Write the stand-in module to `directory` (created; must be empty or
    absent) and return the directory.

    TF1 variants, for loaders that must not depend on this stand-in's
    details: `separate_inputs` gives `image_feature_vector` an input
    placeholder of its own; `train_graph` adds a {"train"} meta graph
    (training-mode batch norm) as the real module has."""
    if fmt != "tf1" and (separate_inputs or train_graph):
        raise ValueError("separate_inputs and train_graph are TF1 variants")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise FileExistsError(f"{directory} exists and is not an empty directory")
    os.makedirs(directory, exist_ok=True)
    logger.warning(_WARNING, directory, HANDLE, fmt, seed)
    if fmt == "tf1":
        n_params = _write_tf1(directory, seed, separate_inputs, train_graph)
    else:
        n_params = _write_tf2(directory, seed, feature_vector=(fmt == "tf2-feature-vector"))
    # The feature-vector module has no classifier (1281 * 1001 fewer weights).
    _check_param_count(n_params + (FEATURE_DIM + 1) * NUM_CLASSES * (fmt == "tf2-feature-vector"))
    with open(os.path.join(directory, README_NAME), "w", encoding="utf-8") as f:
        f.write(_readme(fmt, seed, n_params))
    logger.info("wrote %s stand-in (%d parameters) to %s", fmt, n_params, directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    """CLI: build a stand-in module directory."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.standin",
        description=("Write a random-weight, architecture-identical stand-in for "
                     f"{HANDLE}. Its predictions are meaningless."))
    parser.add_argument("directory", help="output directory (must be empty or absent)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="tf1",
                        help="tf1: TF1 Hub format (like version 2); tf2 / tf2-feature-vector: "
                             "TF2 SavedModels (like classification/feature_vector version 4)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_standin(args.directory, fmt=args.fmt, seed=args.seed)
    except (FileExistsError, ValueError) as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
