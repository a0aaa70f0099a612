"""`python -m pipeline ...` runs the labeling job (see pipeline/cli.py)."""
import sys

from pipeline.cli import main

sys.exit(main())
