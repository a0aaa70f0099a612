"""Throughput benchmark: the job, its ceiling and its peers, side by side.

    python -m benchmarks.throughput [--n 5000] [--trials 3] [--json PATH]
                                    [--markdown PATH] [--backend auto]

Makes a corpus of N images (the sample photos in ../shared/data/photos,
repeated under new names as symlinks) and one of the demo's size (150), then
measures, as images/s:
  (a) decode + preprocess alone (in memory, best of 1-3 threads)
  (b) the model alone (in memory, the job's batch size), with the backend
      the job chose
  (c) the ceiling 1 / (1/a + 1/b): decode and model sharing the cores
      perfectly
  (d) the job through its CLI, as a subprocess with default options: its
      steady state (from the end of the launch checks to the last chunk's
      commit) and the whole process (imports, launch checks, labeling,
      finish)
  (d0) the job's own plain functions in a loop without Beam: d/d0 is what
      running on Beam costs, d0/c what reading, rows, Parquet and sharing
      the cores cost
  peers: ../shared/bench/naive_beam.py and ../shared/bench/tf_data_peer.py
      --embedding, unchanged, as whole processes on the same corpus and
      module
and the start-up split (imports, launch checks, labeling, finish) at the
demo's size and at N, peak memory (PSS and RSS summed over each process
tree), and the steady state at 4N.

This machine's speed drifts by ±15% within seconds (a shared VM): each of
`--trials` rounds measures (a) and (b) just before and just after the job,
ratios are taken within a round, and the table shows medians. This is a
benchmark, not a test.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
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
from typing import Dict, List, Optional, Sequence, Tuple

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
PHOTOS = sorted(glob.glob(str(SHARED / "data" / "photos" / "*.JPEG")))
LABELS = SHARED / "data" / "imagenet-labels" / "ImageNetLabels.txt"
NAIVE_BEAM = SHARED / "bench" / "naive_beam.py"
TF_DATA_PEER = SHARED / "bench" / "tf_data_peer.py"
DEMO_SIZE = 150

#: Targets (issue 17), each a lower bound on a ratio the table prints.
TARGETS = {"steady_4n_ceiling": 0.90, "process_ceiling": 0.75,
           "process_naive_beam": 4.0, "process_tf_data": 3.0}

_LOGGER = logging.getLogger("benchmarks.throughput")


def make_corpus(directory: Path, n: int) -> None:
    """N images: the sample photos repeated, as symlinks under new names."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        source = PHOTOS[i % len(PHOTOS)]
        os.symlink(source,
                   directory / f"img{i:07d}_{os.path.basename(source)}")


def measure_decode(seconds: float = 6.0, fast_jpeg: bool = False,
                   batch: int = 64) -> Tuple[float, int]:
    """(best images/s, its thread count) for decode + preprocess in memory:
    the job's own decode step (`decode_batch`, batches of `batch` images of
    the sample photos) on 1, 2 and 3 threads.

    The thread counts take turns in short slices and each gets the median
    of its slices: picking the best of single noisy measurements would
    favour whichever happened to run in a fast moment."""
    from pipeline.config import JobConfig
    from transforms.imaging import ImageBytes, decode_batch, warm_up
    warm_up()
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


Span = Tuple[float, float, int]  # (start, end, images) of one task


