"""A new user's mistakes and first run: every mistake that used to be a
silent no-op is one line and exit status 2, gs:// without credentials fails
at once, the console of a real run holds only the job's own lines, the
output names images by absolute paths, and every command has --help."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from datetime import datetime
from typing import List

import pyarrow.parquet as pq
import pytest

from pipeline import evaluate, options, report
from pipeline.options import UsageError, parse_args
from tests.conftest import (LABELS_FILE, PHOTOS_DIR, PROJECT_ROOT,
                            photo_paths, run_cli)

OUT = ["--output", "/tmp/out"]


def _one_line_error(result, *needles: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("ERROR")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------------------
# No silent no-ops
# ---------------------------------------------------------------------------

def test_an_unquoted_glob_is_refused_with_a_hint(tmp_path):
    """The shell expanded `--input photos/*.JPEG`: one input and the rest
    stray arguments, which Beam would only log and drop."""
    paths = photo_paths()[:5]
    out = tmp_path / "out"
    result = run_cli(["--input", *paths, "--output", str(out)])
    line = _one_line_error(result, "quote the glob", "4 in all")
    assert paths[1] in line
    assert not out.exists()


def test_a_beam_option_without_its_value_is_one_line():
    """Beam's own parser would print its usage (~300 lines) instead."""
    result = run_cli(["--input", "/a/*.jpg", *OUT, "--dry_run"])
    _one_line_error(result, "--dry_run", "expected one argument")
    assert "usage:" not in result.stderr


def test_stray_arguments_after_beam_options_are_refused():
    with pytest.raises(UsageError, match="unexpected argument b.jpg"):
        parse_args(["--input", "a.jpg", "--runner", "FnApiRunner", "b.jpg",
                    *OUT])


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_directory_input_is_refused_with_a_glob_to_use(suffix):
    folder = str(PHOTOS_DIR)
    with pytest.raises(UsageError, match=re.escape(
            f"'{folder}/*' (or '{folder}/**'")):
        parse_args(["--input", folder + suffix, *OUT])


def test_label_file_given_as_dataflow_label_is_refused():
    with pytest.raises(UsageError, match="for the label file use --labels"):
        parse_args(["--input", "/a/*.jpg", *OUT, "--label", str(LABELS_FILE)])
    with pytest.raises(UsageError, match="--labels"):
        parse_args(["--input", "/a/*.jpg", *OUT, "--label", "labels.txt"])
    # A Dataflow job label still reaches Beam.
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    _, beam = parse_args(["--input", "/a/*.jpg", *OUT, "--label",
                          "team=vision"])
    assert beam.view_as(GoogleCloudOptions).labels == ["team=vision"]


@pytest.mark.slow
def test_top_k_above_the_class_count_is_refused(tmp_path, standin_tf1):
    out = tmp_path / "out"
    result = run_cli(["--input", str(PHOTOS_DIR / "n015*.JPEG"), "--output",
                      str(out), "--model", standin_tf1, "--labels",
                      str(LABELS_FILE), "--top_k", "5000"])
    _one_line_error(result, "--top_k 5000", "1001 classes")
    assert not list(out.glob("labels-*"))


# ---------------------------------------------------------------------------
# gs:// without credentials
# ---------------------------------------------------------------------------

