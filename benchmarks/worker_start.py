"""Worker start-up per backend: what one SDK worker process spends before
its first batch is labeled, and the memory it holds.

Each trial is a fresh process that does what a worker does: import the
handler, load the model through the loader the launcher hands it (tf: the
module itself; xnnpack: the converted file staged with the job, LiteRT
only), classify one batch of real photos; the "no model" row is the
imports alone. It reports the seconds for each
step and the process's resident memory after the first batch (VmRSS) and
at its peak (VmHWM). The launcher's side (converting, gating, staging) is
done once, before the trials, as a job's launch does it.

    python -m benchmarks.worker_start [--model DIR] [--trials 3] [--batch 64]
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

_LOGGER = logging.getLogger("benchmarks.worker_start")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PHOTOS = os.path.join(PROJECT_ROOT, "..", "shared", "data", "photos",
                              "*.JPEG")
DEFAULT_MODEL = os.path.join(PROJECT_ROOT, ".cache", "standin-tf1")


def _memory_mb() -> Dict[str, float]:
    """This process's resident set now and at its peak, in MB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return {"rss_mb": values["VmRSS"], "peak_rss_mb": values["VmHWM"]}


def worker_trial(loader, labels: List[str], pixels_path: str) -> Dict:
    """In a fresh process: the steps of a worker's start, timed."""
    started = time.perf_counter()
    import numpy as np  # pylint: disable=import-outside-toplevel
    from transforms.classify import (ClassifierHandler,  # pylint: disable=import-outside-toplevel
                                     classify_batch)
    imported = time.perf_counter()
    if loader is None:  # the baseline: a worker's imports, no model
        return {"import_s": imported - started, "load_s": 0.0,
                "first_batch_s": 0.0, "start_s": imported - started,
                "tensorflow_imported": "tensorflow" in sys.modules,
                **_memory_mb()}
    handler = ClassifierHandler(loader, labels, model_id="benchmark")
    classifier = handler.load_model()
    loaded = time.perf_counter()
    pixels = np.load(pixels_path)
    classify_batch(classifier, pixels, handler.label_array, 5)
    first_batch = time.perf_counter()
    return {"import_s": imported - started, "load_s": loaded - imported,
            "first_batch_s": first_batch - loaded,
            "start_s": first_batch - started,
            "tensorflow_imported": "tensorflow" in sys.modules,
            **_memory_mb()}


def _prepare(model: str, photos: str, batch: int, workdir: str):
    """The launcher's side: loaders for both backends, the label list and
    one batch of decoded photos."""
    from transforms import backends  # pylint: disable=import-outside-toplevel
    from transforms.imaging import (DecodeSettings, ImageBytes,  # pylint: disable=import-outside-toplevel
                                    decode_batch)
    import numpy as np  # pylint: disable=import-outside-toplevel
    paths = sorted(glob.glob(photos))[:batch]
    settings = DecodeSettings(max_pixels=10**8, allowed_formats=("JPEG",))
    decoded, _ = decode_batch([ImageBytes(p, open(p, "rb").read())
                               for p in paths], settings)
    pixels_path = os.path.join(workdir, "pixels.npy")
    np.save(pixels_path, decoded.pixels)
    cache = os.path.join(workdir, "cache")
    loaders = {
        "tf": backends.prepare("tf", model, None, cache).local,
        "xnnpack": backends.prepare("xnnpack", model, None, cache)
        .stage(os.path.join(workdir, "staged")),
    }
    classifier = loaders["tf"]()
    labels = [f"class {i}" for i in range(classifier.num_classes)]
    return loaders, labels, pixels_path, len(paths)


def run(model: str, photos: str, trials: int, batch: int) -> Dict:
    results: Dict[str, List[Dict]] = {"tf": [], "xnnpack": [],
                                      "no model": []}
    with tempfile.TemporaryDirectory(prefix="worker-start-") as workdir:
        loaders, labels, pixels_path, images = _prepare(model, photos, batch,
                                                        workdir)
        loaders["no model"] = None
        for _ in range(trials):
            for backend, loader in loaders.items():  # interleaved
                child = subprocess.run(
                    [sys.executable, "-m", "benchmarks.worker_start",
                     "--child"], input=pickle.dumps(
                         (loader, labels, pixels_path)),
                    capture_output=True, cwd=PROJECT_ROOT, timeout=600,
                    check=True, env={**os.environ,
                                     "TF_CPP_MIN_LOG_LEVEL": "2"})
                results[backend].append(json.loads(
                    child.stdout.decode().strip().splitlines()[-1]))
    return {"images": images, "trials": results}


def _table(report: Dict) -> str:
    keys = ("import_s", "load_s", "first_batch_s", "start_s", "rss_mb",
            "peak_rss_mb")
    lines = [f"worker start, first batch of {report['images']} images "
             f"(median [min-max] of {len(report['trials']['tf'])} fresh "
             "processes)",
             f"{'backend':<9}" + "".join(f"{k:>22}" for k in keys) +
             "  tensorflow imported"]
    for backend, trials in report["trials"].items():
        cells = []
        for key in keys:
            values = [t[key] for t in trials]
            digits = 0 if key.endswith("_mb") else 2
            cells.append(f"{statistics.median(values):.{digits}f} "
                         f"[{min(values):.{digits}f}-{max(values):.{digits}f}]")
        imported = {t["tensorflow_imported"] for t in trials}
        lines.append(f"{backend:<9}" + "".join(f"{c:>22}" for c in cells) +
                     f"  {'/'.join(str(i).lower() for i in sorted(imported))}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_start",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="module directory (default: the demo stand-in)")
    parser.add_argument("--photos", default=DEFAULT_PHOTOS)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", action="store_true",
                        help="print the trials as JSON too")
    parser.add_argument("--child", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        loader, labels, pixels_path = pickle.load(sys.stdin.buffer)
        print(json.dumps(worker_trial(loader, labels, pixels_path)))
        return 0
    logging.basicConfig(level=logging.WARNING)
    if not os.path.isdir(args.model):
        from pipeline.standin import build_standin  # pylint: disable=import-outside-toplevel
        build_standin(args.model, "tf1")
    report = run(args.model, args.photos, args.trials, args.batch)
    print(_table(report))
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
