"""One attempt at the labeling job, as a runner's retry plays it: a fresh
process that builds the job with a given run id (no launch checks: a retry
does not repeat them) and runs it on Beam's FnApiRunner.

    python -m tests.retry_harness RUN_ID [--crash_after_commits N]
        [--crash_before_finish] [--split_stage NAME] -- JOB OPTIONS...

--crash_after_commits N: the process dies (exit 17) right after the N-th
    file is published under a final name (a bundle failing after it
    committed files).
--crash_before_finish: the process dies when the finish step begins.
--split_stage NAME: the runner sends real ProcessBundleSplitRequests to the
    stage holding the transform NAME (FnApiRunner with a gRPC-embedded
    worker), splitting off --split_fraction (default half) of what remains
    of every bundle; prints
    "splits: K" with the number of splits the worker accepted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from apache_beam.io.filesystems import FileSystems

CRASH_EXIT = 17


def _crash_after_commits(limit: int) -> None:
    original = FileSystems.rename
    published = []

    def rename(sources, destinations):
        original(sources, destinations)
        published.extend(d for d in destinations
                         if d.rsplit("/", 1)[-1].startswith(
                             ("labels-", "errors-")))
        if len(published) >= limit:
            sys.stderr.flush()
            os._exit(CRASH_EXIT)  # pylint: disable=protected-access
    FileSystems.rename = staticmethod(rename)


def _crash_before_finish() -> None:
    original = FileSystems.create

    def create(path, *args, **kwargs):
        if path.endswith((".finishing", "_SUCCESS.json")):
            sys.stderr.flush()
            os._exit(CRASH_EXIT)  # pylint: disable=protected-access
        return original(path, *args, **kwargs)
    FileSystems.create = staticmethod(create)


def main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_id")
    parser.add_argument("--crash_after_commits", type=int)
    parser.add_argument("--crash_before_finish", action="store_true")
    parser.add_argument("--split_stage")
    parser.add_argument("--split_fraction", type=float, default=0.5)
    split = argv.index("--")
    args, job_argv = parser.parse_args(argv[:split]), argv[split + 1:]

    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=import-outside-toplevel
    from apache_beam.transforms import environments  # pylint: disable=import-outside-toplevel
    from pipeline import job  # pylint: disable=import-outside-toplevel
    from pipeline.options import parse_args  # pylint: disable=import-outside-toplevel

    from transforms import backends  # pylint: disable=import-outside-toplevel
    config, options = parse_args(job_argv)
    with open(config.labels, encoding="utf-8") as handle:
        labels = handle.read().splitlines()
    loader = backends.prepare("tf", config.model).local
    if args.crash_after_commits:
        _crash_after_commits(args.crash_after_commits)
    if args.crash_before_finish:
        _crash_before_finish()
    splits = []
    if args.split_stage:
        def split_in_half(num_elements):
            if num_elements < 2:
                return
            for _ in range(200):  # until the worker has started the bundle
                result = yield args.split_fraction  # of what remains
                if result is not None:
                    splits.append(result)
                    return
                time.sleep(0.02)
        runner = fn_runner.FnApiRunner(
            default_environment=environments.EmbeddedPythonGrpcEnvironment
            .default())
        with fn_runner.split_manager(args.split_stage, split_in_half):
            pipeline = beam.Pipeline(runner=runner, options=options)
            job.build(pipeline, config, labels, args.run_id, loader)
            pipeline.run().wait_until_finish()
    else:
        pipeline = beam.Pipeline(options=options)
        job.build(pipeline, config, labels, args.run_id, loader)
        pipeline.run().wait_until_finish()
    print(f"splits: {sum(1 for s in splits if s is not None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