def _streamed_rate(pool: concurrent.futures.Executor, threads: int, work,
                   items: list, seconds: float, clock=time.perf_counter
                   ) -> float:
    """Images/s of `work` (returning how many images it did) on a pool of
    `threads`, kept full for `seconds`: two tasks per thread are in flight,
    and a new one is submitted as each finishes (waiting for all threads
    between rounds of tasks would idle cores and understate the rate)."""
    spans: List[Span] = []

    def timed(item):
        start = clock()
        images = work(item)
        spans.append((start, clock(), images))
        return images

    deadline = clock() + seconds
    in_flight = 2 * threads
    pending = {pool.submit(timed, items[i % len(items)])
               for i in range(in_flight)}
    submitted = in_flight
    while pending:
        finished, pending = concurrent.futures.wait(
            pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in finished:
            future.result()
            if clock() < deadline:
                pending.add(pool.submit(timed,
                                        items[submitted % len(items)]))
                submitted += 1
    return rate_in_window(spans, threads, deadline)


def rate_in_window(spans: Sequence[Span], threads: int,
                   window_close: float) -> float:
    """Images/s over the window from the moment every thread is busy (the
    `threads`-th earliest start) to `window_close`. Each task's images are
    counted in proportion to the part of its run inside the window, so
    tasks cut by the window's edges are neither counted whole nor dropped."""
    first_starts = sorted(start for start, _, _ in spans)
    window_open = first_starts[min(len(first_starts), threads) - 1]
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
                  seconds: float = 3.0, cache_dir: Optional[str] = None
                  ) -> float:
    """Images/s of the model alone on preprocessed photos."""
    import numpy as np
    from transforms.backends import load_classifier
    from transforms.imaging import DecodeSettings, decode_image
    settings = DecodeSettings(10**8, ("JPEG",))
    pixels = np.stack([decode_image(Path(p).read_bytes(), settings)[0]
                       for p in (PHOTOS * (1 + batch // len(PHOTOS)))[:batch]])
    classifier, _ = load_classifier(model, cache_dir=cache_dir,
                                    backend=backend)
    classifier(pixels)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier(pixels)
        done += batch
    return done / (time.perf_counter() - start)


def measure_plain_loop(corpus: Path, output: Path, model: str, backend: str,
                       config, cache_dir: Optional[str] = None) -> float:
    """(d0): images/s of the job's own chunk step on the corpus, called in a
    plain loop without a Beam runner, with the job's options (`config`, a
    JobConfig): list the files, group them into the job's chunks, and for
    each chunk the DoFn the job applies (read and decode on its threads,
    classify, rows, Parquet, commit).

    Timed from the DoFn's setup (its pools, the decoder's warm-up) to the
    last commit; the model is loaded before, as the job's launch checks
    load it before it labels. Run it in a fresh process (`plain_loop_ips`)
    for the warm-up to cost what it costs the job."""
    from pipeline import job
    from transforms import backends
    from transforms.classify import ClassifierHandler
    from transforms.label_chunks import _LabelChunk, chunk_count, chunk_of
    config = dataclasses.replace(config, input=f"{corpus}/*.JPEG",
                                 output=str(output))
    loader = backends.prepare(backend, model, None, cache_dir,
                              config.inference_threads).local
    handler = ClassifierHandler(loader, LABELS.read_text().splitlines(),
                                model_id=model, top_k=config.top_k)
    # The job's chunk DoFn itself: d/d0 is then what the runner adds.
    step = _LabelChunk(job.chunk_settings(config, "plainloop", backend),
                       handler)
    loader.load()
    start = time.perf_counter()
    step.setup()
    files = sorted(glob.glob(config.input))
    count = chunk_count(len(files), config.rows_per_file)
    chunks: Dict[str, List[str]] = {}
    for uri in files:
        chunks.setdefault(chunk_of(uri, count), []).append(uri)
    labeled = sum(record["labeled"] for chunk in sorted(chunks)
                  for record in step.process((chunk, chunks[chunk])))
    rate = labeled / (time.perf_counter() - start)
    if labeled != len(files):
        raise RuntimeError(f"plain loop labeled {labeled} of {len(files)}")
    return rate


def plain_loop_ips(corpus: Path, output: Path, model: str, backend: str,
                   extra: List[str], cache_dir: Optional[str], log: Path
                   ) -> float:
    """(d0) measured in a fresh process, as the job runs in one."""
    arguments = json.dumps({"corpus": str(corpus), "output": str(output),
                            "model": model, "backend": backend,
                            "extra": extra, "cache_dir": cache_dir})
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from benchmarks.throughput import measure_plain_loop\n"
            "from pipeline.options import parse_args\n"
            "a = json.loads(sys.argv[1])\n"
            "config = parse_args(['--input', 'x', '--output', 'y', "
            "*a['extra']])[0]\n"
            "print('RATE', measure_plain_loop(Path(a['corpus']), "
            "Path(a['output']), a['model'], a['backend'], config, "
            "a['cache_dir']))\n")
    run = run_measured([sys.executable, "-c", code, arguments], log,
                       env={"OPENBLAS_NUM_THREADS": "1"})  # as the job's
    return float(re.search(r"^RATE ([\d.]+)", run.output, re.M).group(1))


def child_pids(pid: int) -> List[int]:
    """The direct children of a process (Linux /proc), [] once it is gone."""
    children: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                children.extend(int(c) for c in handle.read().split())
    except OSError:
        pass  # gone meanwhile
    return children


class PeakMemory:
    """Samples the memory of a process and all its descendants: peak RSS
    (/proc/PID/statm) and peak PSS (/proc/PID/smaps_rollup: shared pages
    divided among the processes sharing them, so a tree's sum counts each
    page once), both summed over the tree. Cheap, as it runs beside what it
    measures: reading smaps_rollup of a job takes ~0.4 ms."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peak_rss_kb = self.peak_pss_kb = 0
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> Tuple[int, int]:
        rss = pss = 0
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/statm") as handle:
                    rss += int(handle.read().split()[1]) * self._page_kb
                with open(f"/proc/{pid}/smaps_rollup") as handle:
                    pss += next((int(line.split()[1]) for line in handle
                                 if line.startswith("Pss:")), 0)
            except (OSError, IndexError, ValueError):
                continue
            todo.extend(child_pids(pid))
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._sample()
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            self._stop.wait(self.interval)

    def stop(self) -> Tuple[float, float]:
        """(peak RSS MB, peak PSS MB)."""
        self._stop.set()
        self._thread.join()
        return self.peak_rss_kb / 1024, self.peak_pss_kb / 1024


@dataclasses.dataclass
class ProcessRun:
    """A finished command: wall time, memory, and its output lines with the
    wall-clock time (time.time()) each arrived at."""
    started: float
    ended: float
    rss_mb: float
    pss_mb: float
    lines: List[Tuple[float, str]]

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def time_of(self, pattern: str, required: bool = True
                ) -> Optional[float]:
        """When the first line matching `pattern` arrived."""
        for arrived, line in self.lines:
            if re.search(pattern, line):
                return arrived
        if not required:
            return None
        raise RuntimeError(f"no line matches {pattern!r}:\n"
                           f"{self.output[-2000:]}")


def run_measured(cmd: List[str], log_path: Path,
                 env: Optional[Dict[str, str]] = None) -> ProcessRun:
    """Run a command to its end; its output goes to `log_path`."""
    lines: List[Tuple[float, str]] = []
    with open(log_path, "w") as log:
        started = time.time()
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                   text=True, errors="replace",
                                   env={**os.environ, **(env or {})})
        memory = PeakMemory(process.pid)
        for line in process.stdout:
            lines.append((time.time(), line))
            log.write(line)
        code = process.wait()
        ended = time.time()
        rss, pss = memory.stop()
    run = ProcessRun(started, ended, rss, pss, lines)
    if code != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({code}); see {log_path}:\n"
                           f"{run.output[-2000:]}")
    return run


def startup_split(run: ProcessRun, output: Path, run_id: str
                  ) -> Dict[str, float]:
    """The job's whole process in four parts (seconds), from the times its
    log lines arrived and its commit records' modification times:
    imports (interpreter, Beam, options) up to 'checking inputs...', launch
    checks up to 'labeling ... images', labeling up to the last chunk's
    commit record, finish (the manifest, the summary, exit) to the end."""
    from transforms.write import ATTEMPTS_DIR, RECORD_SUFFIX
    checks = run.time_of(r"checking inputs, output and module")
    labeling = run.time_of(r"labeling (all|\d+) images with")
    records = glob.glob(str(output / ATTEMPTS_DIR /
                            f"{run_id}-*{RECORD_SUFFIX}"))
    if not records:
        raise RuntimeError(f"no commit records of run {run_id} in {output}")
    last_commit = max(os.stat(r).st_mtime for r in records)
    split = {"imports_s": checks - run.started,
             "launch_checks_s": labeling - checks,
             "labeling_s": last_commit - labeling,
             "finish_s": run.ended - last_commit}
    # Labeling in two: the runner's start (building the graph, listing and
    # grouping the files) up to the chunk step's setup, then the chunks.
    setup = run.time_of(r"model .* in process \d+", required=False)
    if setup is not None:
        split["runner_start_s"] = setup - labeling
        split["chunks_s"] = last_commit - setup
    return split


def job_command(corpus: Path, out: Path, model: str, extra: List[str]
                ) -> List[str]:
    return [sys.executable, "-m", "pipeline", "--input", f"{corpus}/*.JPEG",
            "--output", str(out), "--overwrite", "--model", model,
            "--labels", str(LABELS), *extra]


def import_times(corpus: Path, out: Path, model: str, extra: List[str],
                 log: Path, top: int = 5) -> List[Tuple[str, float]]:
    """Seconds the job's process spends importing, by top-level package
    (Python's -X importtime, each module's own time), the largest `top`
    and the total ("all")."""
    run = run_measured(job_command(corpus, out, model, extra), log,
                       env={"PYTHONPROFILEIMPORTTIME": "1"})
    by_package: Dict[str, float] = {}
    for _, line in run.lines:
        fields = line[len("import time:"):].split("|")
        if not line.startswith("import time:") or not fields[0].strip(
                ).isdigit():
            continue  # not a module's line (the header, the job's log)
        package = fields[2].strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + \
            int(fields[0]) / 1e6
    ranked = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    return ranked + [("all", sum(by_package.values()))]


def run_job(corpus: Path, out: Path, model: str, extra: List[str],
            log: Path) -> Dict[str, float]:
    """The job's CLI as a subprocess, with default options plus `extra`."""
    from transforms.manifest import read_manifest
    run = run_measured(job_command(corpus, out, model, extra), log)
    manifest = read_manifest(str(out))
    labeled = manifest["counts"]["labeled"]
    split = startup_split(run, out, manifest["run_id"])
    loads = re.search(r"module loads\s+(\d+)", run.output)
    return {"wall_s": run.wall_s, "process_ips": labeled / run.wall_s,
            "steady_ips": labeled / split["labeling_s"], **split,
            "rss_mb": run.rss_mb, "pss_mb": run.pss_mb, "labeled": labeled,
            "backend": manifest["backend"],
            "module_loads": int(loads.group(1)) if loads else float("nan")}


def run_peer(script: Path, corpus: Path, out: Path, model: str,
             extra: List[str], log: Path) -> Dict[str, float]:
    """A fixed peer, unchanged, as a whole process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(script), "--input_glob", f"{corpus}/*.JPEG",
           "--model", model, "--output", str(out), *extra]
    run = run_measured(cmd, log)
    result = next(line for _, line in run.lines if line.startswith("RESULT"))
    images = int(re.search(r"images=(\d+)", result).group(1))
    return {"wall_s": run.wall_s, "process_ips": images / run.wall_s,
            "own_ips": float(re.search(r"images_per_s=([\d.]+)", result)
                             .group(1)),
            "images": images, "rss_mb": run.rss_mb, "pss_mb": run.pss_mb}


def ceiling(decode_ips: float, model_ips: float) -> float:
    """(c): decode and model sharing the machine perfectly."""
    return 1 / (1 / decode_ips + 1 / model_ips)


def machine() -> str:
    """CPU model, cores this process may use, memory."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    memory_kb = int(next(line.split()[1] for line in
                         Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal:")))
    return (f"{len(os.sched_getaffinity(0))} cores ({model}), "
            f"{memory_kb / 2**20:.0f} GiB")


def commit() -> str:
    """The checked-out commit, marked when the working tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, text=True,
                              capture_output=True, check=False).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (
        " with uncommitted changes" if dirty else "")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Bench:
    """One benchmark run's fixed inputs: module, backend, options."""

    def __init__(self, workdir: Path, model: str, backend: str,
                 extra: List[str], config):
        self.workdir, self.model, self.backend = workdir, model, backend
        self.extra, self.config = extra, config
        self.cache_dir = str(workdir / "model-cache")

    def halves(self) -> Tuple[float, float]:
        """(a) and (b), measured now."""
        decode, _ = measure_decode(batch=self.config.max_batch_size)
        return decode, measure_model(self.model, self.backend,
                                     self.config.max_batch_size,
                                     cache_dir=self.cache_dir)

    def bracketed(self, corpus: Path, name: str) -> Dict[str, float]:
        """The job on `corpus`, with (a) and (b) measured just before and
        just after it: the ceiling reflects the machine's speed while the
        job ran."""
        before = self.halves()
        job = run_job(corpus, self.workdir / f"out-{name}", self.model,
                      self.extra, self.workdir / f"{name}.log")
        after = self.halves()
        decode, model = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        return {**job, "decode_ips": decode, "model_ips": model,
                "ceiling_ips": ceiling(decode, model)}

    def trial(self, corpus: Path, demo: Path, index: int,
              peers: bool) -> Dict[str, object]:
        """One round at N: the job bracketed by (a) and (b), the plain loop,
        the demo-size job and the peers, back to back."""
        job = self.bracketed(corpus, f"job-{index}")
        shutil.rmtree(self.workdir / "plain-loop", ignore_errors=True)
        loop_ips = plain_loop_ips(corpus, self.workdir / "plain-loop",
                                  self.model, self.backend, self.extra,
                                  self.cache_dir,
                                  self.workdir / f"plain-loop-{index}.log")
        trial: Dict[str, object] = {
            "job": job, "plain_loop_ips": loop_ips,
            "demo": run_job(demo, self.workdir / "out-demo", self.model,
                            self.extra, self.workdir / f"demo-{index}.log")}
        c = job["ceiling_ips"]
        ratios = {"steady_ceiling": job["steady_ips"] / c,
                  "process_ceiling": job["process_ips"] / c,
                  "loop_ceiling": loop_ips / c,
                  "steady_loop": job["steady_ips"] / loop_ips}
        if peers:
            trial["naive_beam"] = run_peer(
                NAIVE_BEAM, corpus, self.workdir / "out-naive-beam",
                self.model, [], self.workdir / f"naive-beam-{index}.log")
            trial["tf_data"] = run_peer(
                TF_DATA_PEER, corpus, self.workdir / "out-tf-data",
                self.model, ["--embedding"],
                self.workdir / f"tf-data-{index}.log")
            ratios["process_naive_beam"] = (
                job["process_ips"] / trial["naive_beam"]["process_ips"])
            ratios["process_tf_data"] = (
                job["process_ips"] / trial["tf_data"]["process_ips"])
        trial["ratios"] = ratios
        _LOGGER.info("trial %d: %s", index, ", ".join(
            f"{k} {v:.2f}" for k, v in ratios.items()))
        return trial


def _medians(runs: Sequence[Dict]) -> Dict[str, float]:
    return {key: _median([r[key] for r in runs]) for key in runs[0]
            if isinstance(runs[0][key], (int, float))}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", help="write every figure here as JSON")
    parser.add_argument("--markdown", help="write the table here (Markdown)")
    parser.add_argument("--model", help="module (default: the tf1 stand-in, "
                        "built in the work directory)")
    parser.add_argument("--workdir", help="default: a temporary directory")
    parser.add_argument("--pipeline_args", default="",
                        help="extra options for the job's runs (default "
                        "none: the job's defaults, --backend auto)")
    parser.add_argument("--skip_4n", action="store_true")
    parser.add_argument("--skip_peers", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="labeler-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or str(workdir / "standin-tf1")
    if not args.model and not os.path.exists(model):
        from pipeline.standin import build_standin
        build_standin(model, "tf1")
    from pipeline.options import parse_args as parse_job_args
    cache_dir = workdir / "model-cache"
    extra = args.pipeline_args.split() + ["--model_cache_dir", str(cache_dir)]
    config = parse_job_args(["--input", "x", "--output", "y", *extra])[0]

    run = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "commit": commit(), "machine": machine(),
           "load_at_start": _load()}
    corpus, demo = workdir / "corpus", workdir / "demo"
    for directory, size in ((corpus, args.n), (demo, DEMO_SIZE)):
        shutil.rmtree(directory, ignore_errors=True)
        make_corpus(directory, size)
    _LOGGER.info("corpus: %d images in %s", args.n, corpus)

    # The first run converts the module and runs the parity gate (what
    # every later run on this machine reuses); it also fills the page
    # cache. Its launch checks are reported, its rates are not.
    shutil.rmtree(cache_dir, ignore_errors=True)
    first = run_job(demo, workdir / "out-first", model, extra,
                    workdir / "first.log")
    backend = first["backend"]
    _LOGGER.info("the job chose backend %s", backend)
    imports = import_times(demo, workdir / "out-imports", model, extra,
                           workdir / "imports.log")
    bench = Bench(workdir, model, backend, extra, config)
    fast_ips, _ = measure_decode(fast_jpeg=True, batch=config.max_batch_size)
    fast_mean, fast_worst = fast_jpeg_deviation()

    trials = [bench.trial(corpus, demo, i + 1, not args.skip_peers)
              for i in range(args.trials)]
    figures: Dict[str, object] = {
        **run,
        "command": " ".join(["python -m benchmarks.throughput",
                             *(argv if argv is not None else sys.argv[1:])]),
        "n": args.n, "trials": args.trials, "backend": backend,
        "cores": len(os.sched_getaffinity(0)),
        "batch_size": config.max_batch_size,
        "first_run_launch_checks_s": first["launch_checks_s"],
        "import_times": imports,
        "fast_jpeg_decode_ips": fast_ips,
        "fast_jpeg_mean_delta_255": fast_mean,
        "fast_jpeg_worst_delta_255": fast_worst,
        "job": _medians([t["job"] for t in trials]),
        "demo": _medians([t["demo"] for t in trials]),
        "plain_loop_ips": _median([t["plain_loop_ips"] for t in trials]),
        "ratios": _medians([t["ratios"] for t in trials]),
        "ratio_trials": {key: [t["ratios"][key] for t in trials]
                         for key in trials[0]["ratios"]},
        "trial_figures": trials,
    }
    if not args.skip_peers:
        figures["naive_beam"] = _medians([t["naive_beam"] for t in trials])
        figures["tf_data"] = _medians([t["tf_data"] for t in trials])
    if not args.skip_4n:
        big = workdir / "corpus4n"
        shutil.rmtree(big, ignore_errors=True)
        make_corpus(big, 4 * args.n)
        run4 = bench.bracketed(big, "job-4n")
        shutil.rmtree(big, ignore_errors=True)
        figures["job_4n"] = run4
        figures["ratios"]["steady_4n_ceiling"] = (run4["steady_ips"] /
                                                  run4["ceiling_ips"])
    figures["load_at_end"] = _load()
    rows = table_rows(figures)
    targets = target_rows(figures)
    sys.stdout.write("\n" + plain_table(rows) + "\n\n" +
                     plain_table(targets) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(rows) + "\n" +
                                       markdown_table(targets, "target"))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def _trials(figures: Dict, key: str) -> str:
    values = figures["ratio_trials"].get(key, [])
    if len(values) < 2:
        return ""
    return " (trials " + ", ".join(f"{v:.2f}" for v in values) + ")"


def _split(run: Dict) -> str:
    inside = (f" (runner start {run['runner_start_s']:.1f} + chunks "
              f"{run['chunks_s']:.1f})" if "chunks_s" in run else "")
    return (f"{run['imports_s']:.1f} / {run['launch_checks_s']:.1f} / "
            f"{run['labeling_s']:.1f}{inside} / {run['finish_s']:.1f} s "
            f"(whole process {run['wall_s']:.1f} s)")


def table_rows(f: Dict) -> List[Tuple[str, str]]:
    """The table: (figure, value) rows."""
    job, r, n = f["job"], f["ratios"], f["n"]
    rows = [
        ("run", f"{f['started']}, commit {f['commit']}, load average "
         f"(1/5/15 min) {f['load_at_start']} at the start, "
         f"{f['load_at_end']} at the end"),
        ("machine", f["machine"]),
        ("command", f"`{f['command']}`"),
        ("setup", f"{n} images (symlinks to the 150 "
         f"sample photos); {f['trials']} trial(s), medians; backend "
         f"{f['backend']} (the job's choice); batch "
         f"{f['batch_size']}"),
        ("(a) decode + preprocess alone, reference-exact",
         f"{job['decode_ips']:.0f} img/s"),
        ("    --fast_jpeg (not reference-exact)",
         f"{f['fast_jpeg_decode_ips']:.0f} img/s, mean |Δ| "
         f"{f['fast_jpeg_mean_delta_255']:.1f}/255 (worst image "
         f"{f['fast_jpeg_worst_delta_255']:.1f}/255)"),
        (f"(b) model alone, {f['backend']}", f"{job['model_ips']:.0f} img/s"),
        ("(c) ceiling 1/(1/a + 1/b)", f"{job['ceiling_ips']:.0f} img/s"),
        (f"(d) job, steady state, N = {n}", f"{job['steady_ips']:.0f} img/s: "
         f"d/c {r['steady_ceiling']:.2f}{_trials(f, 'steady_ceiling')}"
         f"{_chunks_rate(job)}"),
    ]
    if "job_4n" in f:
        big = f["job_4n"]
        rows.append((f"(d) job, steady state, 4N = {4 * n}",
                     f"{big['steady_ips']:.0f} img/s of a ceiling of "
                     f"{big['ceiling_ips']:.0f}: d/c "
                     f"{r['steady_4n_ceiling']:.2f}{_chunks_rate(big)}"))
    rows += [
        (f"(d) job, whole process, N = {n}",
         f"{job['process_ips']:.0f} img/s: /c {r['process_ceiling']:.2f}"
         f"{_trials(f, 'process_ceiling')}"),
        ("(d0) the job's chunk step in a plain loop, no runner",
         f"{f['plain_loop_ips']:.0f} img/s: d0/c {r['loop_ceiling']:.2f}, "
         f"d/d0 {r['steady_loop']:.2f}"),
        ("start-up split, demo (150): imports / launch checks / labeling / "
         "finish", _split(f["demo"])),
        (f"start-up split, N = {n}", _split(job)),
        *([(f"start-up split, 4N = {4 * n}", _split(f["job_4n"]))]
          if "job_4n" in f else []),
        ("imports by package (-X importtime, own time; one run)",
         ", ".join(f"{name} {seconds:.2f} s"
                   for name, seconds in f["import_times"])),
        ("launch checks, first run on this machine (convert + gate)",
         f"{f['first_run_launch_checks_s']:.1f} s"),
    ]
    memory = [(f"job, N = {n}", job)]
    if "job_4n" in f:
        memory.append((f"job, 4N = {4 * n}", f["job_4n"]))
    if "naive_beam" in f:
        nb, td = f["naive_beam"], f["tf_data"]
        rows += [
            ("peer naive_beam.py, whole process",
             f"{nb['process_ips']:.0f} img/s (its own figure "
             f"{nb['own_ips']:.0f}): job / peer "
             f"{r['process_naive_beam']:.2f}×"
             f"{_trials(f, 'process_naive_beam')}"),
            ("peer tf_data_peer.py --embedding, whole process",
             f"{td['process_ips']:.0f} img/s (its own figure "
             f"{td['own_ips']:.0f}): job / peer {r['process_tf_data']:.2f}×"
             f"{_trials(f, 'process_tf_data')}")]
        memory += [("naive_beam.py", nb), ("tf_data_peer.py --embedding", td)]
    rows += [(f"peak memory, {name}", f"PSS {m['pss_mb']:.0f} MB, RSS "
              f"{m['rss_mb']:.0f} MB") for name, m in memory]
    rows.append(("module loads per job (one worker process)",
                 f"{job['module_loads']:.0f}"))
    return rows


def plain_table(rows: List[Tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _chunks_rate(run: Dict) -> str:
    """The rate while the chunk step runs (the runner's start left out)."""
    if "chunks_s" not in run:
        return ""
    rate = run["labeled"] / run["chunks_s"]
    return (f"; while the chunks run {rate:.0f} img/s, "
            f"{rate / run['ceiling_ips']:.2f} of c")


def _runner_part(job: Dict) -> str:
    if "chunks_s" not in job:
        return ""
    return (f" (runner start {job['runner_start_s']:.1f} s, chunks "
            f"{job['chunks_s']:.1f} s)")


def target_rows(f: Dict) -> List[Tuple[str, str]]:
    """Each target with its figure, met or not, and what the figure is made
    of: d/c = d0/c × d/d0; whole process/c = steady d/c × the labeling's
    share of the process; a peer ratio = the job's whole-process rate over
    the peer's."""
    r, job = f["ratios"], f["job"]
    loop_s = job["labeled"] / f["plain_loop_ips"]
    made_of_steady = (f"at N: d0/c {r['loop_ceiling']:.2f}, d/d0 "
                      f"{r['steady_loop']:.2f} (d/c {r['steady_ceiling']:.2f})"
                      f"; the job's labeling took {job['labeling_s']:.1f} s"
                      f"{_runner_part(job)} where the loop took "
                      f"{loop_s:.1f} s")
    share = job["labeling_s"] / job["wall_s"]
    made_of_process = (
        f"steady d/c {r['steady_ceiling']:.2f} × labeling's share of the "
        f"process {share:.2f} ({job['labeling_s']:.1f} of "
        f"{job['wall_s']:.1f} s; imports {job['imports_s']:.1f} s, launch "
        f"checks {job['launch_checks_s']:.1f} s, finish "
        f"{job['finish_s']:.1f} s)")
    rows = []
    for key, name, made_of in (
            ("steady_4n_ceiling", "steady state at 4N / ceiling",
             made_of_steady),
            ("process_ceiling", "whole process at N / ceiling",
             made_of_process),
            ("process_naive_beam", "whole process / naive_beam.py", None),
            ("process_tf_data", "whole process / tf_data_peer.py "
             "--embedding", None)):
        if key not in r:
            continue
        if made_of is None:
            peer = f["naive_beam" if "naive" in key else "tf_data"]
            made_of = (f"{job['process_ips']:.0f} / "
                       f"{peer['process_ips']:.0f} img/s")
        met = "met" if r[key] >= TARGETS[key] else "MISSED"
        rows.append((f"{name} ≥ {TARGETS[key]:g}",
                     f"{r[key]:.2f}: {met}; {made_of}"))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(rows: List[Tuple[str, str]], first: str = "figure"
                   ) -> str:
    lines = [f"| {first} | value |", "|---|---|"]
    lines += [f"| {_cell(name.strip())} | {_cell(value)} |"
              for name, value in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
