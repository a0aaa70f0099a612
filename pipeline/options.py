"""Every option of the labeling job and its default: the one place they live.

The job's own options are parsed here; everything else on the command line
must be a Beam pipeline option (runner, project, direct_num_workers, ...) and
is passed to Beam. A YAML config file (`--config`) only sets values: each
key is an option name (either kind), and flags given on the command line
override it.

Note: Beam's Dataflow options define `--labels` as an alias of `--label`
(job labels). Here `--labels` is the label file of the classifier; Dataflow
job labels are still given with `--label key=value`.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Sequence, Tuple

import yaml
from apache_beam.options.pipeline_options import (DirectOptions,
                                                  PipelineOptions,
                                                  StandardOptions)

from pipeline.cli_base import (CommandParser, UsageError, UserError,  # pylint: disable=unused-import
                               positive_int)
from pipeline.config import JobConfig
from transforms.data import IMAGENET_LABELS

DEFAULT_MODEL = ("https://tfhub.dev/google/imagenet/"
                 "mobilenet_v2_050_96/classification/2")
#: The module's 1001 class names, shipped with the package: no download at
#: launch.
DEFAULT_LABELS = str(IMAGENET_LABELS)
DEFAULT_FORMATS = "JPEG,PNG,GIF,WEBP,BMP,TIFF"
# Pillow's own decompression-bomb threshold; a 90 MP RGB image is ~270 MB.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024


SUBCOMMANDS_HELP = """commands:
  python -m pipeline [options]           label images (this help)
  python -m pipeline evaluate --help     accuracy of a module on labeled images
  python -m pipeline report --help       HTML report of an --output directory

Any Beam pipeline option (e.g. --runner, --project, --region,
--temp_location, --direct_num_workers) is passed to Beam.
"""


def build_parser() -> argparse.ArgumentParser:
    """The job's own options, with their defaults and help."""
    parser = CommandParser(
        prog="python -m pipeline",
        usage="python -m pipeline --input GLOB --output DIR [options]\n"
        "       python -m pipeline {evaluate,report} ...",
        description="Label images with a TF-Hub classifier; write Parquet. "
        "The output's uri column holds absolute paths (local files) or the "
        "URIs as given (gs:// and other filesystems).",
        epilog=SUBCOMMANDS_HELP)
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument(
        "--input", help="glob of images on any Beam filesystem, e.g. "
        "'/data/**/*.jpg' or 'gs://bucket/images/*.jpg'; quote it so the "
        "shell leaves it to the job. A relative local glob is taken "
        "relative to the current directory")
    io_group.add_argument(
        "--input_manifest", help="text or CSV file (local or gs://) listing "
        "one image URI per line, instead of --input; relative local paths "
        "in it are taken relative to the current directory")
    io_group.add_argument(
        "--input_schemes", default=None,
        help="comma-separated filesystems (file, gs, ...) that manifest "
        "URIs may name; default: the filesystem of the input itself")
    io_group.add_argument(
        "--output", help="output directory (local or gs://): "
        "labels-*.parquet and errors-*.parquet are written under it")
    io_group.add_argument(
        "--overwrite", action="store_true",
        help="replace results already under --output")
    io_group.add_argument(
        "--resume", action="store_true",
        help="keep the committed chunks already under --output and label "
        "only the inputs that none of them holds")
    io_group.add_argument(
        "--rows_per_file", type=positive_int, default=5000,
        help="images per chunk (about: chunks are hash buckets of the "
        "URIs); each chunk's labels and errors files are committed as soon "
        "as it is labeled, so a killed run keeps its finished chunks")
    model_group = parser.add_argument_group("model")
    model_group.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="module handle: tfhub.dev URL, local directory or gs:// "
        "directory (TF1 Hub format or TF2 SavedModel)")
    model_group.add_argument(
        "--embedding_model", default=None,
        help="feature-vector module for TF2 classifiers that give logits "
        "only (TF1 Hub modules provide the embedding themselves)")
    model_group.add_argument(
        "--labels", default=DEFAULT_LABELS,
        help="label file, one class name per line (local, gs:// or URL); "
        "its line count must equal the module's classes (default: the "
        "ImageNet label list shipped with the package)")
    model_group.add_argument(
        "--top_k", type=positive_int, default=5,
        help="labels kept per image, most probable first (at most the "
        "module's class count)")
    model_group.add_argument(
        "--max_batch_size", type=positive_int, default=64,
        help="images per model call (a chunk's last batch may be smaller)")
    from transforms.backends import choices as backend_choices  # pylint: disable=import-outside-toplevel
    model_group.add_argument(
        "--backend", choices=backend_choices(), default="auto",
        help="inference backend: auto (xnnpack when its conversion passes "
        "the parity gate against tf on the job's first images, else tf, "
        "with a warning saying why), tf (TensorFlow) or xnnpack (the module "
        "converted to TFLite once per job and run with XNNPACK; must pass "
        "the gate)")
    model_group.add_argument(
        "--recheck_parity", action="store_true",
        help="run the xnnpack parity gate on this job's images even if the "
        "cached conversion already passed it (then TensorFlow is loaded)")
    model_group.add_argument(
        "--inference_threads", type=positive_int, default=None,
        help="threads of the xnnpack backend's interpreter (default: the "
        "usable cores)")
    model_group.add_argument(
        "--model_cache_dir", default=None,
        help="local directory for copies of gs:// modules "
        "(default: <tmp>/image-labeler-modules)")
    model_group.add_argument(
        "--create_standin_model", action="store_true",
        help="if --model is a local directory that does not exist, first "
        "build the random-weight stand-in module there (demo and tests "
        "only: its labels are meaningless)")
    decode_group = parser.add_argument_group("decoding limits")
    decode_group.add_argument(
        "--max_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
        help="refuse images with more pixels (checked before decoding)")
    decode_group.add_argument(
        "--max_file_bytes", type=positive_int,
        default=DEFAULT_MAX_FILE_BYTES,
        help="refuse larger files (checked before reading them whole)")
    decode_group.add_argument(
        "--allowed_formats", default=DEFAULT_FORMATS,
        help="comma-separated image formats the decoder may parse")
    io_group.add_argument(
        "--read_threads", type=positive_int, default=None,
        help="concurrent reads per worker process (default: 1 for local "
        "files, 8 for object storage, to hide its latency)")
    decode_group.add_argument(
        "--decode_threads", type=positive_int, default=None,
        help="decoding threads per worker process (they overlap with "
        "inference; decoding releases the GIL); default: the cores the "
        "process shares with the machine's other worker processes, plus one")
    decode_group.add_argument(
        "--max_bytes_in_flight", type=positive_int, default=None,
        help="encoded bytes read and not yet decoded per worker process, at "
        "most: files in flight are capped at this over --max_file_bytes; "
        "default: a quarter of the process's share of the machine's memory")
    decode_group.add_argument(
        "--fast_jpeg", action="store_true",
        help="decode JPEGs at reduced size (DCT scaling): faster, not "
        "identical to the reference preprocessing")
    cli_group = parser.add_argument_group("command line")
    cli_group.add_argument("--config", default=None,
                           help="YAML file of option values")
    cli_group.add_argument(
        "--progress_interval", type=float, default=10.0,
        help="seconds between progress lines when stderr is not a terminal")
    cli_group.add_argument("--verbose", action="store_true",
                           help="debug logging and full tracebacks")
    for action in parser._actions:  # pylint: disable=protected-access
        if action.nargs != 0 and not action.choices:
            action.metavar = _METAVARS.get(action.dest, "N")
    return parser


