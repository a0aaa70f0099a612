"""The demo works on a fresh clone with no ../shared beside it; the README
stays short, and every link in it and in docs/ resolves."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.options import build_parser
from pipeline.samples import EXIF_ORIENTATION_TAG, write_samples
from tests.conftest import LABELS_FILE, PROJECT_ROOT
from transforms.manifest import committed_files

README_BUDGET_LINES = 200
# [text](target), the target up to the closing parenthesis.
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

def _project_files() -> List[str]:
    """The files a clone holds: tracked, plus new ones not git-ignored."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, check=True)
    return [name for name in listing.stdout.decode().split("\0")
            if name and (PROJECT_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A copy of the project's files in a directory with no `shared/`
    beside it, as a fresh clone elsewhere has."""
    root = tmp_path_factory.mktemp("fresh") / "beam-image-labeler"
    for name in _project_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    assert not (root.parent / "shared").exists()
    return root


def test_samples_are_deterministic_and_cover_the_input_kinds(tmp_path):
    first = write_samples(str(tmp_path / "a"))
    second = write_samples(str(tmp_path / "b"))
    assert first == second
    for sample in first:
        assert (tmp_path / "a" / sample.name).read_bytes() == \
            (tmp_path / "b" / sample.name).read_bytes(), sample.name

    formats, modes, orientations = set(), set(), set()
    for sample in first:
        path = tmp_path / "a" / sample.name
        if not sample.decodable:
            with pytest.raises(Exception):
                with Image.open(path) as image:
                    image.load()
            continue
        with Image.open(path) as image:
            image.load()
            formats.add(image.format)
            modes.add(image.mode)
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
            orientations.add(orientation)
            stored = image.size
        upright = stored[::-1] if orientation in (5, 6, 7, 8) else stored
        assert upright == sample.upright_size, sample.name
    assert {"JPEG", "PNG"} <= formats
    assert {"RGB", "L", "RGBA", "P"} <= modes
    assert orientations - {1}, "no sample carries an EXIF orientation"
    assert len({s.upright_size for s in first if s.decodable}) >= 10
    assert sum(not s.decodable for s in first) >= 2


def test_packaged_labels_are_the_module_classes(clone, tmp_path):
    packaged = PROJECT_ROOT / "transforms" / "data" / "ImageNetLabels.txt"
    assert packaged.read_bytes() == LABELS_FILE.read_bytes()
    assert len(packaged.read_text().splitlines()) == 1001
    # The wheel built from the clone ships it.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet",
                    "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(clone)], check=True, capture_output=True, timeout=300)
    import zipfile  # pylint: disable=import-outside-toplevel
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("transforms/data/ImageNetLabels.txt") == \
            packaged.read_bytes()


def _make_env(clone: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PYTHONPATH"] = str(clone)
    return env


@pytest.mark.slow
def test_make_demo_on_a_fresh_clone(clone):
    """`make demo`, the README's first command, in a clone with no
    ../shared: it generates the samples, builds the stand-in and labels them;
    the clone's labels and errors match the sample set."""
    venv = sys.prefix  # this venv stands in for the one `make install` builds
    installed = f"{venv}/.installed"
    done = subprocess.run(
        ["make", "--no-print-directory", "-o", installed, "demo",
         f"VENV={venv}"], cwd=clone, env=_make_env(clone),
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "meaningless" in done.stderr.lower(), done.stderr[-3000:]

    samples = write_samples(str(clone / ".cache" / "expected"))
    output = clone / "demo-out"
    labels = pq.read_table(committed_files(str(output), "labels"),
                           columns=["uri", "label", "width", "height"])
    errors = pq.read_table(committed_files(str(output), "errors"),
                           columns=["uri", "stage"])
    label_rows = labels.to_pylist()
    assert len(label_rows) == sum(s.decodable for s in samples)
    assert errors.num_rows == sum(not s.decodable for s in samples)

    by_name = {os.path.basename(row["uri"]): row for row in label_rows}
    assert set(by_name) == {s.name for s in samples if s.decodable}
    assert {os.path.basename(u) for u in errors.column("uri").to_pylist()} \
        == {s.name for s in samples if not s.decodable}
    for sample in samples:
        if sample.decodable:
            row = by_name[sample.name]
            assert (row["width"], row["height"]) == sample.upright_size
    with open(clone / "transforms" / "data" / "ImageNetLabels.txt") as handle:
        classes = set(handle.read().splitlines())
    assert {row["label"] for row in label_rows} <= classes
    assert (clone / ".cache" / "standin-tf1").is_dir()


def _doc_files() -> List[Path]:
    return [PROJECT_ROOT / "README.md",
            *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def _anchors(markdown: Path) -> Set[str]:
    """GitHub's ids for a file's headings: lower case, punctuation dropped,
    spaces to hyphens."""
    anchors = set()
    in_code = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_readme_fits_its_budget():
    lines = (PROJECT_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_BUDGET_LINES


def test_every_relative_link_in_readme_and_docs_resolves():
    broken = []
    for doc in _doc_files():
        for target in MARKDOWN_LINK.findall(doc.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:, ...
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            if not path.exists():
                broken.append(f"{doc.name} -> {target}: no such file")
            elif anchor and path.suffix == ".md" and \
                    anchor not in _anchors(path):
                broken.append(f"{doc.name} -> {target}: no such heading")
    assert not broken, broken


def test_readme_links_every_topic_in_docs():
    linked = {target.partition("#")[0] for target in MARKDOWN_LINK.findall(
        (PROJECT_ROOT / "README.md").read_text())}
    for topic in ("cli", "output", "testing", "architecture", "reliability",
                  "performance", "running-on-dataflow"):
        assert f"docs/{topic}.md" in linked, topic


def test_cli_doc_names_every_option():
    text = (PROJECT_ROOT / "docs" / "cli.md").read_text()
    options = [flag for action in build_parser()._actions  # pylint: disable=protected-access
               for flag in action.option_strings if flag.startswith("--")]
    assert options
    assert [flag for flag in options if f"`{flag}`" not in text] == []
