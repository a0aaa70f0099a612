"""Scale benchmark: does the job's cost per image stay flat as inputs grow?

    python -m benchmarks.scale [--n 100000] [--factor 10]
                               [--forms glob,manifest] [--workdir DIR]
                               [--json PATH] [--keep]

Makes N and factor×N tiny real images on local disk (8×8 JPEGs of random
pixels, ~0.6 KB each, every file different: identical bytes would let
Parquet's dictionary encoding shrink the output and hide its real size),
in subdirectories of 10,000 files, plus a manifest listing them. Then, for
each size and each input form (the glob `<corpus>/*/*.jpg`, the manifest),
runs the CLI (`python -m pipeline`) in a subprocess and reports:

  * time to the first committed file (the first `_attempts/*.json`);
  * images/s over the whole command (start-up included);
  * peak RSS of the launcher process and, separately, of its worker
    processes (summed over the process tree; `--direct_running_mode
    multi_processing` runs the workers as child processes);
  * the memory the listing itself holds: tracemalloc's peak while the
    job's listing (transforms.sources.iter_matches / manifest_uris) walks
    every input, next to Beam's FileSystems.match on the same glob.

Everything goes through the stand-in model with `--backend xnnpack` (the
model's own cost is not what this measures). This is a benchmark, not a
test: it takes minutes at 100 k images and tens of minutes at 1 M.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.throughput import child_pids

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LABELS = PROJECT_ROOT / "transforms" / "data" / "ImageNetLabels.txt"
FILES_PER_DIRECTORY = 10_000
GLOB_SUFFIX = "*/*.jpg"

_LOGGER = logging.getLogger("benchmarks.scale")


# ------------------------------------------------------------------ corpus
def tiny_jpeg(seed: int) -> bytes:
    """An 8×8 JPEG of random pixels (different for every seed)."""
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    pixels = random.Random(seed).randbytes(8 * 8 * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (8, 8), pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def corpus_paths(corpus: Path, n: int) -> List[str]:
    return [str(corpus / f"d{i // FILES_PER_DIRECTORY:04d}" /
                f"img{i:08d}.jpg") for i in range(n)]


def make_corpus(corpus: Path, n: int) -> Path:
    """N different tiny JPEGs under `corpus`, and `corpus`.manifest.txt
    listing them (one absolute path per line). Kept if already complete."""
    manifest = corpus.with_suffix(".manifest.txt")
    paths = corpus_paths(corpus, n)
    if manifest.exists() and os.path.exists(paths[-1]):
        return manifest
    started = time.perf_counter()
    for i, path in enumerate(paths):
        if i % FILES_PER_DIRECTORY == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(tiny_jpeg(i))
    manifest.write_text("".join(p + "\n" for p in paths))
    _LOGGER.info("made %d images under %s in %.0f s", n, corpus,
                 time.perf_counter() - started)
    return manifest


# ------------------------------------------------------------- measuring
class TreeRss:
    """Samples the RSS of a process (the launcher) and, separately, the sum
    over all its descendants (the workers), keeping each one's peak."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.launcher_kb = self.workers_kb = self.total_kb = 0
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss_kb(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                return int(handle.read().split()[1]) * self._page_kb
        except (OSError, IndexError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            launcher = self._rss_kb(self.pid)
            workers, todo = 0, child_pids(self.pid)
            while todo:
                pid = todo.pop()
                workers += self._rss_kb(pid)
                todo.extend(child_pids(pid))
            self.launcher_kb = max(self.launcher_kb, launcher)
            self.workers_kb = max(self.workers_kb, workers)
            self.total_kb = max(self.total_kb, launcher + workers)
            self._stop.wait(self.interval)

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"launcher_rss_mb": self.launcher_kb / 1024,
                "workers_rss_mb": self.workers_kb / 1024,
                "tree_rss_mb": self.total_kb / 1024}


def first_commit_watcher(output: Path, started: float, stop: threading.Event,
                         found: Dict[str, float]) -> None:
    """Sets found["first_commit_s"] when the first commit record appears."""
    attempts = output / "_attempts"
    while not stop.is_set():
        try:
            with os.scandir(attempts) as entries:
                if any(e.name.endswith(".json") for e in entries):
                    found["first_commit_s"] = time.perf_counter() - started
                    return
        except OSError:
            pass  # not created yet
        stop.wait(0.2)


def run_job(source: List[str], output: Path, model: str, cache: Path,
            runner_flags: List[str], log_path: Path) -> Dict[str, float]:
    """One CLI run: wall time, first commit, RSS, labeled count."""
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", *source, "--output", str(output),
           "--model", model, "--labels", str(LABELS), "--backend", "xnnpack",
           "--model_cache_dir", str(cache), *runner_flags]
    found: Dict[str, float] = {}
    stop = threading.Event()
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=PROJECT_ROOT)
        watcher = threading.Thread(target=first_commit_watcher, daemon=True,
                                   args=(output, started, stop, found))
        watcher.start()
        rss = TreeRss(process.pid)
        code = process.wait()
        wall = time.perf_counter() - started
        memory = rss.stop()
        stop.set()
        watcher.join()
    if code != 0:
        raise RuntimeError(f"the job failed ({code}); see {log_path}:\n"
                           f"{log_path.read_text()[-2000:]}")
    sys.path.insert(0, str(PROJECT_ROOT))
    from transforms.manifest import read_manifest  # pylint: disable=import-outside-toplevel
    manifest = read_manifest(str(output))
    counts = manifest["counts"]
    labeled = counts["labeled"]
    return {"wall_s": wall, "ips": labeled / wall, "labeled": labeled,
            "failed": counts["failed"],
            "first_commit_s": found.get("first_commit_s", float("nan")),
            **memory, **output_sizes(output, manifest)}


