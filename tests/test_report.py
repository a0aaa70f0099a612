"""`python -m pipeline report`: an HTML report of a real labeling run (stand-in
module, 30 photos, exact copies of two of them under other names, broken
files and hostile file names), checked as data, as parsed HTML and in
headless Chromium driven by Playwright (clicks, typing, layout; screenshot
kept under test-artifacts/)."""
from __future__ import annotations

import base64
import html.parser
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Dict, List

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline import report as rp
from tests.conftest import (EDGE_DIR, LABELS_FILE, PROJECT_ROOT, photo_paths,
                            run_cli)
from transforms.manifest import (SUCCESS_FILE, committed_files,
                                 read_manifest, write_manifest)

pytestmark = pytest.mark.timeout(600)

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
N_PHOTOS = 30
# Names are untrusted input: these must show up as text, never as markup.
HOSTILE_BROKEN = "<img src=x onerror=alert(1)>&amp;.jpg"   # → errors table
HOSTILE_PHOTO = "<b onmouseover=alert(2)>'q\".JPEG"         # → a thumbnail
# Exact copies under other names: (name, index of the photo, how made).
COPIES = (("copy-a.JPEG", 0, "copy"), ("copy-b.jpeg", 0, "symlink"),
          ("again.JPEG", 1, "copy"))