def _no_credentials_env(tmp_path) -> dict:
    """A machine with no Google Cloud credentials: no key file, an empty
    gcloud configuration, no emulator, a metadata server that refuses."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("GOOGLE_APPLICATION_CREDENTIALS",
                          "STORAGE_EMULATOR_HOST", "LABELER_TEST_GCS_SHIMS")}
    (tmp_path / "gcloud").mkdir()
    env.update(CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
    return env


@pytest.mark.parametrize("flags, named", [
    (["--input", "gs://labeler-test-bucket/photos/*.jpg",
      "--output", "{tmp}/out"], "--input gs://"),
    (["--input", str(PHOTOS_DIR / "*.JPEG"),
      "--output", "gs://labeler-test-bucket/out"], "--output gs://"),
    (["--input", str(PHOTOS_DIR / "*.JPEG"), "--output", "{tmp}/out",
      "--model", "gs://labeler-test-bucket/module"], "--model gs://"),
    (["evaluate", "--input", "gs://labeler-test-bucket/truth.csv"],
     "--input gs://"),
    (["report", "gs://labeler-test-bucket/out"], "OUTPUT_DIR gs://"),
])
def test_cloud_paths_without_credentials_fail_at_once(tmp_path, flags, named):
    """Beam would retry the credential lookup, then every request, for
    minutes; the timeout is generous, the check needs one lookup."""
    argv = [flag.format(tmp=tmp_path) for flag in flags]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], capture_output=True,
        text=True, timeout=120, cwd=PROJECT_ROOT,
        env=_no_credentials_env(tmp_path))
    _one_line_error(result, named, "gcloud auth application-default login",
                    "GOOGLE_APPLICATION_CREDENTIALS")
    assert "WARNING" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# A real run: the console, the output's URIs, resuming with nothing left
# ---------------------------------------------------------------------------

N_PHOTOS = 5


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A demo-like first run from another directory with a relative glob:
    the stand-in module is built by the run itself, as the demo does."""
    root = tmp_path_factory.mktemp("first-run")
    (root / "photos").mkdir()
    for path in photo_paths()[:N_PHOTOS]:
        os.symlink(path, root / "photos" / os.path.basename(path))
    argv = ["--input", "photos/*.JPEG", "--output", "out",
            "--model", "module", "--create_standin_model",
            "--labels", str(LABELS_FILE)]
    result = run_cli(argv, cwd=str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, argv, result


#: What a TF, absl or CUDA start-up line or a library notice looks like.
_NOISE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuInit|cuda|oneDNN|"
                    r"is deprecated|Instructions for updating|Traceback",
                    re.IGNORECASE)


@pytest.mark.slow
def test_the_console_holds_only_the_jobs_lines(first_run):
    _, _, result = first_run
    lines = result.stderr.splitlines()
    assert [l for l in lines if _NOISE.search(l)] == [], result.stderr
    # Every line is one of the job's log records.
    assert all(re.match(r"(INFO|WARNING): ", l) for l in lines), result.stderr
    banner = [l for l in lines if "STAND-IN" in l]
    assert len(banner) == 1, result.stderr
    status = lines.index("INFO: checking inputs, output and module...")
    labeling = next(i for i, l in enumerate(lines)
                    if l.startswith("INFO: labeling "))
    assert status < labeling


@pytest.mark.slow
def test_progress_ends_at_all_inputs(first_run):
    _, _, result = first_run
    progress = re.findall(r"progress: (\S+) images", result.stderr)
    assert progress and progress[-1] == f"{N_PHOTOS}/{N_PHOTOS}", \
        result.stderr


@pytest.mark.slow
def test_output_uris_are_absolute_and_readable_from_anywhere(first_run):
    root, _, _ = first_run
    from transforms.manifest import committed_files
    files = committed_files(str(root / "out"), "labels")
    uris = sorted(uri for path in files
                  for uri in pq.read_table(path, columns=["uri"])
                  .column("uri").to_pylist())
    expected = sorted(str(root / "photos" / os.path.basename(p))
                      for p in photo_paths()[:N_PHOTOS])
    assert uris == expected


