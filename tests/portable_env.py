"""Helpers for tests/test_portable_runner.py: the package as Dataflow's
`--setup_file` would build it, a clean virtualenv with only that package
(and its dependencies from the package index) installed, and Beam's job
service + external worker pool running from that virtualenv.

The virtualenv is cached across runs under
``$IMAGE_LABELER_TEST_VENVS`` (default ``~/.cache/image-labeler-test-venvs``),
keyed by the package's declared dependencies (``requires.txt`` of the sdist)
and the Python version; when only the package's own code changed, the package
is reinstalled in it with ``--no-deps``. The first build downloads
TensorFlow, Beam and friends (~1 GB installed) and takes minutes.

Run ``python -m tests.portable_env`` to build or refresh the cached
virtualenv by hand (prints its path).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = Path(os.environ.get("IMAGE_LABELER_TEST_VENVS") or
                  Path.home() / ".cache" / "image-labeler-test-venvs")
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
BOOT_SCRIPT = Path(__file__).with_name("portable_boot.py")

# Never copied into the build tree: VCS, virtualenvs, caches, build output.
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", ".cache", "__pycache__", "*.pyc", "build",
    "dist", "*.egg-info", ".pytest_cache", "test-artifacts", "out",
    "demo-out", "node_modules")
_INSTALL_TIMEOUT_S = 3600
_KEEP_VENVS = 2  # per Python version: the current one and one more


class EnvError(RuntimeError):
    """Building the package or the virtualenv failed; message says where
    the log is."""


def _run_logged(cmd: Sequence[str], log_path: Path, timeout: float,
                cwd: Optional[Path] = None,
                env: Optional[Dict[str, str]] = None) -> None:
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        log.flush()
        try:
            proc = subprocess.run([str(c) for c in cmd], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EnvError(f"{cmd[:4]} timed out after {timeout}s; log: "
                           f"{log_path}") from exc
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise EnvError(f"{' '.join(map(str, cmd[:5]))} failed "
                       f"(exit {proc.returncode}); log {log_path}:\n{tail}")


# --- the package ---------------------------------------------------------

def copy_project(dest: Path) -> Path:
    """A copy of the project tree (sources only) at `dest`; returns dest.

    Building from a copy keeps the shared work tree free of build output
    (`setup.py sdist` writes *.egg-info next to setup.py).
    """
    shutil.copytree(PROJECT_ROOT, dest, ignore=_COPY_IGNORE)
    return dest


def build_sdist(setup_file: Path, out_dir: Path) -> Path:
    """The sdist exactly as Beam's stager builds it for `--setup_file`
    (apache_beam.runners.portability.stager.Stager._build_setup_package:
    `python -m build --sdist --no-isolation`, or `python setup.py sdist`
    where `build` is not installed)."""
    from apache_beam.runners.portability.stager import Stager  # pylint: disable=import-outside-toplevel
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(Stager._build_setup_package(  # pylint: disable=protected-access
        str(setup_file), str(out_dir)))


def sdist_facts(sdist: Path) -> Dict[str, object]:
    """Content hash (file names + bytes, not tar metadata), the modules it
    ships and its requires.txt."""
    digest = hashlib.sha256()
    modules: List[str] = []
    requires = ""
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()),
                         key=lambda m: m.name)
        for member in members:
            data = tar.extractfile(member).read()
            relative = member.name.split("/", 1)[1]
            digest.update(relative.encode() + b"\0" + data + b"\0")
            if relative.endswith(".py") and "/" in relative and \
                    not relative.startswith("tests/"):
                modules.append(relative)
            if relative.endswith(".egg-info/requires.txt"):
                # install_requires only: extras follow in [sections]
                requires = data.decode().split("\n[", 1)[0]
    return {"sha256": digest.hexdigest(), "modules": modules,
            "requires": requires}


# --- the cached virtualenv ----------------------------------------------

@contextlib.contextmanager
def _flock(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.time() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise EnvError(f"{path} stayed locked for {timeout}s "
                                   "(another test run using the venv?)")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class WorkerVenv:
    """A virtualenv holding only the built package and its dependencies."""

    def __init__(self, path: Path, built_s: Optional[float],
                 reinstalled_s: Optional[float]):
        self.path = path
        self.python = path / "bin" / "python"
        self.bin = path / "bin"
        #: seconds to create it in this run (None: reused from the cache)
        self.built_s = built_s
        #: seconds to reinstall the changed package (None: unchanged)
        self.reinstalled_s = reinstalled_s

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Process environment for commands run from this venv: its bin/
        first on PATH (the worker pool starts workers as plain `python`),
        no PYTHONPATH / PYTHONHOME / VIRTUAL_ENV leaking in from the
        project's environment."""
        env = dict(os.environ if base is None else base)
        for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                     "PYTHONUSERBASE", "PYTHONSAFEPATH"):
            env.pop(name, None)
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = os.pathsep.join(
            [str(self.bin)] + [p for p in env.get("PATH", "").split(os.pathsep)
                               if p and not p.startswith(str(PROJECT_ROOT))])
        env["PYTHONNOUSERSITE"] = "1"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return env