#: How --help names each option's value (N: a number).
_METAVARS = {"input": "GLOB", "input_manifest": "FILE",
             "input_schemes": "LIST", "output": "DIR", "model": "HANDLE",
             "embedding_model": "HANDLE", "labels": "FILE",
             "model_cache_dir": "DIR", "allowed_formats": "LIST",
             "config": "FILE", "progress_interval": "SECONDS"}


def _config_flags(path: str) -> List[str]:
    """A YAML config → command-line flags, in file order."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path} is not valid YAML: "
                         f"{' '.join(str(exc).split())}")
    if not isinstance(values, dict):
        raise UsageError(f"config {path} must be a mapping of option: value")
    flags: List[str] = []
    for key, value in values.items():
        if key == "config":
            raise UsageError(f"config {path} cannot include another config")
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item is None or item is False:
                continue  # unset / boolean flag off
            flags.append(f"--{key}" if item is True else f"--{key}={item}")
    return flags


class _BeamParser(Exception):
    """Carries Beam's option parser out of PipelineOptions.get_all_options."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("Beam's option parser")
        self.parser = parser


def _beam_option_parser() -> argparse.ArgumentParser:
    """The parser holding every Beam pipeline option: the one
    get_all_options builds, taken from its public add_extra_args_fn hook
    (and the call stopped there, before it parses or logs anything)."""
    def take(parser):
        raise _BeamParser(parser)
    try:
        PipelineOptions([]).get_all_options(add_extra_args_fn=take)
    except _BeamParser as found:
        return found.parser
    raise RuntimeError("PipelineOptions.get_all_options did not call "
                       "add_extra_args_fn")


def _looks_like_a_file(value: str) -> bool:
    return "=" not in value and not value.lstrip().startswith("{") and (
        "/" in value or "\\" in value or os.path.splitext(value)[1] != ""
        or os.path.exists(value))


