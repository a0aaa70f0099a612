"""Throughput benchmark: every figure measured side by side in one run.

    python -m benchmarks.throughput [--n 5000] [--json PATH] [--trials 3]
                                    [--backends tf,xnnpack]

Makes a corpus of N images by copying ../shared/data/photos/*.JPEG under new
names (byte-identical), then measures, each as images/s:
  (a) decode + preprocess alone (in memory, best thread count)
  (b) model alone (in memory, the pipeline's batch size), per backend
  (c) the ceiling 1 / (1/a + 1/b), per backend
  (d) the full pipeline through the CLI on the corpus, per backend
  (d0) the job's own steps in a plain loop without Beam, per backend:
       where the gap between (d) and (c) lies
  (e) the baseline ../shared/bench/naive_beam.py on the same corpus
and the ratios d/c and d/e; peak memory (sum of RSS over the process tree)
for N and 4×N; module loads per worker process.

This machine's speed drifts by ±15% within seconds (a shared VM), so one
run makes `--trials` rounds of (a), (b), (d), (e) back to back, computes the
ratios within each round, and reports medians: each ratio compares figures
measured a minute apart at most. This is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
PHOTOS = sorted(glob.glob(str(SHARED / "data" / "photos" / "*.JPEG")))
LABELS = SHARED / "data" / "imagenet-labels" / "ImageNetLabels.txt"
BASELINE = SHARED / "bench" / "naive_beam.py"

_LOGGER = logging.getLogger("benchmarks.throughput")


def make_corpus(directory: Path, n: int) -> None:
    """N byte-identical copies of the sample photos under new names."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        source = PHOTOS[i % len(PHOTOS)]
        shutil.copyfile(source, directory /
                        f"img{i:07d}_{os.path.basename(source)}")


