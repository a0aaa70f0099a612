"""What the three commands (run, evaluate, report) share: exit statuses, the
error a user can fix, the argument parser, the console set-up and the
wrapper around each command's main.

A UserError is one line on stderr and exit status 2; any other exception is
one line and exit status 1, with the traceback only under --verbose.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, List, Mapping, Optional, Sequence

from transforms.native_log import quiet_tensorflow_import

_LOGGER = logging.getLogger("pipeline")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A problem the user can fix (command line, input, credentials); the
    message is one line that says what to do."""


class UsageError(UserError):
    """A problem with the command line or configuration."""


class CredentialsError(UserError):
    """gs:// locations without Google Cloud credentials."""


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless the default is
    None or False (then the help says what happens). A description or
    epilog with line breaks is printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (
                None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class CommandParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting,
    and shows defaults in --help. -h/--help is a plain flag: the command
    prints format_help() itself and returns EXIT_OK."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, add_help=False, **kwargs)
        self.add_argument("-h", "--help", action="store_true",
                          help="show this help and exit")

    def error(self, message: str):
        raise UsageError(message)


def wants_help(argv: Sequence[str]) -> bool:
    """-h/--help anywhere: help wins over every other problem."""
    return any(arg in ("-h", "--help") for arg in argv)


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def whole_number(text: str) -> int:
    """argparse type: a whole number ≥ 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def run_command(body: Callable[[List[str]], int], argv: Sequence[str],
                name: str) -> int:
    """Run a command's body; map its exceptions to one line and a status."""
    argv = list(argv)
    verbose = "--verbose" in argv
    try:
        return body(argv)
    except UserError as exc:
        if verbose:
            _LOGGER.exception("%s failed", name)
        _LOGGER.error("%s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _LOGGER.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # pylint: disable=broad-except
        if verbose:
            raise
        _LOGGER.error("%s failed: %s (run with --verbose for details)", name,
                      " ".join(str(exc).split())[:500])
        return EXIT_FAILED


def run_subcommand(body: Callable[[argparse.Namespace], int],
                   parser: argparse.ArgumentParser, argv: Sequence[str],
                   name: str) -> int:
    """A subcommand: its help (exit 0) or its parsed arguments given to
    `body`, through run_command."""
    def parse_and_run(args: List[str]) -> int:
        if wants_help(args):
            sys.stdout.write(parser.format_help())
            return EXIT_OK
        return body(parser.parse_args(args))
    return run_command(parse_and_run, argv, name)


# ---------------------------------------------------------------------------
# Console
# ---------------------------------------------------------------------------

def configure_console(verbose: bool) -> None:
    """Logging to stderr, quiet libraries, and TensorFlow's native start-up
    lines kept out of the console (in the debug log with --verbose)."""
    # Read by TensorFlow when it loads: INFO and WARNING of its C++ log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if verbose else "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if verbose else "%(levelname)s: %(message)s",
        stream=sys.stderr, force=True)
    handler = logging.getLogger().handlers[0]
    if not verbose:
        # Beam, TF and the GCS client are chatty at INFO.
        for name in ("apache_beam", "tensorflow", "absl", "google",
                     "urllib3", "h5py"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # Local worker processes forward their logs here at WARNING, mostly
        # noise about options and platform features; real failures are ERROR.
        for name in ("apache_beam.runners.portability.fn_api_runner",
                     "apache_beam.runners.portability.local_job_service"):
            logging.getLogger(name).setLevel(logging.ERROR)
        handler.addFilter(_not_a_deprecation_notice)
    # Beam's RunInference logs this on the root logger for every model load
    # when an optional import fails; it is not about this job.
    handler.addFilter(lambda record: not str(record.msg).startswith(
        "Resource module is not available"))
    handler.addFilter(_redact_record)
    quiet_tensorflow_import()


def _not_a_deprecation_notice(record: logging.LogRecord) -> bool:
    """TF / tf_keras API deprecation notices are for library authors."""
    return not (record.name.startswith("tensorflow") and
                "is deprecated and will be removed" in str(record.msg))


def _redact_record(record: logging.LogRecord) -> bool:
    """No signed-URL query strings or user:password@ in any log line."""
    from transforms.errors import redact  # pylint: disable=import-outside-toplevel
    message = record.getMessage()
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, ()
    return True


# ---------------------------------------------------------------------------
# Cloud credentials
# ---------------------------------------------------------------------------

def require_cloud_credentials(locations: Mapping[str, Optional[str]]) -> None:
    """Refuse gs:// locations when Google Cloud credentials are missing.

    Without credentials Beam's GCS client retries the credential lookup
    with back-off and then each request, minutes before any error; this
    check takes one lookup. `locations` maps an option name to its value.
    """
    cloud = [f"{name} {value}" for name, value in locations.items()
             if value and value.lower().startswith("gs://")]
    # The storage client talks to an emulator anonymously.
    if not cloud or os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    import google.auth  # pylint: disable=import-outside-toplevel
    from google.auth.exceptions import DefaultCredentialsError  # pylint: disable=import-outside-toplevel
    auth_log = logging.getLogger("google.auth")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)  # its metadata-server warning: below
    try:
        google.auth.default()
    except DefaultCredentialsError as exc:
        raise CredentialsError(
            f"{cloud[0]} needs Google Cloud credentials and none were found: "
            "run `gcloud auth application-default login`, or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key "
            "file") from exc
    finally:
        auth_log.setLevel(level)