N_LABELED = N_PHOTOS + len(COPIES)
# The stand-in's random-weight embeddings are all alike (cosine ~0.95 for
# any two photos), so only exact copies clear this threshold.
STANDIN_THRESHOLD = "0.999"
SECTIONS = ("counts", "run", "labels", "scores", "images", "least-confident",
            "duplicates", "thumbnails", "errors")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory, standin_tf1) -> Dict[str, object]:
    """A real run over symlinks to 30 photos, 3 exact copies and 3 broken
    files; then the least confident photo's input is deleted (so that the
    page shows it), as happens when inputs move after a run."""
    root = tmp_path_factory.mktemp("report")
    inputs = root / "in"
    inputs.mkdir()
    photos = photo_paths()[:N_PHOTOS]
    for path in photos[:-1]:
        (inputs / os.path.basename(path)).symlink_to(path)
    (inputs / HOSTILE_PHOTO).symlink_to(photos[-1])
    for name, index, how in COPIES:
        if how == "copy":
            shutil.copyfile(photos[index], inputs / name)
        else:
            (inputs / name).symlink_to(photos[index])
    for name in ("zero_bytes.jpg", "truncated_jpeg.jpg"):
        (inputs / name).symlink_to(EDGE_DIR / name)
    (inputs / HOSTILE_BROKEN).symlink_to(EDGE_DIR / "zero_bytes.jpg")
    output = root / "out"
    result = run_cli(["--input", str(inputs / "*"), "--output", str(output),
                      "--model", standin_tf1, "--labels", str(LABELS_FILE),
                      "--runner", "DirectRunner",
                      "--direct_running_mode", "in_memory"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert (output / SUCCESS_FILE).exists()
    kept = [str(inputs / _name(p)) for p in photos[:2]] + [
        str(inputs / name) for name, _, _ in COPIES] + [
        str(inputs / HOSTILE_PHOTO)]
    removed = next(uri for (uri,) in _labels_sql(output).order(
        "score, uri").project("uri").fetchall() if uri not in kept)
    os.unlink(removed)
    return {"inputs": inputs, "output": output, "photos": photos,
            "removed": removed}


@pytest.fixture(scope="module")
def report_path(run_output) -> Path:
    target = Path(str(run_output["output"])) / "report.html"
    # From another directory than the job's: the page must not depend on it.
    result = run_cli(["report", str(run_output["output"]),
                      "--duplicate_threshold", STANDIN_THRESHOLD],
                     cwd=str(Path(str(run_output["inputs"])).parent))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(target)
    # One line for all missing inputs; the page has a note for each.
    assert "1 of " in result.stderr and "have no thumbnail" in result.stderr
    assert f"{run_output['removed']}: file not found" in result.stderr
    return target


def _labels_sql(output: Path) -> duckdb.DuckDBPyRelation:
    files = committed_files(str(output), "labels")
    return duckdb.sql(f"select * from read_parquet({files!r})")


def _name(uri: str) -> str:
    return os.path.basename(uri)


# ------------------------------------------------------------ plain parts

@pytest.mark.slow
def test_read_results_match_the_committed_files(run_output):
    output = run_output["output"]
    results = rp.read_results(str(output))
    manifest = read_manifest(str(output))
    assert results.manifest == manifest
    assert results.label_files == committed_files(str(output), "labels")
    assert results.error_files == committed_files(str(output), "errors")
    labels = _labels_sql(output)
    assert results.labels.num_rows == len(labels.fetchall()) == N_LABELED
    assert results.errors.num_rows == 3
    assert sorted(results.labels.column("uri").to_pylist()) == sorted(
        row[0] for row in labels.project("uri").fetchall())
    assert results.labels.column_names == rp._LABEL_COLUMNS  # pylint: disable=protected-access
    expected = dict(labels.aggregate("label, count(*)").fetchall())
    counts = rp.label_counts(results.labels)
    assert dict(counts) == expected
    assert [n for _, n in counts] == sorted(expected.values(), reverse=True)


def test_score_histogram_bins():
    counts = rp.score_histogram([0.0, 0.049, 0.05, 0.51, 0.999, 1.0], bins=20)
    assert len(counts) == 20 and sum(counts) == 6
    assert counts[0] == 2 and counts[1] == 1 and counts[10] == 1
    assert counts[19] == 2  # 1.0 goes in the last bin


def test_thumbnail_groups_take_frequent_labels_best_scores_first():
    rows = pa.Table.from_pylist(
        [{"uri": f"a{i}", "label": "a", "score": i / 10} for i in range(5)]
        + [{"uri": f"b{i}", "label": "b", "score": 0.5} for i in range(3)]
        + [{"uri": "c0", "label": "c", "score": 0.9}])
    groups = rp.thumbnail_groups(rows, max_thumbnails=6, per_label=4)
    assert [(label, count) for label, count, _ in groups] == [("a", 5),
                                                              ("b", 3)]
    assert [r["uri"] for r in groups[0][2]] == ["a4", "a3", "a2", "a1"]
    assert [r["uri"] for r in groups[1][2]] == ["b0", "b1"]
    assert rp.thumbnail_groups(rows, max_thumbnails=0) == []


@pytest.mark.slow
def test_least_confident_are_the_lowest_scores(run_output):
    results = rp.read_results(str(run_output["output"]))
    least = rp.least_confident(results.labels, 7)
    expected = _labels_sql(run_output["output"]).order(
        "score, uri").limit(7).project("uri").fetchall()
    assert [row["uri"] for row in least] == [row[0] for row in expected]
    assert all(len(row["top_k_labels"]) == len(row["top_k_scores"]) > 1
               for row in least)


@pytest.mark.slow
def test_near_duplicates_group_the_copies(run_output):
    """Real embeddings: the exact copies are grouped with their originals,
    the distinct photos are not; blocks of any size give the same groups."""
    files = committed_files(str(run_output["output"]), "labels")
    uris, vectors, total = rp.read_embeddings(files)
    assert len(uris) == total == N_LABELED and vectors.shape[0] == N_LABELED
    threshold = float(STANDIN_THRESHOLD)
    groups = rp.near_duplicate_groups(vectors, threshold)
    named = [{_name(uris[i]) for i in group} for group in groups]
    photos = [_name(p) for p in run_output["photos"]]
    for index in {index for _, index, _ in COPIES}:
        expected = {photos[index]} | {name for name, i, _ in COPIES
                                      if i == index}
        assert expected in named, named
    grouped = set().union(*named) - {name for name, _, _ in COPIES} - {
        photos[index] for _, index, _ in COPIES}
    assert len(grouped) <= 0.1 * N_PHOTOS, named
    for block_rows in (1, 4, 7, 1000):
        assert rp.near_duplicate_groups(vectors, threshold,
                                        block_rows) == groups
    # A threshold every pair clears makes one group of all.
    assert rp.near_duplicate_groups(vectors, -1.0) == [list(range(
        N_LABELED))]
    # The first rows only, and said so.
    capped = rp.find_duplicates(files, threshold, max_rows=10)
    assert (capped.compared, capped.with_embedding) == (10, N_LABELED)


def test_near_duplicates_on_vectors():
    """Chains link through a middle vector; zero vectors never group."""
    vectors = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.28, 0.96, 0],
                        [0, 0, 1], [0, 0, 0], [0, 0, 0]], np.float32)
    assert rp.near_duplicate_groups(vectors, 0.79) == [[0, 1, 2]]
    assert rp.near_duplicate_groups(vectors, 0.99) == []


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
    with pytest.raises(Exception, match="10000x10000 = 100000000 pixels"):
        rp.make_thumbnail(apng)
    for name in ("zero_bytes.jpg", "truncated_jpeg.jpg",
                 "decompression_bomb.gif", "text_file_renamed.jpg"):
        with pytest.raises(Exception):
            rp.make_thumbnail((EDGE_DIR / name).read_bytes())