def measure_decode(seconds: float = 6.0, fast_jpeg: bool = False,
                   batch: int = 64) -> Tuple[float, int]:
    """(best images/s, its thread count) for decode + preprocess in memory:
    the pipeline's own decode step (`decode_batch`, batches of `batch`
    images of the sample photos) on 1, 2 and 3 threads.

    The thread counts take turns in short slices and each gets the median
    of its slices: picking the best of single noisy measurements would
    favour whichever happened to run in a fast moment."""
    import dataclasses
    from pipeline.config import JobConfig
    from transforms.imaging import ImageBytes, decode_batch
    settings = dataclasses.replace(JobConfig.defaults(),
                                   fast_jpeg=fast_jpeg).decode_settings()
    images = [ImageBytes(p, Path(p).read_bytes()) for p in PHOTOS]
    images = (images * (1 + 6 * batch // len(images)))[:6 * batch]
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    counts, rounds = (1, 2, 3), 3
    rates: Dict[int, List[float]] = {threads: [] for threads in counts}
    pools = {threads: concurrent.futures.ThreadPoolExecutor(threads)
             for threads in counts}
    try:
        for threads, pool in pools.items():  # warm-up
            list(pool.map(lambda b: decode_batch(b[:4], settings), batches))
        for _ in range(rounds):
            for threads, pool in pools.items():
                rates[threads].append(_streamed_rate(
                    pool, threads,
                    lambda b: len(decode_batch(b, settings)[0]), batches,
                    seconds / rounds / len(counts)))
    finally:
        for pool in pools.values():
            pool.shutdown()
    medians = {threads: _median(r) for threads, r in rates.items()}
    _LOGGER.info("decode: %s", ", ".join(
        f"{t} thread(s) {r:.0f} img/s" for t, r in medians.items()))
    best = max(medians, key=medians.get)
    return medians[best], best


def _streamed_rate(pool: concurrent.futures.Executor, threads: int, work,
                   items: list, seconds: float) -> float:
    """Images/s of `work` (returning how many images it did) on a pool of
    `threads`, kept full for `seconds`: two tasks per thread are in flight,
    and a new one is submitted as each finishes.

    Each task's images are counted in proportion to the part of its run
    that falls inside the window (from the moment every thread is busy to
    the last submission), so tasks cut by the window's edges are neither
    counted whole nor dropped. Waiting for all threads between rounds of
    tasks would idle cores and understate the rate."""
    spans: List[Tuple[float, float, int]] = []

    def timed(item):
        start = time.perf_counter()
        images = work(item)
        spans.append((start, time.perf_counter(), images))
        return images

    begin = time.perf_counter()
    deadline = begin + seconds
    in_flight = 2 * threads
    pending = {pool.submit(timed, items[i % len(items)])
               for i in range(in_flight)}
    submitted = in_flight
    while pending:
        finished, pending = concurrent.futures.wait(
            pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in finished:
            future.result()
            if time.perf_counter() < deadline:
                pending.add(pool.submit(timed,
                                        items[submitted % len(items)]))
                submitted += 1
    # The window opens when the last of the first tasks has started (every
    # thread busy) and closes at the deadline (the pool full until then).
    first_starts = sorted(start for start, _, _ in spans)
    window_open = first_starts[min(len(first_starts), threads) - 1]
    window_close = deadline
    done = sum(images * max(0.0, min(end, window_close) -
                            max(start, window_open)) / (end - start)
               for start, end, images in spans if end > start)
    return done / (window_close - window_open)


def fast_jpeg_deviation() -> Tuple[float, float]:
    """Mean and worst per-image mean |Δ| (in 1/255) of --fast_jpeg against
    the default, reference-exact preprocessing, over the sample photos."""
    import numpy as np
    from transforms.imaging import DecodeSettings, decode_image
    exact = DecodeSettings(10**8, ("JPEG",))
    fast = DecodeSettings(10**8, ("JPEG",), fast_jpeg=True)
    deltas = []
    for path in PHOTOS:
        data = Path(path).read_bytes()
        deltas.append(float(np.abs(decode_image(data, exact)[0] -
                                   decode_image(data, fast)[0]).mean()) * 255)
    return float(np.mean(deltas)), float(np.max(deltas))


def measure_model(model: str, backend: str, batch: int = 64,
                  seconds: float = 3.0) -> float:
    """Images/s of the model alone on preprocessed photos."""
    import numpy as np
    from transforms.imaging import DecodeSettings, decode_image
    from transforms.model import load_classifier
    settings = DecodeSettings(10**8, ("JPEG",))
    pixels = np.stack([decode_image(Path(p).read_bytes(), settings)[0]
                       for p in PHOTOS[:batch]])
    classifier, _ = load_classifier(model, backend=backend)
    classifier(pixels)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier(pixels)
        done += batch
    return done / (time.perf_counter() - start)


def measure_plain_loop(corpus: Path, output: Path, model: str, backend: str,
                       cli_args: argparse.Namespace) -> float:
    """(d0): images/s of the job's own steps on the corpus in a plain loop,
    without Beam, with the job's options (`cli_args`, as parsed by the CLI):
    match, read, decode on the job's decode threads, classify on this
    thread, rows, one Parquet file.

    Timed from the match to the closed file; the module is loaded before,
    as the pipeline's launch checks load it before its labeling time. Set
    beside (d) and (c), it splits the gap between the job and the ceiling
    into what running on Beam costs (d0 - d) and what remains without it
    (c - d0): reading, rows, Parquet, and decode sharing the cores."""
    import numpy as np
    import pyarrow as pa
    from transforms.label_chunks import batches_in_flight
    from transforms.classify import classify_batch
    from transforms.imaging import (DECODE_THREAD_NICENESS, ImageBytes,
                                    decode_batch)
    from transforms.model import load_classifier
    from transforms.read import read_file_bytes
    from transforms.rows import label_batch
    from transforms.schema import LABELS_SCHEMA
    from transforms.threaded import lower_this_thread_priority
    from transforms.write import ROW_GROUP_ROWS, parquet_writer
    from apache_beam.ml.inference.base import PredictionResult
    settings = cli_args.decode_settings()
    batch, decode_threads = cli_args.max_batch_size, cli_args.decode_threads
    labels = np.asarray(LABELS.read_text().splitlines(), dtype=object)
    classifier, _ = load_classifier(model, backend=backend)
    in_flight = batches_in_flight(decode_threads)
    labeled = 0
    pool = concurrent.futures.ThreadPoolExecutor(
        decode_threads, initializer=lower_this_thread_priority,
        initargs=(DECODE_THREAD_NICENESS,))
    start = time.perf_counter()
    rows: List[pa.RecordBatch] = []

    def write(writer, least: int) -> None:  # row groups as the job's
        if rows and sum(len(r) for r in rows) >= least:
            writer.write_table(pa.Table.from_batches(rows),
                               row_group_size=ROW_GROUP_ROWS)
            rows.clear()

    with pool, parquet_writer(str(output), LABELS_SCHEMA) as writer:
        def label(future) -> int:
            decoded, _errors = future.result()
            answers = classify_batch(classifier, decoded.pixels, labels,
                                     cli_args.top_k)
            rows.append(label_batch(PredictionResult(
                decoded.facts, answers, model), backend))
            write(writer, ROW_GROUP_ROWS)
            return len(decoded.uris)

        files = sorted(glob.glob(str(corpus / "*.JPEG")))
        pending: List[concurrent.futures.Future] = []
        for i in range(0, len(files), batch):
            images = [ImageBytes(f, read_file_bytes(
                f, cli_args.max_file_bytes)) for f in files[i:i + batch]]
            pending.append(pool.submit(decode_batch, images, settings))
            while pending and (pending[0].done() or
                               len(pending) >= in_flight):
                labeled += label(pending.pop(0))
        while pending:
            labeled += label(pending.pop(0))
        write(writer, 1)
    rate = labeled / (time.perf_counter() - start)
    if labeled != len(files):
        raise RuntimeError(f"plain loop labeled {labeled} of {len(files)}")
    return rate


class PeakRss:
    """Samples the summed RSS of a process and all its descendants.

    Cheap on purpose (~0.5% of a core): it runs beside the pipeline it
    measures. Descendants come from /proc/PID/task/TID/children and sizes
    from /proc/PID/statm, instead of scanning every process's status."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _children(pid: int) -> List[int]:
        children: List[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as handle:
                    children.extend(int(c) for c in handle.read().split())
        except OSError:
            pass  # gone meanwhile
        return children

    def _rss_kb(self) -> int:
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/statm") as handle:
                    total += int(handle.read().split()[1]) * self._page_kb
            except (OSError, IndexError, ValueError):
                continue
            todo.extend(self._children(pid))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._rss_kb())
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def ceiling(decode_ips: float, model_ips: float) -> float:
    """(c): decode and model sharing the machine perfectly."""
    return 1 / (1 / decode_ips + 1 / model_ips)


def ceiling_ips(model: str, backend: str, batch: int) -> float:
    """(c) as measured right now."""
    decode, _ = measure_decode(batch=batch)
    return ceiling(decode, measure_model(model, backend, batch))


def run_measured(cmd: List[str], log_path: Path) -> Tuple[float, float, str]:
    """(wall seconds, peak tree RSS MB, combined output) of a command."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=PROJECT_ROOT)
        rss = PeakRss(process.pid)
        code = process.wait()
        wall = time.perf_counter() - start
        peak = rss.stop()
    output = log_path.read_text()
    if code != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({code}); see {log_path}:\n"
                           f"{output[-2000:]}")
    return wall, peak, output


def run_pipeline(corpus: Path, out: Path, model: str, backend: str,
                 extra: List[str], log: Path) -> Dict[str, float]:
    cmd = [sys.executable, "-m", "pipeline", "--input", f"{corpus}/*.JPEG",
           "--output", str(out), "--overwrite", "--model", model,
           "--labels", str(LABELS), "--backend", backend, *extra]
    wall, peak, output = run_measured(cmd, log)
    labeled = int(re.search(r"labeled\s+(\d+)", output).group(1))
    loads = int(re.search(r"module loads\s+(\d+)", output).group(1))
    times = re.search(r"wall time\s+([\d.]+) s \(launch checks ([\d.]+) s, "
                      r"labeling ([\d.]+) s\)", output)
    reported, launch, labeling = (float(x) for x in times.groups())
    return {"wall_s": wall, "process_ips": labeled / wall, "rss_mb": peak,
            "ips": labeled / reported, "steady_ips": labeled / labeling,
            "launch_s": launch, "labeled": labeled, "module_loads": loads}


def run_baseline(corpus: Path, out: Path, model: str, log: Path
                 ) -> Dict[str, float]:
    cmd = [sys.executable, str(BASELINE), "--input_glob",
           f"{corpus}/*.JPEG", "--model", model, "--output", str(out)]
    wall, peak, output = run_measured(cmd, log)
    images = int(re.search(r"images=(\d+)", output).group(1))
    # Its own figure: images / time around `with beam.Pipeline()`, i.e.
    # start-up (TF import, model load) included, interpreter start not.
    return {"wall_s": wall, "process_ips": images / wall, "rss_mb": peak,
            "ips": float(re.search(r"images_per_s=([\d.]+)", output)
                         .group(1))}


def _median(values: List[float]) -> float:
    return float(statistics.median(values))


def run_trial(corpus: Path, workdir: Path, model: str, backends: List[str],
              extra: List[str], cli_args: argparse.Namespace, index: int
              ) -> Dict[str, object]:
    """One round of every measurement, back to back."""
    trial: Dict[str, object] = {"per_backend": {}}
    batch = cli_args.max_batch_size
    decode_rates = []
    for backend in backends:
        # (a) and (b) bracket (d): measured just before and just after it,
        # so the ceiling reflects the machine's speed while (d) ran.
        before = measure_decode(batch=batch), measure_model(model, backend,
                                                            batch)
        run = run_pipeline(corpus, workdir / f"out-{backend}", model, backend,
                           extra, workdir / f"pipeline-{backend}-{index}.log")
        loop_ips = measure_plain_loop(corpus, workdir / "plain-loop.parquet",
                                      model, backend, cli_args)
        after = measure_decode(batch=batch), measure_model(model, backend,
                                                           batch)
        decode_ips = (before[0][0] + after[0][0]) / 2
        model_ips = (before[1] + after[1]) / 2
        decode_rates.append(decode_ips)
        trial["decode_threads"] = after[0][1]
        ceiling_now = ceiling(decode_ips, model_ips)
        trial["per_backend"][backend] = {
            "decode_ips": decode_ips,
            "model_ips": model_ips, "ceiling_ips": ceiling_now,
            **{f"pipeline_{k}": v for k, v in run.items()},
            "plain_loop_ips": loop_ips,
            "ratio_loop_ceiling": loop_ips / ceiling_now,
            "ratio_pipeline_loop": run["steady_ips"] / loop_ips,
            "ratio_ceiling": run["steady_ips"] / ceiling_now}
        _LOGGER.info("trial %d, %s: decode %.0f, model %.0f, ceiling %.0f, "
                     "pipeline %.0f while labeling (%.0f with start-up), "
                     "plain loop %.0f, d/c %.2f", index, backend, decode_ips,
                     model_ips, ceiling_now, run["steady_ips"], run["ips"],
                     loop_ips, run["steady_ips"] / ceiling_now)
    trial["decode_ips"] = _median(decode_rates)
    trial["baseline"] = run_baseline(corpus, workdir / "out-baseline", model,
                                     workdir / f"baseline-{index}.log")
    _LOGGER.info("trial %d: baseline %.0f img/s", index,
                 trial["baseline"]["ips"])
    return trial


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--backends", default="tf,xnnpack")
    parser.add_argument("--model", help="module (default: the tf1 stand-in, "
                        "built in the work directory)")
    parser.add_argument("--workdir", help="default: a temporary directory")
    parser.add_argument("--pipeline_args", default="",
                        help="extra CLI options for the pipeline runs")
    parser.add_argument("--skip_4n", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="labeler-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or str(workdir / "standin-tf1")
    if not args.model and not os.path.exists(model):
        from pipeline.standin import build_standin
        build_standin(model, "tf1")
    backends = [b for b in args.backends.split(",") if b]
    extra = args.pipeline_args.split()
    # The model-alone figure uses the pipeline's own batch size.
    from pipeline.options import parse_args as parse_cli_args
    cli_args = parse_cli_args(["--input", "x", "--output", "y", *extra])[0]
    batch = cli_args.max_batch_size

    corpus = workdir / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    make_corpus(corpus, args.n)
    _LOGGER.info("corpus: %d images in %s", args.n, corpus)
    fast_ips, _ = measure_decode(fast_jpeg=True, batch=batch)
    fast_mean, fast_worst = fast_jpeg_deviation()

    # A first run per backend is not measured: it fills the page cache and,
    # for xnnpack, converts the module and runs the parity gate (what every
    # later run on this machine reuses). Its start-up is reported.
    first_runs = {}
    shutil.rmtree(workdir / "model-cache", ignore_errors=True)
    for backend in backends:
        first_runs[backend] = run_pipeline(
            corpus, workdir / f"out-first-{backend}", model, backend,
            extra + ["--model_cache_dir", str(workdir / "model-cache"),
                     "--input", str(corpus / "img000000*.JPEG")],
            workdir / f"first-{backend}.log")
    extra = extra + ["--model_cache_dir", str(workdir / "model-cache")]

    trials = [run_trial(corpus, workdir, model, backends, extra, cli_args,
                        i + 1) for i in range(args.trials)]

    per_backend: Dict[str, Dict[str, float]] = {}
    for backend in backends:
        runs = [t["per_backend"][backend] for t in trials]
        per_backend[backend] = {key: _median([r[key] for r in runs])
                                for key in runs[0]}
        per_backend[backend]["first_run_launch_s"] = \
            first_runs[backend]["launch_s"]
        per_backend[backend]["ratio_ceiling_trials"] = [
            r["ratio_ceiling"] for r in runs]
    baseline = {key: _median([t["baseline"][key] for t in trials])
                for key in trials[0]["baseline"]}
    ratio_baseline = {backend: _median([
        t["per_backend"][backend]["pipeline_ips"] / t["baseline"]["ips"]
        for t in trials]) for backend in backends}
    ratio_baseline_process = {backend: _median([
        t["per_backend"][backend]["pipeline_process_ips"] /
        t["baseline"]["process_ips"] for t in trials]) for backend in backends}

    fastest = max(per_backend, key=lambda b: per_backend[b]["pipeline_ips"])
    best = per_backend[fastest]
    figures: Dict[str, object] = {
        "n": args.n, "trials": args.trials,
        "cores": len(os.sched_getaffinity(0)),
        "decode_ips": _median([t["decode_ips"] for t in trials]),
        "decode_threads": trials[0]["decode_threads"],
        "fast_jpeg_decode_ips": fast_ips,
        "fast_jpeg_mean_delta_255": fast_mean,
        "fast_jpeg_worst_delta_255": fast_worst,
        "batch_size": batch,
        "backend": fastest,
        "model_ips": best["model_ips"],
        "ceiling_ips": best["ceiling_ips"],
        # d: as the baseline reports itself — start-up (launch checks,
        # module load) included, interpreter + Beam import not.
        "pipeline_ips": best["pipeline_ips"],
        # while labeling: from pipeline.run() to the end (d/c compares the
        # job's processing rate with the in-memory ceiling).
        "pipeline_steady_ips": best["pipeline_steady_ips"],
        "pipeline_process_ips": best["pipeline_process_ips"],
        "baseline_ips": baseline["ips"],
        "baseline_process_ips": baseline["process_ips"],
        "ratio_ceiling": best["ratio_ceiling"],
        "ratio_baseline": ratio_baseline[fastest],
        "ratio_baseline_process": ratio_baseline_process[fastest],
        "rss_n_mb": best["pipeline_rss_mb"],
        "loads_per_worker": best["pipeline_module_loads"] / _workers(extra),
        "per_backend": per_backend,
        "baseline": baseline,
        "trial_figures": trials,
    }
    if not args.skip_4n:
        big = workdir / "corpus4n"
        shutil.rmtree(big, ignore_errors=True)
        make_corpus(big, 4 * args.n)
        # Bracketed like (d): its d/c shows how much of the gap at N is
        # the job's fixed start-up and wind-down rather than its pace.
        before = ceiling_ips(model, fastest, batch)
        run4 = run_pipeline(big, workdir / "out-4n", model, fastest, extra,
                            workdir / "pipeline-4n.log")
        ceiling4 = (before + ceiling_ips(model, fastest, batch)) / 2
        shutil.rmtree(big, ignore_errors=True)
        figures["rss_4n_mb"] = run4["rss_mb"]
        figures["pipeline_4n_ips"] = run4["steady_ips"]
        figures["ceiling_4n_ips"] = ceiling4
        figures["ratio_ceiling_4n"] = run4["steady_ips"] / ceiling4
    print_table(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def _workers(extra: List[str]) -> int:
    """Worker processes the pipeline runs used (in_memory: 1)."""
    from pipeline.options import beam_options
    from apache_beam.options.pipeline_options import DirectOptions
    direct = beam_options(extra).view_as(DirectOptions)
    if direct.direct_running_mode == "in_memory":
        return 1
    return direct.direct_num_workers


def print_table(f: Dict) -> None:
    rows = [("trials (figures are medians)", f"{f['trials']}, "
             f"{f['n']} images each, {f['cores']} cores"),
            ("(a) decode + preprocess", f"{f['decode_ips']:.0f} img/s "
             f"({f['decode_threads']} threads), reference-exact")]
    if "fast_jpeg_decode_ips" in f:
        rows.append(("    --fast_jpeg (not reference-exact)",
                     f"{f['fast_jpeg_decode_ips']:.0f} img/s, mean |Δ| "
                     f"{f['fast_jpeg_mean_delta_255']:.1f}/255 (worst image "
                     f"{f['fast_jpeg_worst_delta_255']:.1f}/255)"))
    for backend, b in f["per_backend"].items():
        trials = ", ".join(f"{r:.2f}" for r in b["ratio_ceiling_trials"])
        rows += [(f"(b) model alone, {backend}, batch {f['batch_size']}",
                  f"{b['model_ips']:.0f} img/s"),
                 (f"(c) ceiling, {backend}", f"{b['ceiling_ips']:.0f} img/s"),
                 (f"(d) pipeline, {backend}, start-up included",
                  f"{b['pipeline_ips']:.0f} img/s"),
                 ("    while labeling / whole process",
                  f"{b['pipeline_steady_ips']:.0f} / "
                  f"{b['pipeline_process_ips']:.0f} img/s "
                  f"({b['pipeline_wall_s']:.1f} s for {f['n']})"),
                 ("    launch checks: first run on this machine / later",
                  f"{b['first_run_launch_s']:.1f} s / "
                  f"{b['pipeline_launch_s']:.1f} s"),
                 (f"    d(labeling)/c, {backend}",
                  f"{b['ratio_ceiling']:.2f} (trials: {trials})"),
                 ("(d0) the same steps in a plain loop, no Beam",
                  f"{b['plain_loop_ips']:.0f} img/s: d0/c "
                  f"{b['ratio_loop_ceiling']:.2f}, d/d0 "
                  f"{b['ratio_pipeline_loop']:.2f}")]
    rows += [("(e) baseline naive_beam.py, start-up included",
              f"{f['baseline_ips']:.0f} img/s (whole process "
              f"{f['baseline_process_ips']:.0f})"),
             (f"d(labeling)/c (fastest: {f['backend']})",
              f"{f['ratio_ceiling']:.2f}"),
             ("d/e (both start-up included)", f"{f['ratio_baseline']:.2f}"),
             ("d/e (whole processes)", f"{f['ratio_baseline_process']:.2f}"),
             ("peak RSS, N", f"{f['rss_n_mb']:.0f} MB")]
    if "rss_4n_mb" in f:
        rows.append(("peak RSS, 4N", f"{f['rss_4n_mb']:.0f} MB "
                     f"({100 * (f['rss_4n_mb'] / f['rss_n_mb'] - 1):+.1f}%)"))
        rows.append((f"d(labeling)/c at 4N ({4 * f['n']} images, "
                     f"{f['backend']})",
                     f"{f['ratio_ceiling_4n']:.2f} "
                     f"({f['pipeline_4n_ips']:.0f} / "
                     f"{f['ceiling_4n_ips']:.0f} img/s)"))
    rows.append(("module loads per worker", f"{f['loads_per_worker']:.2f}"))
    width = max(len(r[0]) for r in rows)
    sys.stdout.write("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
                     + "\n")


if __name__ == "__main__":
    sys.exit(main())
