"""`python -m pipeline report`: an HTML report of a real labeling run (stand-in
module, 20 photos + broken files + hostile file names), checked as data, as
parsed HTML and as rendered by headless Chromium (screenshot kept under
test-artifacts/)."""
from __future__ import annotations

import base64
import html.parser
import io
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Dict, List

import pytest
from PIL import Image

from pipeline import report as rp
from tests.conftest import (EDGE_DIR, LABELS_FILE, PROJECT_ROOT, photo_paths,
                            read_parquet_dir, run_cli)

pytestmark = pytest.mark.timeout(600)

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
N_PHOTOS = 20
# Names are untrusted input: these must show up as text, never as markup.
HOSTILE_BROKEN = "<img src=x onerror=alert(1)>&amp;.jpg"   # → errors table
HOSTILE_PHOTO = "<b onmouseover=alert(2)>'q\".JPEG"         # → a thumbnail
REMOVED_PHOTO = "removed-after-run.JPEG"                    # → placeholder
SECTIONS = ("counts", "labels", "thumbnails", "scores", "errors")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory, standin_tf1) -> Dict[str, object]:
    """A real run over symlinks to 20 photos and 3 broken files; then one
    input is deleted, as happens when inputs move after a run."""
    root = tmp_path_factory.mktemp("report")
    inputs = root / "in"
    inputs.mkdir()
    photos = photo_paths()[:N_PHOTOS]
    for path in photos[:-2]:
        (inputs / os.path.basename(path)).symlink_to(path)
    (inputs / HOSTILE_PHOTO).symlink_to(photos[-2])
    (inputs / REMOVED_PHOTO).symlink_to(photos[-1])
    # An APNG declaring 10000x10000 (over the job's pixel limit, under
    # Pillow's own): refused from its header, before Pillow allocates.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 6, 0, 0, 0)
    apng = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"acTL", struct.pack(">II", 1, 0)) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="10000x10000 pixels is over"):
        rp.make_thumbnail(apng)
    for name in ("zero_bytes.jpg", "truncated_jpeg.jpg"):
        (inputs / name).symlink_to(EDGE_DIR / name)
    (inputs / HOSTILE_BROKEN).symlink_to(EDGE_DIR / "zero_bytes.jpg")
    output = root / "out"
    result = run_cli(["--input", str(inputs / "*"), "--output", str(output),
                      "--model", standin_tf1, "--labels", str(LABELS_FILE),
                      "--runner", "DirectRunner",
                      "--direct_running_mode", "in_memory"])
    assert result.returncode == 0, result.stderr[-4000:]
    (inputs / REMOVED_PHOTO).unlink()
    return {"inputs": inputs, "output": output}


@pytest.fixture(scope="module")
def report_path(run_output) -> Path:
    target = Path(str(run_output["output"])) / "report.html"
    result = run_cli(["report", str(run_output["output"])])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(target)
    assert f"no thumbnail for {run_output['inputs']}/{REMOVED_PHOTO}" in \
        result.stderr
    return target


# ------------------------------------------------------------ plain parts

def test_read_results_matches_the_parquet_files(run_output):
    results = rp.read_results(str(run_output["output"]))
    labels = read_parquet_dir(str(run_output["output"]), "labels")
    errors = read_parquet_dir(str(run_output["output"]), "errors")
    assert len(results.labels) == labels.num_rows == N_PHOTOS
    assert len(results.errors) == errors.num_rows == 3
    assert sorted(r["uri"] for r in results.labels) == sorted(
        labels.column("uri").to_pylist())
    assert set(results.labels[0]) == {"uri", "label", "score", "model"}
    counts = rp.label_counts(results.labels)
    assert sum(n for _, n in counts) == N_PHOTOS
    assert [n for _, n in counts] == sorted((n for _, n in counts),
                                            reverse=True)
    expected = {}
    for label in labels.column("label").to_pylist():
        expected[label] = expected.get(label, 0) + 1
    assert dict(counts) == expected


def test_score_histogram_bins():
    counts = rp.score_histogram([0.0, 0.049, 0.05, 0.51, 0.999, 1.0], bins=20)
    assert len(counts) == 20 and sum(counts) == 6
    assert counts[0] == 2 and counts[1] == 1 and counts[10] == 1
    assert counts[19] == 2  # 1.0 goes in the last bin


