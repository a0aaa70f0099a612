"""Options, config files and launch checks: every mistake a user can make is
one clear line, before any image is processed."""
from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import (DirectOptions,
                                                  StandardOptions)

from pipeline.options import (DEFAULT_LABELS, DEFAULT_MODEL, LOCAL_RUNNER,
                              UsageError, parse_args)
from tests.conftest import LABELS_FILE, PHOTOS_DIR, PROJECT_ROOT, run_cli

BASE = ["--input", "/data/*.jpg", "--output", "/tmp/out"]


def test_defaults_are_the_model_card_handles():
    args, options = parse_args(BASE)
    assert args.model == DEFAULT_MODEL
    assert args.model.endswith("mobilenet_v2_050_96/classification/2")
    assert args.labels == DEFAULT_LABELS and args.top_k == 5
    # The module's published label list, read from the package: no
    # download at launch.
    assert "://" not in args.labels
    assert open(args.labels, "rb").read() == LABELS_FILE.read_bytes()
    # The runner is chosen explicitly (no Prism download attempt).
    assert options.view_as(StandardOptions).runner == LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    assert direct.direct_running_mode == "in_memory"
    assert direct.direct_num_workers >= 1


def test_config_sets_values_and_flags_override(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("top_k: 3\nmax_batch_size: 32\nfast_jpeg: true\n"
                      "direct_num_workers: 1\nexperiments: [a, b]\n")
    args, options = parse_args(["--config", str(config), *BASE,
                                "--top_k", "7"])
    assert args.top_k == 7  # command line wins
    assert args.max_batch_size == 32 and args.fast_jpeg
    assert options.view_as(DirectOptions).direct_num_workers == 1
    from apache_beam.options.pipeline_options import DebugOptions
    assert options.view_as(DebugOptions).experiments == ["a", "b"]


@pytest.mark.parametrize("flags, size", [
    ([], 64),
    (["--max_batch_size", "32"], 32),
])
def test_batch_size(flags, size):
    args, _ = parse_args(BASE + flags)
    assert args.max_batch_size == size


@pytest.mark.parametrize("argv, message", [
    (BASE + ["--bogus", "1"], "unknown option --bogus"),
    (BASE + ["--top_k", "0"], "--top_k"),
    (BASE + ["--top_k", "five"], "--top_k"),
    (["--output", "/tmp/out"], "--input"),
    (["--input", "/a/*", "--input_manifest", "m.txt", "--output", "o"],
     "exactly one"),
    (["--input", "/a/*"], "--output is required"),
    (BASE + ["--min_batch_size", "8"], "unknown option --min_batch_size"),
])
def test_bad_command_lines_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_args(argv)


def test_bad_config_files(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("top_kk: 3\n")
    with pytest.raises(UsageError, match=r"--top_kk.*unknown.yaml"):
        parse_args(["--config", str(unknown), *BASE])
    broken = tmp_path / "broken.yaml"
    broken.write_text("top_k: [\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        parse_args(["--config", str(broken), *BASE])
    with pytest.raises(UsageError, match="cannot read config"):
        parse_args(["--config", str(tmp_path / "missing.yaml"), *BASE])


def test_shipped_configs_parse():
    for name in ("local.yaml", "demo.yaml"):
        args, _ = parse_args(["--config", str(PROJECT_ROOT / "configs" /
                                              name), *BASE])
        assert args.output == "/tmp/out"  # flags override config values


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith("ERROR")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_launch_errors_are_one_line_and_nothing_is_written(tmp_path,
                                                           standin_tf1):
    common = ["--model", standin_tf1, "--labels", str(LABELS_FILE)]
    photos = str(PHOTOS_DIR / "*.JPEG")
    out = tmp_path / "out"
    _one_line_error(run_cli(["--input", str(tmp_path / "none" / "*.jpg"),
                             "--output", str(out), *common]),
                    "matches no files")
    assert not out.exists()
    _one_line_error(run_cli(["--input", photos, "--output", str(out),
                             "--model", str(tmp_path / "no-module"),
                             "--labels", str(LABELS_FILE)]),
                    "module directory not found")
    short = tmp_path / "labels1000.txt"
    short.write_text("\n".join(LABELS_FILE.read_text().splitlines()[1:]))
    _one_line_error(run_cli(["--input", photos, "--output", str(out),
                             "--model", standin_tf1, "--labels", str(short)]),
                    "1000 lines", "1001 classes")
    _one_line_error(run_cli(["--input", photos, "--output", str(out),
                             "--model", standin_tf1, "--labels",
                             str(tmp_path / "nolabels.txt")]),
                    "cannot read label file")
    _one_line_error(run_cli(["--input", photos, "--output", str(out),
                             "--frobnicate", *common]),
                    "unknown option --frobnicate")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    _one_line_error(run_cli(["--input", photos, "--output",
                             str(blocker / "out"), *common]),
                    "not writable")
    # The checks that got as far as the output created it; no result file,
    # manifest or write probe is in it.
    assert out.is_dir()
    assert [p.name for p in out.rglob("*") if p.name.startswith(
        ("labels-", "errors-", "_SUCCESS", ".write-probe"))] == []


@pytest.mark.slow
def test_existing_output_is_refused_without_overwrite(tmp_path, standin_tf1):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels-00000-of-00001.parquet").write_bytes(b"old")
    common = ["--input", str(PHOTOS_DIR / "n015*.JPEG"), "--output", str(out),
              "--model", standin_tf1, "--labels", str(LABELS_FILE),
              "--direct_running_mode", "in_memory"]
    _one_line_error(run_cli(common), "already holds results", "--overwrite")
    assert (out / "labels-00000-of-00001.parquet").read_bytes() == b"old"
    result = run_cli(common + ["--overwrite"])
    assert result.returncode == 0, result.stderr[-3000:]
    from tests.conftest import read_parquet_dir
    assert read_parquet_dir(str(out), "labels").num_rows == 2  # n015*.JPEG



@pytest.mark.slow
def test_stand_in_is_never_used_unless_asked(tmp_path):
    """No module at --model and no --create_standin_model: a clear error,
    never a silent fallback to the stand-in."""
    missing = tmp_path / "module"
    result = run_cli(["--input", str(PHOTOS_DIR / "*.JPEG"), "--output",
                      str(tmp_path / "out"), "--model", str(missing),
                      "--labels", str(LABELS_FILE)])
    _one_line_error(result, "module directory not found")
    assert not missing.exists()