@pytest.mark.slow
def test_resume_with_nothing_left_says_so(first_run):
    root, argv, _ = first_run
    result = run_cli(argv + ["--resume"], cwd=str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"nothing to do: all {N_PHOTOS} inputs are already in" \
        in result.stderr, result.stderr
    assert "images/s" not in result.stderr


@pytest.mark.slow
def test_worker_processes_are_quiet_too(tmp_path, standin_tf1):
    """Worker processes import TensorFlow themselves; their start-up lines
    stay off the console as well."""
    result = run_cli(["--input", str(PHOTOS_DIR / "n015*.JPEG"), "--output",
                      str(tmp_path / "out"), "--model", standin_tf1,
                      "--labels", str(LABELS_FILE), "--backend", "tf",
                      "--direct_running_mode", "multi_processing",
                      "--direct_num_workers", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    noise = [l for l in result.stderr.splitlines() if _NOISE.search(l)]
    assert noise == [], result.stderr
    assert "labeled       2" in result.stderr


_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _logged_at(line: str) -> datetime:
    return datetime.strptime(_TIMESTAMP.match(line).group(1),
                             "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.slow
def test_summary_wall_time_counts_from_the_start(tmp_path):
    """The wall time covers everything the command logged, from its first
    line (before the stand-in is built) to the final progress line."""
    result = run_cli(["--input", str(PHOTOS_DIR / "n015*.JPEG"), "--output",
                      str(tmp_path / "out"), "--model",
                      str(tmp_path / "module"), "--create_standin_model",
                      "--labels", str(LABELS_FILE), "--verbose"])
    assert result.returncode == 0, result.stderr[-3000:]
    stamped = [l for l in result.stderr.splitlines() if _TIMESTAMP.match(l)]
    final = [l for l in stamped if "progress:" in l][-1]
    span = (_logged_at(final) - _logged_at(stamped[0])).total_seconds()
    wall = float(re.search(r"wall time +([\d.]+) s", result.stderr).group(1))
    assert wall >= span - 0.05, (wall, span)


# ---------------------------------------------------------------------------
# Portable paths
# ---------------------------------------------------------------------------

def test_local_inputs_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    from transforms.uris import absolute_uri
    monkeypatch.chdir(tmp_path)
    config, _ = parse_args(["--input", "photos/*.jpg", *OUT])
    assert config.input == str(tmp_path / "photos" / "*.jpg")
    config, _ = parse_args(["--input_manifest", "list.txt", *OUT])
    assert config.input_manifest == str(tmp_path / "list.txt")
    config, _ = parse_args(["--input", "gs://bucket/a/*.jpg", *OUT])
    assert config.input == "gs://bucket/a/*.jpg"
    assert absolute_uri("../x.jpg") == str(tmp_path.parent / "x.jpg")
    assert absolute_uri("s3://b/x.jpg") == "s3://b/x.jpg"


def test_relative_manifest_lines_are_taken_from_the_current_directory(
        tmp_path, monkeypatch):
    from transforms.sources import manifest_uris
    manifest = tmp_path / "lists" / "inputs.csv"
    manifest.parent.mkdir()
    manifest.write_text("uri,note\nphotos/a.jpg,x\n../b.jpg\n"
                        "/abs/c.jpg\ngs://bucket/d.jpg\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert list(manifest_uris(str(manifest))) == [
        str(work / "photos" / "a.jpg"), str(tmp_path / "b.jpg"),
        "/abs/c.jpg", "gs://bucket/d.jpg"]


# ---------------------------------------------------------------------------
# Help and the config
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["evaluate"], ["report"]])
def test_every_command_has_help(command):
    result = run_cli([*command, "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: python -m pipeline")
    assert result.stderr == ""


def test_main_help_lists_commands_and_every_default():
    text = options.help_text()
    assert "python -m pipeline evaluate --help" in text
    assert "python -m pipeline report --help" in text
    squeezed = "".join(text.split())
    for action in options.build_parser()._actions:  # pylint: disable=protected-access
        if action.default not in (None, False):
            assert f"(default:{action.default})" in squeezed, action.dest
    assert not re.search(r"measured|~?\d+(\.\d+)?%|\d+-\d+x", text)


@pytest.mark.parametrize("build", [options.build_parser,
                                   evaluate.build_parser,
                                   report.build_parser])
def test_every_option_has_help_text(build):
    parser: argparse.ArgumentParser = build()
    missing = [a.dest for a in parser._actions if not a.help]  # pylint: disable=protected-access
    assert missing == []


def test_config_fields_are_the_option_names():
    import dataclasses
    from pipeline.config import JobConfig
    dests = {a.dest for a in options.build_parser()._actions} - {  # pylint: disable=protected-access
        "help", "config"}
    assert {f.name for f in dataclasses.fields(JobConfig)} == dests
    config, _ = parse_args(["--input", "/a/*.jpg", *OUT, "--fast_jpeg",
                            "--max_pixels", "1000"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 3
    settings = config.decode_settings()
    assert settings.max_pixels == 1000 and settings.fast_jpeg
    assert JobConfig.defaults().decode_settings().max_pixels == \
        options.DEFAULT_MAX_PIXELS
    assert config.allowed_schemes() == ("file",)


def test_user_errors_share_one_base_and_exit_status():
    from pipeline.checks import LaunchError
    from pipeline.cli_base import EXIT_USAGE, UserError, run_command
    for error in (UsageError, LaunchError, evaluate.EvaluateError,
                  report.ReportError):
        assert issubclass(error, UserError)

        def body(_argv, error=error):
            raise error("what to do")
        assert run_command(body, [], "test") == EXIT_USAGE