def check_beam_flags(flags: Sequence[str], config_path: str = "") -> None:
    """Refuse what Beam would only log and drop: flags no Beam option
    class defines, stray positional arguments (an unquoted glob the shell
    expanded), and a label file given as Dataflow's --label."""
    parser = _beam_option_parser()

    def refuse(message: str):  # argparse would print Beam's whole usage
        raise UsageError(f"{message} (a Beam option); see --help")
    parser.error = refuse
    known, unknown = parser.parse_known_args(list(flags))
    names = [flag.split("=", 1)[0] for flag in unknown if flag.startswith("-")]
    if names:
        source = f" (from the command line or {config_path})" \
            if config_path else ""
        raise UsageError(f"unknown option{'s' if len(names) > 1 else ''}"
                         f" {', '.join(names)}{source}; see --help")
    if unknown:
        shown = " ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise UsageError(
            f"unexpected argument{'s' if len(unknown) > 1 else ''} {shown} "
            f"({len(unknown)} in all): quote the glob, e.g. --input "
            "'photos/*.JPEG', so the shell leaves it to the job")
    for value in getattr(known, "labels", None) or []:
        if _looks_like_a_file(value):
            raise UsageError(
                f"--label {value}: --label sets a Dataflow job label "
                "(key=value); for the label file use --labels")


def default_num_workers() -> int:
    """Local worker processes: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def parse_args(argv: Sequence[str]) -> Tuple[JobConfig, PipelineOptions]:
    """Command line (+ --config) → (job config, Beam pipeline options).

    Raises UsageError with a one-line message for unknown or invalid
    options, stray arguments, a missing input/output, an input that is a
    directory, or an unreadable config.
    """
    parser = build_parser()
    pre, _ = parser.parse_known_args(list(argv))
    flags = (_config_flags(pre.config) if pre.config else []) + list(argv)
    args, beam_flags = parser.parse_known_args(flags)
    check_beam_flags(beam_flags, pre.config or "")
    if bool(args.input) == bool(args.input_manifest):
        raise UsageError("give exactly one of --input GLOB or "
                         "--input_manifest FILE")
    if not args.output:
        raise UsageError("--output is required (a local or gs:// directory)")
    if args.input and (args.input.endswith("/") or (
            "://" not in args.input and os.path.isdir(args.input))):
        folder = args.input.rstrip("/")
        raise UsageError(f"--input {args.input} is a directory; give a glob "
                         f"of its files: '{folder}/*' (or '{folder}/**' to "
                         "include subdirectories)")
    if args.resume and args.overwrite:
        raise UsageError("--resume keeps existing results and --overwrite "
                         "deletes them: give one")
    return JobConfig.from_args(args), beam_options(beam_flags)


#: The local runner when none is given: Beam's FnApiRunner, named directly.
#: Beam 2.77's "DirectRunner" decides per pipeline whether to try the Prism
#: runner first, which it downloads from the internet; naming the runner
#: class keeps local runs deterministic and offline.
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def beam_options(beam_flags: Sequence[str]) -> PipelineOptions:
    """Beam options with local-run defaults made explicit.

    Without --runner, the job runs on LOCAL_RUNNER. Local runs default to
    one process (`in_memory`) with decoding threads overlapping inference:
    one copy of the model with the whole machine, and the launch checks'
    copy is reused (docs/performance.md compares the modes).
    """
    options = PipelineOptions(list(beam_flags))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    if standard.runner in ("DirectRunner", "direct", LOCAL_RUNNER,
                           "FnApiRunner"):
        direct = options.view_as(DirectOptions)
        given = " ".join(beam_flags)
        if "--direct_running_mode" not in given:
            direct.direct_running_mode = "in_memory"
        if "--direct_num_workers" not in given:
            # in_memory: one bundle thread (decoding has its own threads);
            # multi_processing: one worker process per core.
            direct.direct_num_workers = (
                1 if direct.direct_running_mode == "in_memory"
                else default_num_workers())
    return options


def runs_in_this_process(options: PipelineOptions) -> bool:
    """Whether the job's DoFns run in the launching process (the local
    in_memory runner), where the in-process counts (transforms.counting) are seen."""
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    return runner in (LOCAL_RUNNER, "DirectRunner", "FnApiRunner") and \
        mode == "in_memory"


def one_local_worker(options: PipelineOptions) -> bool:
    """Whether every element is processed by one local bundle thread, so
    there is nothing to spread over workers."""
    return runs_in_this_process(options) and \
        (options.view_as(DirectOptions).direct_num_workers or 1) == 1


def help_text() -> str:
    return build_parser().format_help()
