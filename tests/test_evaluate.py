"""`python -m pipeline evaluate`: the synset → class mapping proven against
the photos' manifest, accuracy counting with oracle classifiers on the real
photos, and the stand-in's honest chance-level accuracy."""
from __future__ import annotations

import csv
import hashlib
import re
from typing import Dict

import numpy as np
import pytest

from pipeline import evaluate as ev
from tests.conftest import (EDGE_DIR, LABELS_FILE, PHOTOS_DIR, SYNSETS_FILE,
                            photo_paths, run_cli)
from transforms.imaging import decode_image

pytestmark = pytest.mark.timeout(300)


def _manifest():
    with open(PHOTOS_DIR / "MANIFEST.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def synsets() -> Dict[str, int]:
    return ev.parse_synsets(SYNSETS_FILE.read_text())


# ---------------------------------------------------------------- mapping

def test_synset_mapping_matches_the_photo_manifest(synsets):
    """For every photo: file name → synset → class index via synsets.txt is
    the manifest's class_index_1001, and that line of ImageNetLabels.txt is
    its label. Proves the mapping without the real weights."""
    labels = LABELS_FILE.read_text().splitlines()
    assert len(labels) == 1001 and labels[0] == "background"
    assert len(synsets) == 1000
    assert sorted(synsets.values()) == list(range(1, 1001))
    rows = _manifest()
    assert len(rows) == 150
    examples = ev.examples_from_uris(
        [str(PHOTOS_DIR / row["file"]) for row in rows], synsets)
    for row, example in zip(rows, examples):
        assert ev.synset_from_filename(row["file"]) == row["synset"]
        assert example.class_index == int(row["class_index_1001"]), row
        assert labels[example.class_index] == row["label"], row


def test_synset_list_with_background_line_maps_the_same(synsets):
    path = SYNSETS_FILE.parent / "synsets_with_background_1001.txt"
    if not path.exists():
        pytest.skip(f"{path} not in this copy of the data")
    assert ev.parse_synsets(path.read_text()) == synsets


def test_two_cranes_are_told_apart_by_synset(synsets):
    labels = LABELS_FILE.read_text().splitlines()
    cranes = [i for i, name in enumerate(labels) if name == "crane"]
    assert len(cranes) == 2  # why class names cannot be the key
    by_index = {index: synset for synset, index in synsets.items()}
    assert len({by_index[i] for i in cranes}) == 2


def test_bad_synset_files_are_refused():
    with pytest.raises(ev.EvaluateError, match="line 2.*not a WordNet id"):
        ev.parse_synsets("n01440764\ntench\n")
    with pytest.raises(ev.EvaluateError, match="listed twice"):
        ev.parse_synsets("n01440764\nn01440764\n")
    with pytest.raises(ev.EvaluateError, match="empty"):
        ev.parse_synsets("\n")


def test_csv_labels_are_synsets_or_class_indices(synsets):
    text = ("uri,label\n"
            "# a comment\n"
            "a/n01440764_x.jpg,n01440764\n"
            "\n"
            "/abs/b.jpg, 8 \n"
            "gs://bucket/c.jpg,n15075141\n")
    examples = ev.examples_from_csv(text, synsets, base="/data", name="t.csv")
    assert examples == [ev.Example("/data/a/n01440764_x.jpg", 1),
                        ev.Example("/abs/b.jpg", 8),
                        ev.Example("gs://bucket/c.jpg", 1000)]
    # Class indices need no synset list.
    assert ev.examples_from_csv("x.jpg,3\n", None) == [ev.Example("x.jpg", 3)]


@pytest.mark.parametrize("text, message", [
    ("x.jpg,n99999999\n", r"t.csv line 1: unknown synset n99999999"),
    ("uri,label\nx.jpg,tench\n", r"line 2: label 'tench' is neither"),
    ("x.jpg,0\n", r"background"),
    ("x.jpg\n", r"line 1: expected uri,label"),
    ("uri,label\n", r"lists no images"),
])
def test_csv_errors_name_the_line(synsets, text, message):
    with pytest.raises(ev.EvaluateError, match=message):
        ev.examples_from_csv(text, synsets, name="t.csv")


def test_synset_labels_without_synset_file_are_refused():
    with pytest.raises(ev.EvaluateError, match="pass --synsets"):
        ev.examples_from_csv("x.jpg,n01440764\n", None)


def test_file_names_must_start_with_a_synset(synsets):
    with pytest.raises(ev.EvaluateError, match="does not start with a synset"):
        ev.examples_from_uris(["/d/n01440764_a.jpg", "/d/tench.jpg"], synsets)
    with pytest.raises(ev.EvaluateError, match="unknown synset n00000001"):
        ev.examples_from_uris(["/d/n00000001_a.jpg"], synsets)
    assert ev.synset_from_filename("gs://b/n01440764.JPEG") == "n01440764"
    assert ev.synset_from_filename("/d/n014407640_a.jpg") is None


# ---------------------------------------------------------------- scoring

def test_count_hits():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    assert ev.count_hits(probs, np.array([1, 2, 0]), 1) == (1, 1)
    assert ev.count_hits(probs, np.array([1, 2, 0]), 2) == (1, 2)
    assert ev.count_hits(probs, np.array([1, 2, 0]), 3) == (1, 3)


class _Oracle:
    """Knows each photo's true class from its decoded pixels and puts it at
    `rank` (0 = best) of its logits: exercises batching and the alignment
    of images with their labels, not just the arithmetic."""

    def __init__(self, truth_by_pixels: Dict[bytes, int], rank: int):
        self._truth = truth_by_pixels
        self._rank = rank
        self.batch_sizes = []

    def __call__(self, pixels: np.ndarray):
        self.batch_sizes.append(len(pixels))
        logits = np.zeros((len(pixels), 1001), np.float32)
        for row, image in enumerate(pixels):
            truth = self._truth[hashlib.sha1(image.tobytes()).digest()]
            # Distractors take the ranks above the truth.
            for r in range(self._rank):
                logits[row, (truth + 1 + r) % 1001] = 10.0 - r
            logits[row, truth] = 10.0 - self._rank
        return logits, None


@pytest.fixture(scope="module")
def photo_examples(synsets):
    return ev.examples_from_uris(photo_paths(), synsets)


@pytest.fixture(scope="module")
def truth_by_pixels(photo_examples):
    settings = ev.default_decode_settings()
    table = {}
    for example in photo_examples:
        with open(example.uri, "rb") as handle:
            pixels = decode_image(handle.read(), settings)[0]
        table[hashlib.sha1(pixels.tobytes()).digest()] = example.class_index
    assert len(table) == len(photo_examples)
    return table


def test_oracle_scores_100_percent(photo_examples, truth_by_pixels):
    oracle = _Oracle(truth_by_pixels, rank=0)
    result = ev.evaluate(photo_examples, oracle, k=5, batch_size=32)
    assert (result.total, result.evaluated) == (150, 150)
    assert (result.top1, result.topk) == (1.0, 1.0)
    assert oracle.batch_sizes == [32, 32, 32, 32, 22]


def test_truth_ranked_third_is_a_top5_hit_only(photo_examples,
                                                truth_by_pixels):
    result = ev.evaluate(photo_examples, _Oracle(truth_by_pixels, rank=2),
                         k=5, batch_size=64)
    assert (result.top1_correct, result.topk_correct) == (0, 150)
    result = ev.evaluate(photo_examples, _Oracle(truth_by_pixels, rank=2),
                         k=2, batch_size=64)
    assert (result.top1_correct, result.topk_correct) == (0, 0)


def test_broken_files_are_counted_not_fatal(photo_examples, truth_by_pixels):
    broken = [ev.Example(str(EDGE_DIR / "zero_bytes.jpg"), 1),
              ev.Example(str(EDGE_DIR / "truncated_jpeg.jpg"), 2),
              ev.Example(str(EDGE_DIR / "no-such-file.jpg"), 3)]
    examples = broken[:2] + list(photo_examples[:10]) + broken[2:]
    result = ev.evaluate(examples, _Oracle(truth_by_pixels, rank=0),
                         k=5, batch_size=4)
    assert (result.total, result.evaluated, result.top1_correct) == \
        (13, 10, 10)
    assert {(f.uri.rsplit("/", 1)[1], f.stage, f.error_type)
            for f in result.failures} == {
        ("zero_bytes.jpg", "decode", "EmptyFile"),
        ("truncated_jpeg.jpg", "decode", "OSError"),
        ("no-such-file.jpg", "read", "FileNotFoundError")}
    text = ev.format_result(result, "m", standin=False)
    assert "10 evaluated of 13; 3 failed (read 1, decode 2)" in text
    assert re.search(r"top-1\s+100\.0%\s+\(10/10\)\s+51\.2%", text), text
    assert "STAND-IN" not in text


# ------------------------------------------------------- the real command

def _accuracy(stdout: str, name: str) -> float:
    match = re.search(rf"^{name}\s+([\d.]+)%\s+\((\d+)/(\d+)\)", stdout, re.M)
    assert match, stdout
    return float(match.group(1))


@pytest.mark.slow
def test_standin_reports_chance_level_on_all_photos(standin_tf1, capsys,
                                                    caplog):
    status = ev.main(["--input", str(PHOTOS_DIR / "*.JPEG"),
                      "--model", standin_tf1, "--labels", str(LABELS_FILE),
                      "--synsets", str(SYNSETS_FILE), "--batch_size", "50"])
    out = capsys.readouterr().out
    assert status == 0, caplog.text
    assert "150 evaluated of 150; 0 failed" in out
    top1, top5 = _accuracy(out, "top-1"), _accuracy(out, "top-5")
    # Random weights: far below the published 51.2% / 75.8%.
    assert top1 < 5.0 and top5 < 10.0, out
    assert re.search(r"^top-1 .* 51\.2%$", out, re.M), out
    assert re.search(r"^top-5 .* 75\.8%$", out, re.M), out
    assert "WARNING: random-weight STAND-IN" in out
    assert "STAND-IN module" in caplog.text


@pytest.mark.slow
def test_synset_list_must_fit_the_module(standin_tf1, tmp_path, caplog):
    short = tmp_path / "synsets.txt"
    short.write_text("\n".join(SYNSETS_FILE.read_text().split()[:999]))
    status = ev.main(["--input", str(PHOTOS_DIR / "n01440764_*.JPEG"),
                      "--model", standin_tf1, "--labels", str(LABELS_FILE),
                      "--synsets", str(short)])
    assert status == 2
    assert "--synsets lists 999 classes but module" in caplog.text


@pytest.mark.slow
def test_cli_with_csv_input(standin_tf1, tmp_path):
    photos = photo_paths()[:6]
    (tmp_path / "img").mkdir()
    rows = ["uri,label"]
    for i, path in enumerate(photos):  # relative paths, both label kinds
        link = tmp_path / "img" / f"{i}.jpg"
        link.symlink_to(path)
        synset = ev.synset_from_filename(path)
        label = synset if i % 2 else str(
            ev.parse_synsets(SYNSETS_FILE.read_text())[synset])
        rows.append(f"img/{i}.jpg,{label}")
    rows.append(f"{EDGE_DIR / 'zero_bytes.jpg'},n01440764")
    # libtiff prints to stderr on these unless the decoder is warmed up.
    damaged = ["crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif",
               "oom-225817ca0f8c663be7ab4b9e717b02c661e66834.tif"]
    rows += [f"{EDGE_DIR / name},n01440764" for name in damaged]
    csv_path = tmp_path / "eval.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    result = run_cli(["evaluate", "--input", str(csv_path),
                      "--model", standin_tf1, "--labels", str(LABELS_FILE),
                      "--synsets", str(SYNSETS_FILE), "--top_k", "3",
                      "--batch_size", "4"], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 evaluated of 9; 3 failed (decode 3)" in result.stdout
    assert re.search(r"^top-3\s+[\d.]+%\s+\(\d/6\)\s+-$", result.stdout,
                     re.M), result.stdout
    assert "zero_bytes.jpg: EmptyFile" in result.stderr
    assert "Traceback" not in result.stderr
    # The console holds the command's own lines only (decoders' messages
    # go to the debug log and the failures' reasons).
    assert [line for line in result.stderr.splitlines()
            if not line.startswith(("INFO", "WARNING", "ERROR", "  "))
            ] == [], result.stderr[-3000:]


