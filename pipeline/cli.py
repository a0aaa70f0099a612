"""Command line: `python -m pipeline --input GLOB --output DIR [options]`.

Parses options, runs the launch checks, runs the job and prints a summary.
Every error a user can cause is one line on stderr (exit status 2); a
traceback only with --verbose.
"""
from __future__ import annotations

import time

#: When the command started: the summary's wall time counts from here.
PROCESS_STARTED = time.time()

# pylint: disable=wrong-import-position
import gc
import logging
import os
import sys
from typing import Dict, Optional, Sequence

from pipeline.cli_base import (EXIT_OK, EXIT_USAGE, configure_console,  # pylint: disable=unused-import
                               run_command, wants_help)

_LOGGER = logging.getLogger("pipeline")


def _standin_banner(model: str) -> None:
    _LOGGER.warning("STAND-IN MODEL %s: random weights, its labels are "
                    "MEANINGLESS (demo and tests only)", model)


def _counters(result) -> Dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=import-outside-toplevel
    from transforms.errors import METRICS_NAMESPACE  # pylint: disable=import-outside-toplevel
    totals: Dict[str, int] = {}
    query = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None \
            else counter.attempted
        totals[name] = totals.get(name, 0) + int(value or 0)
    from transforms.classify import MODEL_LOAD_METRIC  # pylint: disable=import-outside-toplevel
    for loads in query["distributions"]:  # one entry per model load
        if loads.key.metric.name == MODEL_LOAD_METRIC:
            value = loads.committed or loads.attempted
            totals["module_loads"] = totals.get("module_loads", 0) + \
                int(value.count if value else 0)
    return totals


def run(argv: Sequence[str]) -> int:
    """The labeling job. Returns the process exit status."""
    from pipeline.options import (help_text, parse_args,  # pylint: disable=import-outside-toplevel
                                  runs_in_this_process)
    if wants_help(argv):
        sys.stdout.write(help_text())
        return EXIT_OK
    verbose = "--verbose" in argv
    args, options = parse_args(argv)
    from pipeline import dataflow_job  # pylint: disable=import-outside-toplevel
    if dataflow_job.offline_description_requested(options):
        dataflow_job.write_job_description(args, options)
        return EXIT_OK

    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from pipeline import job  # pylint: disable=import-outside-toplevel
    from pipeline.checks import run_checks  # pylint: disable=import-outside-toplevel

    started = PROCESS_STARTED
    if args.create_standin_model:
        _create_standin_if_missing(args.model)
    _LOGGER.info("checking inputs, output and module...")
    facts = run_checks(args)
    if facts.is_standin:
        _standin_banner(args.model)
    _LOGGER.info("labeling %s images with %s (%s module, %d classes%s)",
                 "all" if facts.total_inputs is None else facts.total_inputs,
                 args.model, facts.classifier.kind,
                 facts.classifier.num_classes,
                 f", {facts.classifier.embedding_dim}-d embedding"
                 if facts.classifier.embedding_dim else ", no embedding")

    from pipeline.progress import (ProgressReporter, summary_lines)  # pylint: disable=import-outside-toplevel
    from transforms.write import new_run_id  # pylint: disable=import-outside-toplevel
    run_id = new_run_id()
    labeling_started = time.time()
    pipeline = beam.Pipeline(options=options)
    job.build(pipeline, args, facts.labels, run_id, facts.loader,
              details=_run_details(args, facts, started))
    reporter = None
    if runs_in_this_process(options):
        reporter = ProgressReporter(facts.total_inputs,
                                    quiet_interval_s=args.progress_interval)
        reporter.start()
    else:
        _LOGGER.info("progress: see the runner's counters images_read, "
                     "images_labeled, images_failed_<stage>")
    # Everything loaded so far (Beam, the module, pyarrow) lives as long as
    # the job: keep the cyclic collector from re-scanning it while labeling.
    gc.freeze()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        if reporter:
            reporter.stop()
    finished = time.time()
    labels = _top_labels_of(args.output, verbose)
    for line in summary_lines(facts.total_inputs, _counters(result),
                              finished - started, finished - labeling_started,
                              args.output, labels):
        _LOGGER.info("%s", line)
    return EXIT_OK


def _run_details(args, facts, started: float) -> Dict[str, object]:
    """What the manifest records about the run besides files and counts."""
    import dataclasses  # pylint: disable=import-outside-toplevel
    import datetime  # pylint: disable=import-outside-toplevel
    from transforms.errors import redact  # pylint: disable=import-outside-toplevel
    options = {name: redact(value) if isinstance(value, str) else value
               for name, value in dataclasses.asdict(args).items()}
    record = facts.backend_record()
    return {"started_at": datetime.datetime.fromtimestamp(
                started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "options": options, "backend_reason": record["reason"],
            "parity": record["parity"]}


def _top_labels_of(output: str, verbose: bool):
    """The most frequent labels, from the counts the job wrote into its
    manifest (never from re-reading the output)."""
    from transforms.labeling import top_labels  # pylint: disable=import-outside-toplevel
    from transforms.manifest import read_manifest  # pylint: disable=import-outside-toplevel
    try:
        manifest = read_manifest(output) or {}
    except Exception:  # pylint: disable=broad-except
        _LOGGER.warning("could not read the output's manifest for the "
                        "summary", exc_info=verbose)
        return []
    return top_labels(manifest.get("counts", {}).get("label_counts", {}))


def _create_standin_if_missing(model: str) -> None:
    """--create_standin_model: build the stand-in where --model points, if
    nothing is there yet (never replaces a real module)."""
    from pipeline import standin  # pylint: disable=import-outside-toplevel
    if "://" in model or os.path.exists(model):
        return
    _LOGGER.info("building the random-weight stand-in module at %s", model)
    # The builder's own warning would repeat the banner the job shows.
    builder_log = logging.getLogger(standin.logger.name)
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)
    try:
        standin.build_standin(model, "tf1")
    finally:
        builder_log.setLevel(level)


SUBCOMMANDS = {
    "evaluate": "pipeline.evaluate",  # accuracy of a module on labeled images
    "report": "pipeline.report",      # HTML report of an output directory
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_console("--verbose" in argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib  # pylint: disable=import-outside-toplevel
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    return run_command(run, argv, "job")


def console_main() -> None:
    """The command's entry point: main(), then exit without tearing the
    interpreter down. Everything is written and closed by then; what
    teardown would do is stop native thread pools (Arrow, TFLite,
    TensorFlow), and a pool thread caught mid-call as Python finalizes
    aborts the process ("terminate called without an active exception",
    apache/arrow#34314), turning a finished job into exit status 134 (seen
    twice in ~50 benchmark runs)."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # closed or gone: nothing left to lose
    os._exit(code)  # pylint: disable=protected-access


if __name__ == "__main__":
    console_main()
