"""Progress lines while running, and the end-of-run summary."""
from __future__ import annotations

import io
import os
import re

import pytest

from pipeline.progress import (ProgressReporter, errors_by_type,
                               progress_line, summary_lines, top_labels)
from tests.conftest import LABELS_FILE, PHOTOS_DIR, EDGE_DIR, run_cli
from transforms import counting


def test_progress_line_has_counts_rate_and_eta():
    line = progress_line(total=5000, done=1250, errors=3, elapsed_s=5.0)
    assert line == ("1,250/5,000 images (25.0%), 3 errors, 250 img/s, "
                    "ETA 15 s")
    assert progress_line(10, 0, 0, 0.0).endswith("ETA -")


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_reporter_reads_the_process_counts():
    clock = _FakeClock()
    stream = io.StringIO()  # not a terminal: plain lines
    reporter = ProgressReporter(total=100, stream=stream,
                                quiet_interval_s=3600, clock=clock).start()
    try:
        counting.count("images_labeled", 40)
        counting.count("images_failed_decode", 2)
        counting.count("images_skipped_done", 10)
        clock.now += 4.2
        assert reporter.line() == ("42/90 images (46.7%), 2 errors, "
                                   "10 img/s, ETA 5 s")
    finally:
        reporter.stop()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_reporter_ends_with_the_final_counts(caplog):
    """Whatever the interval, stopping reports the final counts once more:
    the last progress line is N/N when every input is done."""
    clock = _FakeClock()
    plain = ProgressReporter(total=43, stream=io.StringIO(),
                             quiet_interval_s=3600, clock=clock).start()
    counting.count("images_labeled", 40)
    counting.count("images_failed_decode", 3)
    clock.now += 2.0
    with caplog.at_level("INFO", logger="pipeline"):
        plain.stop()
    assert caplog.messages == ["progress: 43/43 images (100.0%), 3 errors, "
                               "22 img/s, ETA -"]
    terminal = _Terminal()
    interactive = ProgressReporter(total=5, stream=terminal,
                                   clock=clock).start()
    counting.count("images_labeled", 5)
    interactive.stop()
    assert terminal.getvalue().endswith("\r" + "5/5 images (100.0%), 0 errors,"
                                        " 0 img/s, ETA -".ljust(78) + "\n")


def test_nothing_to_do_when_every_input_was_done_before():
    lines = summary_lines(7, {"images_skipped_done": 7}, 3.0, 1.0, "/out")
    assert lines == ["nothing to do: all 7 inputs are already in /out"]


def test_summary_lists_errors_by_stage_and_type_and_top_labels():
    counters = {"images_labeled": 7, "images_failed_decode": 3,
                "images_failed_read": 1, "errors:decode/OSError": 2,
                "errors:decode/TooManyPixels": 1, "errors:read/NotFound": 1,
                "module_loads": 1}
    assert errors_by_type(counters)[0] == ("decode/OSError", 2)
    lines = summary_lines(11, counters, 10.0, 4.0, "/out",
                          [("tench", 5), ("goldfish", 2)])
    text = "\n".join(lines)
    assert "errors        4 (decode 3, read 1)" in text
    assert "decode/TooManyPixels" in text and "read/NotFound" in text
    assert "top labels    tench (5), goldfish (2)" in text
    assert "1.1 overall, 2.8 while labeling" in text
    assert lines[-1] == "output        /out"


@pytest.mark.slow
def test_cli_reports_progress_and_a_full_summary(standin_tf1, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(PHOTOS_DIR.glob("*.JPEG"))[:40]:
        os.symlink(path, inputs / path.name)
    for name in ("zero_bytes.jpg", "truncated_jpeg.jpg", "broken.png"):
        os.symlink(EDGE_DIR / name, inputs / name)
    output = tmp_path / "out"
    result = run_cli(["--input", str(inputs / "*"), "--output", str(output),
                      "--model", standin_tf1, "--labels", str(LABELS_FILE),
                      "--progress_interval", "0.2", "--max_batch_size", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    progress = re.findall(r"progress: (\S+) images", result.stderr)
    assert progress and progress[-1] == "43/43", result.stderr[-3000:]
    stderr = result.stderr
    assert "labeled       40" in stderr
    assert "errors        3 (decode 3)" in stderr
    assert "decode/EmptyFile" in stderr
    top = re.search(r"top labels    (.*)", stderr).group(1)
    labels = top_labels([str(p) for p in output.glob("labels-*.parquet")])
    assert top.startswith(f"{labels[0][0]} ({labels[0][1]})")
    assert sum(n for _, n in labels) <= 40 and len(labels) <= 10
    assert f"output        {output}" in stderr