def test_thumbnails_of_damaged_files_keep_decoder_messages_off_the_console():
    damaged = [str(EDGE_DIR / name) for name in (
        "crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif",
        "oom-225817ca0f8c663be7ab4b9e717b02c661e66834.tif")]
    code = ("import sys\n"
            "from pipeline.report import make_thumbnails\n"
            "print(len(make_thumbnails(sys.argv[1:])))\n")
    result = subprocess.run([sys.executable, "-c", code, *damaged],
                            capture_output=True, text=True, check=True,
                            cwd=PROJECT_ROOT)
    assert result.stdout.split() == ["2"]  # a thumbnail or a reason each
    # libtiff and Pillow would print these to stderr without the warm-up.
    assert not re.search(r"TIFF|_tiff|Warning", result.stderr), \
        result.stderr


def test_missing_inputs_are_noted_not_fatal(tmp_path, monkeypatch):
    photo = photo_paths()[0]
    (tmp_path / "here.JPEG").symlink_to(photo)
    monkeypatch.chdir(tmp_path)
    made = rp.make_thumbnails(["here.JPEG", "gone/x.JPEG",
                               str(tmp_path / "gone.JPEG")])
    assert made["here.JPEG"][0].startswith("data:image/jpeg;base64,")
    assert made["gone/x.JPEG"] == (None, (
        f"file not found (a relative path, looked up from {tmp_path}; run "
        "the report from where the job ran)"))
    assert made[str(tmp_path / "gone.JPEG")] == (None, "file not found")


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


@pytest.mark.slow
def test_report_is_self_contained_and_escaped(report_path):
    page = report_path.read_text(encoding="utf-8")
    _assert_no_injected_markup(page)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "'unsafe-inline'" not in page.split("script-src")[1].split(";")[0]
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert 'id="standin-warning"' in page  # labels from the stand-in
    assert '<span class="muted" id="files">1 labels file, 1 errors file;' \
        in page


@pytest.mark.slow
def test_run_metadata_from_the_manifest(run_output, tmp_path):
    """What the manifest holds is shown; what it lacks says so."""
    output = tmp_path / "out"
    shutil.copytree(run_output["output"], output)
    manifest = read_manifest(str(output))
    for key in ("started_at", "finished_at", "options", "counts"):
        manifest.pop(key, None)
    write_manifest(str(output), manifest)
    page = rp.build_report(str(output), max_thumbnails=0)
    facts = dict(re.findall(r'data-fact="([^"]+)">(.*?)</td>', page))
    assert facts["run id"] == manifest["run_id"]
    assert manifest["model"] in facts["model"]
    for name in ("started", "finished", "duration"):
        assert rp.NOT_RECORDED in facts[name], facts
    assert re.search(r'data-fact="options">options: <span '
                     rf'class="not-recorded">{rp.NOT_RECORDED}', page)
    manifest.update(started_at="2026-11-29T10:00:00+00:00",
                    finished_at="2026-11-29T10:01:05.5+00:00",
                    options={"top_k": 5, "batch_size": 64},
                    counts={"labeled": N_LABELED + 1, "failed": 3})
    write_manifest(str(output), manifest)
    page = rp.build_report(str(output), max_thumbnails=0)
    facts = dict(re.findall(r'data-fact="([^"]+)">(.*?)</td>', page))
    assert facts["started"] == "2026-11-29T10:00:00+00:00"
    assert facts["duration"] == "1 min 5.5 s"
    assert "<th>top_k</th><td class=\"mono\">5</td>" in page
    assert re.search(r'id="counts-warning">[^<]*labeled %d in the manifest, '
                     r"%d in the files" % (N_LABELED + 1, N_LABELED), page)


