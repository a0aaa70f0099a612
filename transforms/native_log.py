"""TensorFlow's native start-up lines (oneDNN, CUDA drivers, cuInit) kept
off the console: they go to the debug log of the process that imports TF.

TensorFlow ≥ 2.19 writes them before absl's log is set up, ignoring
TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442), so only the file
descriptor can hold them. Importing this module changes nothing; call
quiet_tensorflow_import() before TensorFlow may be imported.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

_LOGGER = logging.getLogger(__name__)

#: A line of TensorFlow's native (absl) log, e.g.
#: "I0000 00:00:1795991194.791251    6231 port.cc:153] oneDNN custom ...".
_NATIVE_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
    r"[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] )")


@contextlib.contextmanager
def native_stderr_to_debug_log() -> Iterator[None]:
    """Lines written to file descriptor 2 inside the block: TF's native log
    lines go to the debug log, anything else to stderr as usual."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            for line in text.splitlines():
                if _NATIVE_LOG_LINE.match(line):
                    _LOGGER.debug("tensorflow: %s", line)
                elif line.strip():
                    sys.stderr.write(line + "\n")
            sys.stderr.flush()


class _QuietLoader:
    """Runs the real loader of `tensorflow` with its native output captured."""

    def __init__(self, wrapped):
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self._wrapped
        if module.__spec__ is not None:
            module.__spec__.loader = self._wrapped
        with native_stderr_to_debug_log():
            self._wrapped.exec_module(module)
            # The device probe logs the cuInit line once; do it here. It
            # leaves TF's thread pools unset (they can still be sized).
            config = getattr(module, "config", None)
            if config is not None:
                config.list_physical_devices()

    def __getattr__(self, name):
        return getattr(self._wrapped, name)


class _QuietTensorflowFinder:
    """A meta-path finder that only wraps the loader of `tensorflow`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_import() -> None:
    """From now on, importing TensorFlow logs its native start-up lines at
    debug level (a no-op once TensorFlow is imported)."""
    if "tensorflow" in sys.modules or any(
            isinstance(f, _QuietTensorflowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorflowFinder())