@pytest.mark.slow
def test_cli_unknown_synset_is_one_line_exit_2(standin_tf1, tmp_path):
    csv_path = tmp_path / "eval.csv"
    csv_path.write_text(f"{photo_paths()[0]},n01440764\n"
                        f"{photo_paths()[1]},n99999999\n")
    result = run_cli(["evaluate", "--input", str(csv_path),
                      "--model", standin_tf1, "--labels", str(LABELS_FILE),
                      "--synsets", str(SYNSETS_FILE)], timeout=240)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("ERROR")]
    assert errors == [f"ERROR: {csv_path} line 2: unknown synset n99999999 "
                      "(not in the --synsets file)"], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("input_, message", [
    ("{tmp}/missing.csv", "cannot read --input {tmp}/missing.csv: "),
    ("{tmp}/nothing-*.JPEG", "--input {tmp}/nothing-*.JPEG matches no files"),
])
def test_unreadable_input_is_a_usage_error(tmp_path, caplog, input_,
                                           message):
    status = ev.main(["--input", input_.format(tmp=tmp_path),
                      "--model", str(tmp_path / "never-loaded"),
                      "--synsets", str(SYNSETS_FILE)])
    assert status == 2
    assert message.format(tmp=tmp_path) in caplog.text


@pytest.mark.slow
def test_class_index_must_fit_the_module(standin_tf1, tmp_path, caplog):
    csv_path = tmp_path / "eval.csv"
    csv_path.write_text(f"{photo_paths()[0]},1\n{photo_paths()[1]},1001\n")
    status = ev.main(["--input", str(csv_path), "--model", standin_tf1,
                      "--labels", str(LABELS_FILE)])
    assert status == 2
    assert f"{photo_paths()[1]}: class index 1001 is out of range 1..1000" \
        in caplog.text