def test_thumbnail_groups_take_frequent_labels_best_scores_first():
    rows = ([{"uri": f"a{i}", "label": "a", "score": i / 10} for i in range(5)]
            + [{"uri": f"b{i}", "label": "b", "score": 0.5} for i in range(3)]
            + [{"uri": "c0", "label": "c", "score": 0.9}])
    groups = rp.thumbnail_groups(rows, max_thumbnails=6, per_label=4)
    assert [(label, count) for label, count, _ in groups] == [("a", 5),
                                                              ("b", 3)]
    assert [r["uri"] for r in groups[0][2]] == ["a4", "a3", "a2", "a1"]
    assert [r["uri"] for r in groups[1][2]] == ["b0", "b1"]
    assert rp.thumbnail_groups(rows, max_thumbnails=0) == []


def _decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))
    image.load()
    return image


def test_make_thumbnail_real_images():
    photo = _decode_data_uri(rp.make_thumbnail(
        Path(photo_paths()[0]).read_bytes()))
    assert photo.format == "JPEG" and max(photo.size) == rp.THUMBNAIL_SIZE
    # EXIF orientation 8: stored 2x1, upright 1x2.
    upright = _decode_data_uri(rp.make_thumbnail(
        (EDGE_DIR / "orientation_rectangle.jpg").read_bytes()))
    assert upright.size == (1, 2)
    # Transparent corners are composited over white, not black.
    clear = _decode_data_uri(rp.make_thumbnail(
        (EDGE_DIR / "transparent.png").read_bytes()))
    assert min(clear.convert("L").getpixel((0, 0)), 255) > 240
    # An APNG declaring 10000x10000 (over the job's pixel limit, under
    # Pillow's own): refused from its header, before Pillow allocates.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 6, 0, 0, 0)
    apng = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"acTL", struct.pack(">II", 1, 0)) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="10000x10000 pixels is over"):
        rp.make_thumbnail(apng)
    for name in ("zero_bytes.jpg", "truncated_jpeg.jpg",
                 "decompression_bomb.gif", "text_file_renamed.jpg"):
        with pytest.raises(Exception):
            rp.make_thumbnail((EDGE_DIR / name).read_bytes())