def output_sizes(output: Path, manifest: Dict) -> Dict[str, float]:
    """What the finished output holds: files, bytes per labels row, the
    commit records' and the manifest's bytes."""
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    labels = [output / name for name in manifest["files"]
              if name.startswith("labels-")]
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in labels)
    records = list((output / "_attempts").glob("*.json"))
    return {"files": len(manifest["files"]),
            "labels_bytes_per_row": sum(p.stat().st_size for p in labels)
            / max(rows, 1),
            "commit_record_bytes": sum(p.stat().st_size for p in records)
            / max(len(records), 1),
            "manifest_bytes": (output / "_SUCCESS.json").stat().st_size}


_LISTING_PROBE = r"""
import json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
kind, location = sys.argv[2], sys.argv[3]
if kind == "beam_match":
    from apache_beam.io.filesystems import FileSystems
else:
    from transforms.sources import iter_matches, manifest_uris
tracemalloc.start()
started = time.perf_counter()
if kind == "glob":
    count = sum(1 for _ in iter_matches(location))
elif kind == "manifest":
    count = sum(1 for _ in manifest_uris(location))
else:
    count = len(FileSystems.match([location])[0].metadata_list)
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({"count": count, "peak_mb": peak / 2**20,
                  "seconds": time.perf_counter() - started}))
"""


def listing_memory(kind: str, location: str) -> Dict[str, float]:
    """tracemalloc's peak while one process walks every input (`kind`:
    glob and manifest are the job's listing; beam_match is Beam's
    FileSystems.match, which returns the whole listing as one list)."""
    result = subprocess.run(
        [sys.executable, "-c", _LISTING_PROBE, str(PROJECT_ROOT), kind,
         location], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ main
def measure(workdir: Path, sizes: List[int], forms: List[str], model: str,
            runner_flags: List[str], keep: bool) -> List[Dict]:
    cache = workdir / "model-cache"
    warm = workdir / "corpus-warm"
    make_corpus(warm, 200)  # converts and gates the model once, untimed
    run_job(["--input", f"{warm}/{GLOB_SUFFIX}"], workdir / "out-warm", model,
            cache, runner_flags, workdir / "warm.log")
    rows = []
    for n in sizes:
        corpus = workdir / f"corpus-{n}"
        manifest = make_corpus(corpus, n)
        glob = f"{corpus}/{GLOB_SUFFIX}"
        listing = {"glob": listing_memory("glob", glob),
                   "manifest": listing_memory("manifest", str(manifest)),
                   "beam_match": listing_memory("beam_match", glob)}
        _LOGGER.info("n=%d listing peak: job glob %.1f MB, manifest %.1f MB, "
                     "Beam FileSystems.match %.1f MB", n,
                     listing["glob"]["peak_mb"],
                     listing["manifest"]["peak_mb"],
                     listing["beam_match"]["peak_mb"])
        for form in forms:
            source = (["--input", glob] if form == "glob"
                      else ["--input_manifest", str(manifest)])
            output = workdir / f"out-{form}-{n}"
            run = run_job(source, output, model, cache, runner_flags,
                          workdir / f"{form}-{n}.log")
            row = {"n": n, "form": form, **run,
                   "listing_peak_mb": listing[form]["peak_mb"],
                   "beam_match_peak_mb": listing["beam_match"]["peak_mb"]}
            _LOGGER.info("%s", json.dumps(row))
            rows.append(row)
            shutil.rmtree(output, ignore_errors=True)
        if not keep:
            shutil.rmtree(corpus, ignore_errors=True)
            manifest.unlink(missing_ok=True)
    return rows


def _growth(row: Dict, first: Dict, key: str) -> str:
    if row is first:
        return ""
    return f" ({100 * (row[key] / first[key] - 1):+.0f} %)"


def table(rows: List[Dict]) -> str:
    """The results as a Markdown table, with each form's growth from the
    smallest N."""
    lines = ["| images | input | first commit | img/s | launcher RSS | "
             "workers RSS | listing held (job / Beam match) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    base: Dict[str, Dict] = {}
    for row in rows:
        first = base.setdefault(row["form"], row)
        beam = (f" / {row['beam_match_peak_mb']:.1f} MB"
                if row["form"] == "glob" else "")
        lines.append(
            f"| {row['n']:,} | {row['form']} | {row['first_commit_s']:.0f} s "
            f"| {row['ips']:.0f} | {row['launcher_rss_mb']:.0f} MB"
            f"{_growth(row, first, 'launcher_rss_mb')} | "
            f"{row['workers_rss_mb']:.0f} MB"
            f"{_growth(row, first, 'workers_rss_mb')} | "
            f"{row['listing_peak_mb']:.1f} MB{beam} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--factor", type=int, default=10,
                        help="the second size is factor × N")
    parser.add_argument("--forms", default="glob,manifest")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (multi_processing); 0: one "
                        "process (in_memory)")
    parser.add_argument("--workdir", help="where corpora and outputs go "
                        "(default: a new directory under /tmp)")
    parser.add_argument("--model", help="module (default: the tf1 stand-in)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the corpora")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(PROJECT_ROOT))
    model = args.model or str(workdir / "standin-tf1")
    if not args.model and not os.path.exists(model):
        from pipeline.standin import build_standin  # pylint: disable=import-outside-toplevel
        build_standin(model, "tf1")
    runner_flags = (["--direct_running_mode", "multi_processing",
                     "--direct_num_workers", str(args.workers)]
                    if args.workers else [])
    rows = measure(workdir, [args.n, args.n * args.factor],
                   args.forms.split(","), model, runner_flags, args.keep)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
