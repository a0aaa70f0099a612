"""Input sources: the glob matches what Beam's FileSystems.match matches,
GlobUris and ManifestUris give exactly the input URIs in a pipeline, and the
launch checks sample the input instead of listing or reading all of it."""
from __future__ import annotations

import logging
import os
import threading

import apache_beam as beam
import pytest
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipeline.checks import PARITY_SAMPLE, LaunchError, list_inputs
from tests.conftest import PHOTOS_DIR, photo_paths
from transforms.sources import (GlobPattern, GlobUris, InputSpec,
                                ManifestUris, _glob_tokens, iter_matches,
                                manifest_uris)

# A tree with hidden files and directories, names that look like glob
# syntax, files at several depths, a symlinked file, a symlinked directory
# (not descended into, as Beam's os.walk) and a dangling symlink.
TREE_FILES = [
    "a.jpg", "b.JPG", ".hidden.jpg", "c.png", "[x].jpg", "x.jpg",
    "one/1.jpg", "one/2.jpg", "one/.h.jpg", "one/notes.txt",
    "one/two/3.jpg", "one/two/three/4.jpg", "one/two/three/5.png",
    ".dot/6.jpg", "ab/7.jpg", "ab/c/8.jpg", "q1/9.jpg", "q2/10.jpg",
]