class _Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and all text."""

    def __init__(self):
        super().__init__()
        self.tags: List[tuple] = []
        self.text: List[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def _assert_no_injected_markup(page: str) -> None:
    parsed = _parse(page)
    names = {tag for tag, _ in parsed.tags}
    assert not names & {"b", "i"}, names  # only from the hostile names
    for tag, attrs in parsed.tags:
        assert not any(a.startswith("on") for a in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/jpeg;base64,"), attrs
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert len(scripts) == 1 and not scripts[0]  # ours, inline, no src
    text = "".join(parsed.text)
    assert HOSTILE_BROKEN in text and HOSTILE_PHOTO in text


def test_report_is_self_contained_and_escaped(report_path, run_output):
    page = report_path.read_text(encoding="utf-8")
    _assert_no_injected_markup(page)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert 'id="standin-warning"' in page  # labels from the stand-in


@pytest.mark.parametrize("make_dir, message", [
    (lambda tmp: tmp, "no labels-*.parquet or errors-*.parquet under"),
    (lambda tmp: tmp / "missing", "no labels-*.parquet or errors-*.parquet"),
])
def test_no_results_is_a_usage_error(tmp_path, caplog, make_dir, message):
    status = rp.main([str(make_dir(tmp_path))])
    assert status == 2
    assert message in caplog.text
    assert not (tmp_path / "report.html").exists()


def test_unreadable_parquet_is_a_usage_error(tmp_path, caplog):
    (tmp_path / "labels-00000-of-00001.parquet").write_bytes(b"not parquet")
    assert rp.main([str(tmp_path)]) == 2
    assert f"cannot read {tmp_path}/labels-00000-of-00001.parquet" in \
        caplog.text


def test_cli_usage_errors_are_one_line(tmp_path):
    result = run_cli(["report", str(tmp_path), "--max_thumbnails", "-3"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ERROR: argument --max_thumbnails: '-3' is not a whole number"]


# --------------------------------------------------------- in a browser

def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM_BIN"), "chromium",
                 "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    reason = ("headless Chromium not found; install it with "
              "`apt-get install -y chromium chromium-driver`")
    if os.environ.get("CI"):
        pytest.fail(reason + " (required in CI)")
    pytest.skip(reason)


def _run_chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        result = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _rendered_dom(path: Path) -> str:
    return _run_chromium("--dump-dom", path.as_uri()).stdout


def _body_attrs(dom: str) -> Dict[str, str]:
    return next(attrs for tag, attrs in _parse(dom).tags if tag == "body")


def test_report_renders_in_chromium(report_path):
    dom = _rendered_dom(report_path)
    parsed = _parse(dom)
    ids = {attrs.get("id") for _, attrs in parsed.tags}
    assert set(SECTIONS) <= ids
    body = _body_attrs(dom)
    # The page's own load-event script ran (the CSP let it) and counted.
    assert body.get("data-images-ready") == "1", body
    figures = [attrs for tag, attrs in parsed.tags if tag == "figure"]
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    placeholders = [attrs for tag, attrs in parsed.tags
                    if "placeholder" in attrs.get("class", "")]
    assert len(figures) == N_PHOTOS  # every labeled image fits in the grid
    assert len(images) == N_PHOTOS - 1
    assert [p["title"].split(":")[0] for p in placeholders] == [
        "FileNotFoundError"]
    assert int(body["data-images-total"]) == len(images)
    assert int(body["data-images-decoded"]) == len(images)  # all decoded
    count_cells = re.findall(r'data-count="([^"]+)">(\d+)<', dom)
    assert dict(count_cells) == {
        "images": str(N_PHOTOS + 3), "labeled": str(N_PHOTOS),
        "errors": "3", "errors at read": "0", "errors at decode": "3",
        "errors at classify": "0"}
    bins = [int(attrs["data-count"]) for tag, attrs in parsed.tags
            if tag == "rect" and attrs.get("class") == "score-bin"]
    assert len(bins) == rp.SCORE_BINS and sum(bins) == N_PHOTOS
    error_rows = dom.split('<table class="errors">')[1].split(
        "</table>")[0].count("<tr>") - 1
    assert error_rows == 3
    _assert_no_injected_markup(dom)


def test_broken_thumbnail_is_detected_by_the_page(report_path, tmp_path):
    """The page's decoded count is a real check: corrupt one image."""
    page = report_path.read_text(encoding="utf-8")
    broken = re.sub(r'src="data:image/jpeg;base64,[^"]{40}',
                    'src="data:image/jpeg;base64,' + "A" * 40, page, count=1)
    assert broken != page
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    body = _body_attrs(_rendered_dom(path))
    assert body.get("data-images-ready") == "1"
    assert int(body["data-images-decoded"]) == \
        int(body["data-images-total"]) - 1


def test_report_screenshot(report_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    _run_chromium(f"--screenshot={shot}", "--window-size=1200,2000",
                  report_path.as_uri())
    shutil.copyfile(report_path, ARTIFACTS / "report.html")
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        grey = image.convert("L")
        # Not a blank page: text, bars and photos give many grey levels.
        assert sum(1 for n in grey.histogram() if n) > 100


def test_report_of_a_gcs_output_dir(run_output, tmp_path):
    """gs:// output dirs are read and written through Beam's FileSystems
    (here against the local GCS emulator)."""
    from tests.gcs_emulator import GcsEmulator
    with GcsEmulator() as emu:
        emu.create_bucket("bucket")
        uploaded = emu.upload_dir(run_output["output"], "bucket", "run/out",
                                  pattern="*.parquet")
        assert len(uploaded) >= 2
        result = run_cli(["report", "gs://bucket/run/out/",
                          "--max_thumbnails", "3"], env=emu.env(),
                         timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == "gs://bucket/run/out/report.html"
        page = emu.client().bucket("bucket").blob(
            "run/out/report.html").download_as_text()
    assert "gs://bucket/run/out/" in page
    assert re.search(r'data-count="labeled">%d<' % N_PHOTOS, page)
    assert re.search(r'data-count="errors at decode">3<', page)
    assert page.count("<figure") == 3
