"""The three recipes of docs/architecture.md, done as written: a new backend,
a new source and a new column, each run through the job to Parquet.

Each runs in a fresh process (a recipe changes module state: a registered
backend, a schema with one more field) on the fake backend, so no
TensorFlow is needed; the process also checks it never imported it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow.parquet as pq

from tests.conftest import PROJECT_ROOT, photo_paths
from transforms.manifest import committed_files, read_manifest

# Runs the job on the in-process runner with the fake backend; RECIPE is
# the recipe's code, SOURCE the job's source (None: the config's input).
JOB = """
import sys
from transforms import backends
backends.register("fake", "transforms.backends.fake")
BACKEND = "fake"
{recipe}
from apache_beam import Pipeline
from pipeline import job
from pipeline.options import parse_args
config, options = parse_args(sys.argv[1:])
labels = open("transforms/data/ImageNetLabels.txt").read().splitlines()
loader = backends.prepare(BACKEND, config.model).local
pipeline = Pipeline(options=options)
job.build(pipeline, config, labels, "20261129T000000-recipe", loader,
          source={source})
pipeline.run().wait_until_finish()
assert "tensorflow" not in sys.modules, "the fake backend imported TF"
"""


def run_recipe(tmp_path, recipe: str, source: str = "None") -> str:
    output = str(tmp_path / "out")
    recipe = f"sys.path.insert(0, {str(tmp_path)!r})\n" + \
        textwrap.dedent(recipe)
    code = JOB.format(recipe=recipe, source=source)
    process = subprocess.run(
        [sys.executable, "-c", code, "--input",
         str(photo_paths()[0].rsplit("/", 1)[0] + "/n015*.JPEG"),
         "--output", output, "--model", "unused-by-the-fake-backend",
         "--rows_per_file", "4"], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    return output


def labels_of(output: str):
    return [row for path in committed_files(output, "labels")
            for row in pq.read_table(path).to_pylist()]


PLUGIN = '''"""A backend plugin: NAME, load() and prepare()."""
from transforms.backends import ModelLoader, Prepared
from transforms.backends import fake

NAME = "tiny"


def load(**options):
    classifier = fake.load(embedding_dim=16, seed=7)
    classifier.backend = NAME
    return classifier


def prepare(handle, embedding_handle=None, cache_dir=None, threads=None):
    return Prepared(ModelLoader.of(NAME, __name__))
'''


def test_recipe_a_backend(tmp_path):
    (tmp_path / "tiny_backend.py").write_text(PLUGIN)
    output = run_recipe(tmp_path, """
        backends.register("tiny", "tiny_backend")
        assert "tiny" in backends.choices()
        BACKEND = "tiny"
    """)
    rows = labels_of(output)
    expected = [p for p in photo_paths() if "/n015" in p]
    assert sorted(r["uri"] for r in rows) == sorted(expected)
    assert {r["backend"] for r in rows} == {"tiny"}
    assert {len(r["embedding"]) for r in rows} == {16}
    assert read_manifest(output)["backend"] == "tiny"


def test_recipe_a_source(tmp_path):
    chosen = photo_paths()[10:17]
    output = run_recipe(tmp_path, f"""
        import apache_beam as beam

        class UriList(beam.PTransform):
            '''A list of URIs as a source: PBegin -> PCollection[str].'''
            def __init__(self, uris):
                super().__init__()
                self._uris = list(uris)

            def expand(self, pbegin):
                return pbegin | beam.Create(self._uris)
        chosen = {chosen!r}
    """, source="UriList(chosen + chosen[:2])")
    assert sorted(r["uri"] for r in labels_of(output)) == sorted(chosen)


def test_recipe_a_column(tmp_path):
    output = run_recipe(tmp_path, """
        import pyarrow as pa
        from transforms import schema
        schema.LABELS_SCHEMA = schema.LABELS_SCHEMA.append(
            pa.field("aspect_ratio", pa.float32()))
        from transforms import rows
        rows.COLUMNS["aspect_ratio"] = lambda c: pa.array(
            c.images.widths / c.images.heights, type=pa.float32())
    """)
    rows = labels_of(output)
    assert rows and all(
        abs(r["aspect_ratio"] - r["width"] / r["height"]) < 1e-6
        for r in rows)