PATTERNS = [
    "*", "**", "*.jpg", "**.jpg", "**/*.jpg", "*/*.jpg", "*/*/*.jpg",
    "?.jpg", "a?c/*", "a?8.jpg", "q?/*.jpg", "[ab]*", "[!a]*.jpg",
    "q[12]/*", "[x].jpg", "one/", "one/**", "one/two/three/4.jpg",
    "one/*", "*/two/**.png", ".*", "**/.*", "nothing/*", "one/[",
    "*/t*/**/*.jpg", "o*e/t?o/**",
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tree")
    for name in TREE_FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (root / "one" / "link.jpg").symlink_to(root / "a.jpg")
    (root / "linkdir").symlink_to(root / "one")
    (root / "dangling.jpg").symlink_to(root / "missing.jpg")
    return str(root)


def _beam_match(pattern: str):
    return sorted(m.path for m in FileSystems.match([pattern])[0]
                  .metadata_list)


@pytest.mark.parametrize("relative", PATTERNS)
def test_glob_matches_what_beam_matches(tree, relative):
    pattern = os.path.join(tree, relative)
    assert sorted(iter_matches(pattern)) == _beam_match(pattern)


def test_glob_semantics(tree):
    """The cases above are not all empty or all alike: `*` stays in a
    segment, `**` crosses them, `?` and classes are one character, hidden
    files match, directories and dangling links are no inputs."""
    def rel(relative):
        return sorted(os.path.relpath(uri, tree)
                      for uri in iter_matches(os.path.join(tree, relative)))
    assert rel("*.jpg") == [".hidden.jpg", "[x].jpg", "a.jpg", "x.jpg"]
    assert rel("**/*.jpg") == [
        ".dot/6.jpg", "ab/7.jpg", "ab/c/8.jpg", "one/.h.jpg", "one/1.jpg",
        "one/2.jpg", "one/link.jpg", "one/two/3.jpg", "one/two/three/4.jpg",
        "q1/9.jpg", "q2/10.jpg"]
    assert rel("q?/*.jpg") == ["q1/9.jpg", "q2/10.jpg"]
    assert rel("[x].jpg") == ["x.jpg"]
    assert rel("a?8.jpg") == []  # `?` is one character: "a/c/8" needs 3
    assert rel("ab?c/*") == ["ab/c/8.jpg"]  # ... and may be a "/"


def test_glob_regex_is_beams():
    for pattern in PATTERNS + ["gs://b/p/**/x[!/]?.jpg", "a[^b]c", "a[]]"]:
        assert ("(?ms)" + "".join(_glob_tokens(pattern)) + r"\Z"
                == FileSystem.translate_pattern(pattern))


def test_only_directories_that_can_match_are_entered():
    glob = GlobPattern("gs://b/photos/2024-*/day[0-3]/*.jpg")
    assert glob.may_contain("gs://b/photos/")
    assert glob.may_contain("gs://b/photos/2024-05/")
    assert glob.may_contain("gs://b/photos/2024-05/day1/")
    assert not glob.may_contain("gs://b/photos/2023-05/")
    assert not glob.may_contain("gs://b/photos/2024-05/day7/")
    assert not glob.may_contain("gs://b/photos/2024-05/day1/deeper/")
    assert not glob.may_contain("gs://b/other/")
    assert GlobPattern("gs://b/photos/**.jpg").may_contain(
        "gs://b/photos/a/b/c/d/")


def test_photos_glob():
    pattern = str(PHOTOS_DIR / "*.JPEG")
    assert sorted(iter_matches(pattern)) == photo_paths() == \
        _beam_match(pattern)


@pytest.mark.parametrize("fanout_levels", [0, 1, 2])
def test_glob_uris_in_a_pipeline(tree, fanout_levels):
    """Every match exactly once, whether a directory is listed at a fan-out
    level or inside a whole-tree listing."""
    pattern = os.path.join(tree, "**.jpg")
    expected = _beam_match(pattern)
    assert len(expected) == 15
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        uris = pipeline | GlobUris(pattern, fanout_levels=fanout_levels)
        assert_that(uris, equal_to(expected))


def test_glob_uris_photos():
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        uris = pipeline | GlobUris(str(PHOTOS_DIR / "*.JPEG"))
        assert_that(uris, equal_to(photo_paths()))


MANIFEST_LINES = [
    "uri,label", "# a comment", "", "gs://b/1.jpg,cat",
    '"gs://b/with,comma.jpg",dog', "  /local/2.jpg  ", "gs://b/1.jpg",
    "s3://b/3.jpg",
]
MANIFEST_URIS = ["gs://b/1.jpg", "gs://b/with,comma.jpg", "/local/2.jpg",
                 "gs://b/1.jpg", "s3://b/3.jpg"]


def test_manifest_uris_in_a_pipeline(tmp_path):
    """Every URI line as given; duplicates are left to the chunking step."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(MANIFEST_LINES * 300) + "\n")
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        uris = pipeline | ManifestUris(str(manifest))
        assert_that(uris, equal_to(MANIFEST_URIS * 300))
    assert list(manifest_uris(str(manifest))) == MANIFEST_URIS * 300


def test_sample_of_a_small_input_is_all_of_it(tmp_path):
    manifest = tmp_path / "m.txt"
    manifest.write_text("\n".join(MANIFEST_LINES))
    sample = InputSpec(manifest=str(manifest)).sample(64)
    assert sample.complete and sample.count == 4
    assert sample.uris == ("gs://b/1.jpg", "gs://b/with,comma.jpg",
                           "/local/2.jpg", "s3://b/3.jpg")
    sample = InputSpec(manifest=str(manifest)).sample(2)
    assert not sample.complete and sample.count is None
    assert sample.uris == ("gs://b/1.jpg", "gs://b/with,comma.jpg")


def test_input_spec():
    spec = InputSpec(pattern="gs://b/*.jpg")
    assert spec.allowed_schemes == ("gs",) and spec.flag == "--input"
    assert spec.allows("gs://b/x.jpg") and not spec.allows("/etc/passwd")
    assert isinstance(spec.uris(), GlobUris)
    spec = InputSpec(manifest="/m.txt", allowed_schemes=["gs", "file"])
    assert spec.allowed_schemes == ("gs", "file")
    assert isinstance(spec.uris(), ManifestUris)
    with pytest.raises(ValueError):
        InputSpec()
    with pytest.raises(ValueError):
        InputSpec(pattern="a", manifest="b")


def test_launch_check_samples_a_glob(tree, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.checks")
    total, sample = list_inputs(str(PHOTOS_DIR / "*.JPEG"), None)
    assert len(photo_paths()) > PARITY_SAMPLE
    assert total is None
    assert len(sample) == PARITY_SAMPLE
    assert set(sample) <= set(photo_paths())
    assert f"input: at least {PARITY_SAMPLE} images (sampled" in caplog.text
    caplog.clear()
    total, sample = list_inputs(os.path.join(tree, "one/*.jpg"), None)
    assert total == 4 and sorted(sample) == _beam_match(
        os.path.join(tree, "one/*.jpg"))
    assert "input: 4 images" in caplog.text
    with pytest.raises(LaunchError, match="matches no files"):
        list_inputs(os.path.join(tree, "nothing/*"), None)


def test_launch_check_stops_reading_the_manifest(tmp_path, caplog):
    """The manifest is a pipe whose writer only finishes after the check
    returned: a check that read it whole would see all its lines. Its
    writer finds the pipe closed by the reader."""
    caplog.set_level(logging.INFO, logger="pipeline.checks")
    fifo = str(tmp_path / "manifest.txt")
    os.mkfifo(fifo)
    checked = threading.Event()
    reader_closed = []

    def write():
        try:
            with open(fifo, "w") as handle:
                handle.writelines(f"gs://b/{i}.jpg\n" for i in range(100))
                handle.flush()
                checked.wait(timeout=30)
                handle.writelines(f"gs://b/late-{i}.jpg\n"
                                  for i in range(100))
        except BrokenPipeError:
            reader_closed.append(True)
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        total, sample = list_inputs(None, fifo)
    finally:
        checked.set()
        writer.join()
    assert total is None
    assert sample == [f"gs://b/{i}.jpg" for i in range(PARITY_SAMPLE)]
    assert reader_closed
    assert f"input: at least {PARITY_SAMPLE} images (sampled" in caplog.text


def test_launch_check_empty_manifest(tmp_path):
    manifest = tmp_path / "m.txt"
    manifest.write_text("uri\n# nothing\n\n")
    with pytest.raises(LaunchError, match="lists no URIs"):
        list_inputs(None, str(manifest))
    with pytest.raises(LaunchError, match="cannot read --input_manifest"):
        list_inputs(None, str(tmp_path / "missing.txt"))


def test_progress_and_summary_without_a_total():
    """After a sampled launch check the total is unknown (None): progress
    shows what is done, the summary counts what the job saw."""
    from pipeline.progress import progress_line, summary_lines
    assert progress_line(None, 1250, 3, 5.0) == \
        "1,250 images, 3 errors, 250 img/s"
    lines = summary_lines(None, {"images_labeled": 90,
                                 "images_failed_decode": 10}, 10.0, 5.0,
                          "/out")
    assert "inputs        100" in lines
    assert "images/s      10.0 overall, 20.0 while labeling" in lines