@pytest.mark.slow
def test_unfinished_output_is_refused_unless_allowed(run_output, tmp_path):
    output = tmp_path / "unfinished"
    shutil.copytree(run_output["output"], output)
    (output / SUCCESS_FILE).unlink()
    (output / "report.html").unlink(missing_ok=True)
    result = run_cli(["report", str(output)])
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"{output} is not finished (no {SUCCESS_FILE})" in line
    assert "--resume" in line and "--allow_unfinished" in line
    assert not (output / "report.html").exists()
    result = run_cli(["report", str(output), "--allow_unfinished",
                      "--max_thumbnails", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    page = (output / "report.html").read_text(encoding="utf-8")
    assert re.search(r'id="unfinished-warning">[^<]*may be counted twice',
                     page)
    assert re.search(r'data-count="labeled">%d<' % N_LABELED, page)
    assert re.search(r'data-fact="run id"><span class="not-recorded">', page)


@pytest.mark.parametrize("make_dir, message", [
    (lambda tmp: tmp, f"no {SUCCESS_FILE}, labels-*.parquet or "
     "errors-*.parquet under"),
    (lambda tmp: tmp / "missing", f"no {SUCCESS_FILE}, labels-*.parquet"),
])
def test_no_results_is_a_usage_error(tmp_path, caplog, make_dir, message):
    status = rp.main([str(make_dir(tmp_path))])
    assert status == 2
    assert message in caplog.text
    assert not (tmp_path / "report.html").exists()


def test_unreadable_parquet_is_a_usage_error(tmp_path, caplog):
    name = "labels-run-0-0.parquet"
    (tmp_path / name).write_bytes(b"not parquet")
    write_manifest(str(tmp_path), {"run_id": "run", "files": [name]})
    assert rp.main([str(tmp_path)]) == 2
    assert f"cannot read {tmp_path}/{name}" in caplog.text


@pytest.mark.parametrize("args, message", [
    (["--max_thumbnails", "-3"],
     "argument --max_thumbnails: '-3' is not a whole number"),
    (["--duplicate_threshold", "1.5"], "argument --duplicate_threshold: "
     "'1.5' is not a cosine similarity from -1 to 1"),
])
def test_cli_usage_errors_are_one_line(tmp_path, args, message):
    result = run_cli(["report", str(tmp_path), *args])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"ERROR: {message}"]


# --------------------------------------------------------- in a browser

def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM_BIN"), "chromium",
                 "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    reason = ("headless Chromium not found; install it with "
              "`apt-get install -y chromium`")
    if os.environ.get("CI"):
        pytest.fail(reason + " (required in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Playwright driving the system's Chromium (no browser download)."""
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (pip install -e .[test])")
        pytest.skip("playwright is not installed (pip install -e .[test])")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


@pytest.fixture()
def open_page(browser):
    """open_page(path, width, height) → a loaded page; console messages
    are collected in page.console_messages."""
    contexts = []

    def _open(path: Path, width: int = 1400, height: int = 1000):
        context = browser.new_context(viewport={"width": width,
                                                "height": height})
        contexts.append(context)
        page = context.new_page()
        page.console_messages = []
        page.on("console", lambda m: page.console_messages.append(m.text))
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-images-ready='1']")
        return page

    yield _open
    for context in contexts:
        context.close()


def _column(page, table: str, index: int) -> List[str]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr:not([hidden])",
        f"rows => rows.map(r => r.cells[{index}].textContent)")


