"""`python -m pipeline ...` runs the labeling job (see pipeline/cli.py)."""
import os

# Before NumPy loads: the job's only BLAS calls are BatchElements' tiny
# regressions, and OpenBLAS's spinning helper threads would compete with the
# decoding threads for the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pipeline.cli import console_main  # pylint: disable=wrong-import-position

console_main()