def venv_key(requires: str) -> str:
    text = f"{sys.version}\n{sys.platform}\n{requires}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prune(current: Path) -> None:
    """Remove older cached venvs of this Python version (not locked)."""
    venvs = sorted((p for p in CACHE_ROOT.glob(f"{PY_TAG}-*")
                    if p.is_dir() and p != current),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in venvs[_KEEP_VENVS - 1:]:
        lock = old.with_name(old.name + ".lock")
        try:
            with _flock(lock, timeout=0):
                shutil.rmtree(old, ignore_errors=True)
        except EnvError:
            continue
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def cached_venv(sdist: Path, lock_timeout: float = 3600
                ) -> Iterator[WorkerVenv]:
    """The cached venv for this sdist, locked for the caller's use.

    Created with the base interpreter of this Python (not the project's
    venv, never --system-site-packages) and `pip install <sdist>` with the
    normal package index, exactly what a worker does with the package.
    """
    facts = sdist_facts(sdist)
    key = venv_key(str(facts["requires"]))
    path = CACHE_ROOT / f"{PY_TAG}-{key}"
    with _flock(path.with_name(path.name + ".lock"), lock_timeout):
        built_s = reinstalled_s = None
        ready = path / "READY.json"
        if not ready.exists():
            shutil.rmtree(path, ignore_errors=True)
            log = CACHE_ROOT / f"{path.name}.build.log"
            log.unlink(missing_ok=True)
            started = time.time()
            base_python = getattr(sys, "_base_executable", None) or \
                sys.executable
            _run_logged([base_python, "-m", "venv", path], log, 300)
            python = path / "bin" / "python"
            env = WorkerVenv(path, None, None).env()
            # setuptools: the workers' boot builds the staged sdist without
            # build isolation (venvs of Python >= 3.12 come without it).
            _run_logged([python, "-m", "pip", "install", "--upgrade", "pip",
                         "setuptools"], log, 600, cwd=CACHE_ROOT, env=env)
            _run_logged([python, "-m", "pip", "install", sdist], log,
                        _INSTALL_TIMEOUT_S, cwd=CACHE_ROOT, env=env)
            built_s = time.time() - started
            (path / "PACKAGE.json").write_text(json.dumps(
                {"sha256": facts["sha256"], "sdist": sdist.name}))
            ready.write_text(json.dumps(
                {"requires": facts["requires"], "python": sys.version,
                 "built_s": round(built_s, 1),
                 "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
            _prune(path)
        installed = json.loads((path / "PACKAGE.json").read_text())
        if installed["sha256"] != facts["sha256"]:
            log = CACHE_ROOT / f"{path.name}.reinstall.log"
            log.unlink(missing_ok=True)
            started = time.time()
            venv = WorkerVenv(path, None, None)
            _run_logged([venv.python, "-m", "pip", "install", "--no-deps",
                         "--force-reinstall", sdist], log, 900,
                        cwd=CACHE_ROOT, env=venv.env())
            reinstalled_s = time.time() - started
            (path / "PACKAGE.json").write_text(json.dumps(
                {"sha256": facts["sha256"], "sdist": sdist.name}))
        os.utime(path)  # most recently used: kept by _prune
        yield WorkerVenv(path, built_s, reinstalled_s)


# --- processes -----------------------------------------------------------

class Service:
    """A process in its own process group with its output in a log file."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: Path,
                 cwd: Path, env: Dict[str, str]):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=cwd, env=env,
            start_new_session=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Wait until the log matches `pattern`; fail if the process ends."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            match = re.search(pattern, self.log_text())
            if match:
                return match
            if self.proc.poll() is not None:
                raise EnvError(f"{self.name} exited with {self.proc.returncode}"
                               f":\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        raise EnvError(f"{self.name}: no {pattern!r} in {timeout}s:\n"
                       f"{self.log_text()[-3000:]}")

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the whole process group (the service and anything it
        started), SIGKILL after `grace` seconds."""
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)  # stragglers in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self._log.close()


def free_port() -> int:
    """A TCP port nothing listens on right now (the caller retries if
    another process takes it first)."""
    with contextlib.closing(socket.socket(socket.AF_INET,
                                          socket.SOCK_STREAM)) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def wait_for_port(service: Service, port: int, timeout: float) -> bool:
    """True once localhost:port accepts connections; False if the service
    exited first (e.g. the port was taken)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if service.proc.poll() is not None:
            return False
        with contextlib.closing(socket.socket(socket.AF_INET,
                                              socket.SOCK_STREAM)) as sock:
            sock.settimeout(1)
            if sock.connect_ex(("localhost", port)) == 0:
                return True
        time.sleep(0.2)
    raise EnvError(f"{service.name} did not listen on port {port} in "
                   f"{timeout}s:\n{service.log_text()[-3000:]}")


def fqdn_is_loopback() -> bool:
    """Whether this host's FQDN resolves to a loopback address.

    Beam's job service tells external workers to call it back at
    socket.getfqdn() (ExternalWorkerHandler.host_from_worker); the test must
    only ever talk to loopback addresses.
    """
    try:
        address = socket.gethostbyname(socket.getfqdn())
    except OSError:
        return False
    return address.startswith("127.")


# `python -m apache_beam.runners.portability.local_job_service_main`, with
# the workers' call-back host pinned to localhost (used only where the FQDN
# does not resolve to loopback).
JOB_SERVICE_LOCALHOST_CODE = (
    "import logging, signal, socket, sys\n"
    "socket.getfqdn = lambda name='': 'localhost'\n"
    "from apache_beam.runners.portability import local_job_service_main as m\n"
    "signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))\n"
    "logging.basicConfig()\n"
    "logging.getLogger().setLevel(logging.INFO)\n"
    "m.run(sys.argv[1:])\n")


def job_service_command(python: Path) -> List[str]:
    if fqdn_is_loopback():
        return [str(python), "-m",
                "apache_beam.runners.portability.local_job_service_main"]
    return [str(python), "-c", JOB_SERVICE_LOCALHOST_CODE]


def main() -> int:
    import tempfile  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as tmp:
        tree = copy_project(Path(tmp) / "src")
        sdist = build_sdist(tree / "setup.py", Path(tmp) / "dist")
        with cached_venv(sdist) as venv:
            print(venv.path)
            print(f"built in {venv.built_s} s" if venv.built_s is not None
                  else "reused" + (f", package reinstalled in "
                                   f"{venv.reinstalled_s:.0f} s"
                                   if venv.reinstalled_s else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