@pytest.mark.slow
def test_report_renders_in_chromium(report_path, open_page, run_output):
    page = open_page(report_path)
    assert not [m for m in page.console_messages
                if "Content Security Policy" in m], page.console_messages
    ids = set(page.eval_on_selector_all("section[id]",
                                        "s => s.map(e => e.id)"))
    assert set(SECTIONS) <= ids
    body = page.evaluate("({...document.body.dataset})")
    images = page.locator("img").count()
    assert int(body["imagesTotal"]) == images > N_PHOTOS
    assert int(body["imagesDecoded"]) == images  # all decoded
    # The deleted input: a note where its thumbnail would be.
    notes = page.eval_on_selector_all(
        ".placeholder", "e => e.map(n => [n.title, n.textContent])")
    removed = run_output["removed"]
    assert notes and all(note == [removed, "file not found"]
                         for note in notes), notes
    assert page.locator("#thumbnail-warning").count() == 1
    counts = dict(page.eval_on_selector_all(
        "[data-count]", "e => e.filter(n => n.tagName == 'TD')"
        ".map(n => [n.dataset.count, n.textContent])"))
    assert counts == {
        "images": str(N_LABELED + 3), "labeled": str(N_LABELED),
        "errors": "3", "errors at read": "0", "errors at decode": "3",
        "errors at classify": "0"}
    bins = page.eval_on_selector_all(
        "rect.score-bin", "e => e.map(n => +n.dataset.count)")
    assert len(bins) == rp.SCORE_BINS and sum(bins) == N_LABELED
    assert page.locator("#errors-table tbody tr").count() == 3
    # Least confident: the lowest scores, each with its top-k guesses.
    expected = _labels_sql(run_output["output"]).order("score, uri").limit(
        rp.LEAST_CONFIDENT).project("uri, top_k_labels").fetchall()
    shown = page.eval_on_selector_all(
        "#least-confident figure", "e => e.map(f => [f.dataset.uri, "
        "[...f.querySelectorAll('li')].map(li => li.firstChild.data"
        ".trim())])")
    assert shown == [[uri, list(labels)] for uri, labels in expected]
    # Near-duplicates: the copies, each group with its original.
    groups = page.eval_on_selector_all(
        "#duplicates .dup-group", "e => e.map(g => [...g.querySelectorAll("
        "'figure')].map(f => f.dataset.uri.split('/').pop()).sort())")
    photos = [_name(p) for p in run_output["photos"]]
    assert sorted([photos[0], "copy-a.JPEG", "copy-b.jpeg"]) in groups
    assert sorted([photos[1], "again.JPEG"]) in groups
    _assert_no_injected_markup(page.content())


@pytest.mark.slow
def test_layout_uses_the_full_width(report_path, open_page):
    page = open_page(report_path, 1400, 1000)
    ratios = page.evaluate(
        "['images-table', 'errors-table'].map(id => document"
        ".getElementById(id).getBoundingClientRect().width / innerWidth)")
    assert min(ratios) > 0.9, ratios
    overview = page.evaluate(
        "document.querySelector('.overview').getBoundingClientRect().width"
        " / innerWidth")
    assert overview > 0.9


@pytest.mark.slow
def test_second_guesses_in_the_table(report_path, open_page, run_output):
    page = open_page(report_path)
    rows = page.eval_on_selector_all(
        "#images-table tbody tr", "rows => rows.map(r => [r.cells[0]"
        ".textContent, [...r.cells[4].querySelectorAll('.guess')].map("
        "g => [g.firstChild.data.trim(), g.lastChild.textContent])])")
    expected = {uri: (labels, scores) for uri, labels, scores in _labels_sql(
        run_output["output"]).project(
            "uri, top_k_labels, top_k_scores").fetchall()}
    assert len(rows) == N_LABELED
    for uri, guesses in rows:
        labels, scores = expected[uri]
        assert [label for label, _ in guesses] == list(labels[1:])
        assert [float(score) for _, score in guesses] == pytest.approx(
            list(scores[1:]), abs=5e-4)


@pytest.mark.slow
def test_tables_sort_and_filter(report_path, open_page, run_output):
    page = open_page(report_path)
    header = page.locator("#images-table thead th", has_text="score").first
    header.click()
    scores = [float(s) for s in _column(page, "images-table", 2)]
    assert scores == sorted(scores) and len(scores) == N_LABELED
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    scores = [float(s) for s in _column(page, "images-table", 2)]
    assert scores == sorted(scores, reverse=True)
    assert header.get_attribute("aria-sort") == "descending"
    page.locator("#images-table thead th", has_text="label").first.click()
    labels = _column(page, "images-table", 1)
    assert labels == sorted(labels, key=str.lower)
    # Filtering: words in any column, all of them.
    box = page.locator('input[data-filter="images-table"]')
    box.fill("copy- jpeg")
    uris = _column(page, "images-table", 0)
    assert sorted(_name(u) for u in uris) == ["copy-a.JPEG", "copy-b.jpeg"]
    assert page.locator('[data-counter="images-table"]').text_content() == \
        f"2 of {N_LABELED} rows match"
    box.fill("")
    assert len(_column(page, "images-table", 0)) == N_LABELED
    errors = page.locator('input[data-filter="errors-table"]')
    errors.fill("EmptyFile")
    assert sorted(_name(u) for u in _column(page, "errors-table", 0)) == \
        sorted([HOSTILE_BROKEN, "zero_bytes.jpg"])
    page.locator("#errors-table thead th", has_text="uri").first.click()
    uris = _column(page, "errors-table", 0)
    assert len(uris) == 2 and uris == sorted(uris, key=str.lower)


