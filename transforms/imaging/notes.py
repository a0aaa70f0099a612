"""What decoders say while they decode: Pillow's Python warnings, Pillow's
log records and libtiff's error messages (written by the C library straight
to stderr by default).

`route_decoder_messages()` (part of `transforms.imaging.warm_up`) sends
each of them to the thread that is decoding: inside `collecting()` they are
kept for that image (its error row's message) and go to the debug log;
nothing reaches stderr. Outside it, warnings are shown as before and the
rest goes to the debug log.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import warnings
from typing import Iterator, List, Optional

from PIL import Image

_LOGGER = logging.getLogger(__name__)

_local = threading.local()
_install_lock = threading.Lock()
_previous_showwarning = warnings.showwarning
# libtiff's handler: void (*)(const char* module, const char* fmt, va_list)
_TIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p,
                                 ctypes.c_void_p)
_tiff_callback = None  # kept alive while libtiff holds it


@contextlib.contextmanager
def collecting() -> Iterator[List[str]]:
    """Collect what decoders say on this thread inside the block."""
    heard: List[str] = []
    outer = getattr(_local, "heard", None)
    _local.heard = heard
    try:
        yield heard
    finally:
        _local.heard = outer


def _hear(text: str) -> bool:
    """Keep `text` for the image this thread decodes; False outside
    `collecting()`."""
    heard: Optional[List[str]] = getattr(_local, "heard", None)
    text = " ".join(text.split())
    if heard is None:
        return False
    if text and text not in heard:
        heard.append(text)
    return True


def _showwarning(message, category, filename, lineno, file=None,
                 line=None) -> None:
    if not _hear(f"{category.__name__}: {message}"):
        _previous_showwarning(message, category, filename, lineno, file, line)


class _PillowLogHandler(logging.Handler):
    """Pillow's log records (e.g. TIFF "More samples per pixel than can be
    decoded" at ERROR): the image's message and the debug log."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            _hear(f"{record.name}: {record.getMessage()}")
            _LOGGER.debug("%s: %s", record.name, record.getMessage())


def _on_libtiff_error(module: Optional[bytes], fmt: Optional[bytes],
                      args: Optional[int]) -> None:
    try:
        buffer = ctypes.create_string_buffer(512)
        _vsnprintf(buffer, len(buffer), fmt, args)
        text = buffer.value.decode("utf-8", "replace")
        where = (module or b"").decode("utf-8", "replace")
        text = f"libtiff: {where}: {text}" if where else f"libtiff: {text}"
        if not _hear(text):
            _LOGGER.debug("%s", text)
    except Exception:  # pylint: disable=broad-except
        pass  # called from C: an exception here would go to stderr


_vsnprintf = None


def _route_libtiff_errors() -> bool:
    """Install a libtiff error handler in the libtiff that Pillow uses.

    Pillow silences libtiff's warnings but leaves its errors to the
    default handler, which writes to stderr, and offers no hook; the
    handler is set through ctypes. Returns False where that is not
    possible (the messages then keep going to stderr)."""
    global _tiff_callback, _vsnprintf  # pylint: disable=global-statement
    if _tiff_callback is not None:
        return True
    try:
        from PIL import _imaging  # pylint: disable=import-outside-toplevel
        # dlsym through Pillow's own extension finds the libtiff it links.
        set_handler = ctypes.CDLL(_imaging.__file__).TIFFSetErrorHandler
        vsnprintf = ctypes.CDLL(None).vsnprintf
    except (ImportError, OSError, AttributeError):
        _LOGGER.debug("libtiff errors cannot be routed here", exc_info=True)
        return False
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                          ctypes.c_void_p]
    set_handler.argtypes = [_TIFF_HANDLER]
    set_handler.restype = ctypes.c_void_p
    _vsnprintf = vsnprintf
    _tiff_callback = _TIFF_HANDLER(_on_libtiff_error)
    set_handler(_tiff_callback)
    return True


def route_decoder_messages() -> None:
    """Route decoder messages as the module docstring says (idempotent)."""
    global _previous_showwarning  # pylint: disable=global-statement
    with _install_lock:
        if warnings.showwarning is not _showwarning:
            _previous_showwarning = warnings.showwarning
            warnings.showwarning = _showwarning
        # Every time, not once per call site: each image's row gets its own.
        warnings.filterwarnings("always", module=r"PIL\.")
        # Pillow warns at its own threshold; the job's limit is checked from
        # the header right after and is the one its rows name.
        warnings.filterwarnings("ignore",
                                category=Image.DecompressionBombWarning)
        pillow = logging.getLogger("PIL")
        if not any(isinstance(h, _PillowLogHandler)
                   for h in pillow.handlers):
            pillow.addHandler(_PillowLogHandler())
        pillow.propagate = False
        _route_libtiff_errors()