_BROKEN_WORDS = """
(selector) => {
  // Words (messages) or path segments (URIs, between slashes) that start
  // on one line and end on another; a hyphen ends a word too.
  const broken = [], wrapped = [];
  const unit = selector.endsWith(".uri") ? /[^\\/-]+[\\/-]?|[\\/-]/g
                                         : /[^\\s-]+-?|-/g;
  for (const cell of document.querySelectorAll(selector)) {
    const lines = new Set();
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node; (node = walker.nextNode());) {
      const pieces = [...node.data.matchAll(unit)].map(
        m => [m.index, m.index + m[0].length]);
      for (const [start, end] of pieces) {
        const range = document.createRange();
        range.setStart(node, start);
        range.setEnd(node, end);
        const tops = new Set([...range.getClientRects()].map(
          r => Math.round(r.top)));
        tops.forEach(t => lines.add(t));
        const width = [...range.getClientRects()].reduce(
          (sum, r) => sum + r.width, 0);
        if (tops.size > 1 && width < cell.clientWidth - 20) {
          broken.push(node.data.slice(start, end));
        }
      }
    }
    if (lines.size > 1) wrapped.push(cell.textContent);
  }
  return {broken, wrapped};
}
"""


@pytest.mark.slow
def test_error_cells_wrap_between_words(report_path, open_page):
    """In a narrow window the error cells wrap, messages between words and
    URIs after slashes, never inside a word that fits on a line."""
    page = open_page(report_path, 720, 900)
    for selector in ("#errors-table td.message", "#errors-table td.uri",
                     "#images-table td.uri"):
        found = page.evaluate(_BROKEN_WORDS, selector)
        assert found["wrapped"], (selector, "nothing wrapped: no check")
        assert not found["broken"], (selector, found["broken"])
    # The check sees mid-word breaks: with the style the page used to have.
    page.add_style_tag(content="td { word-break: break-all; }")
    found = page.evaluate(_BROKEN_WORDS, "#errors-table td.message")
    assert found["broken"], found


@pytest.mark.slow
def test_broken_thumbnail_is_detected_by_the_page(report_path, tmp_path,
                                                  open_page):
    """The page's decoded count is a real check: corrupt one image."""
    page = report_path.read_text(encoding="utf-8")
    broken = re.sub(r'src="data:image/jpeg;base64,[^"]{40}',
                    'src="data:image/jpeg;base64,' + "A" * 40, page, count=1)
    assert broken != page
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    body = open_page(path).evaluate("({...document.body.dataset})")
    assert int(body["imagesDecoded"]) == int(body["imagesTotal"]) - 1


@pytest.mark.slow
def test_report_screenshot(report_path, open_page):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    page = open_page(report_path, 1400, 2000)
    page.screenshot(path=str(shot))
    page.screenshot(path=str(ARTIFACTS / "report-full.png"), full_page=True)
    shutil.copyfile(report_path, ARTIFACTS / "report.html")
    with Image.open(shot) as image:
        assert image.size == (1400, 2000)
        grey = image.convert("L")
        # Not a blank page: text, bars and photos give many grey levels.
        assert sum(1 for n in grey.histogram() if n) > 100


@pytest.mark.slow
def test_report_of_a_gcs_output_dir(run_output):
    """gs:// output dirs are read and written through Beam's FileSystems
    (here against the local GCS emulator)."""
    from tests.gcs_emulator import GcsEmulator
    with GcsEmulator() as emu:
        emu.create_bucket("bucket")
        uploaded = emu.upload_dir(run_output["output"], "bucket", "run/out",
                                  pattern="*.parquet")
        uploaded += emu.upload_dir(run_output["output"], "bucket", "run/out",
                                   pattern=SUCCESS_FILE)
        assert len(uploaded) >= 3
        result = run_cli(["report", "gs://bucket/run/out/",
                          "--max_thumbnails", "3"], env=emu.env(),
                         timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == "gs://bucket/run/out/report.html"
        page = emu.client().bucket("bucket").blob(
            "run/out/report.html").download_as_text()
    assert '<span class="path">gs://bucket/run/out/</span>' in page
    assert re.search(r'data-count="labeled">%d<' % N_LABELED, page)
    assert re.search(r'data-count="errors at decode">3<', page)
    assert page.count('<div class="label-group"') >= 1
    assert len(re.findall(r'<figure data-uri="[^"]*">',
                          page.split('id="thumbnails"')[1])) == 3
