"""Module handles (transforms/backends/handles.py): a tfhub.dev URL that
tensorflow_hub has already downloaded resolves to the directory
tensorflow_hub itself returns, without importing TensorFlow; a launch with
that URL and a gated conversion imports no TensorFlow at all."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import LABELS_FILE, PHOTOS_DIR, PROJECT_ROOT, run_cli
from tests.test_backends import _imported_tensorflow
from transforms.backends.handles import downloaded_hub_module

URL = "https://tfhub.dev/google/imagenet/mobilenet_v2_050_96/classification/2"


@pytest.fixture
def hub_cache(standin_tf1, tmp_path):
    """tensorflow_hub's cache as a finished download of URL leaves it (the
    stand-in in place of the real module, which cannot be downloaded
    here)."""
    cache = tmp_path / "tfhub"
    shutil.copytree(standin_tf1,
                    cache / hashlib.sha1(URL.encode("utf8")).hexdigest())
    return cache


def _python(code: str, env) -> str:
    return subprocess.run(
        [sys.executable, "-c", code, URL], cwd=PROJECT_ROOT, check=True,
        capture_output=True, text=True, env={**os.environ, **env}).stdout


@pytest.mark.slow
def test_a_downloaded_url_resolves_as_tensorflow_hub_does(hub_cache):
    env = {"TFHUB_CACHE_DIR": str(hub_cache)}
    ours = _python("import sys\n"
                   "from transforms.backends.handles import resolve_handle\n"
                   "print(resolve_handle(sys.argv[1]))\n"
                   "print('tensorflow' in sys.modules)\n", env).split()
    theirs = _python("import sys, tensorflow_hub as hub\n"
                     "print(hub.resolve(sys.argv[1]))\n", env).split()
    assert ours == [theirs[-1], "False"]


def test_not_downloaded_or_another_load_format_is_left_to_tensorflow_hub(
        hub_cache, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(hub_cache))
    assert downloaded_hub_module(URL) is not None
    assert downloaded_hub_module(URL + "x") is None   # never downloaded
    for load_format in ("UNCOMPRESSED", "bogus"):
        monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", load_format)
        assert downloaded_hub_module(URL) is None
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "COMPRESSED")
    module_dir = downloaded_hub_module(URL)
    for name in os.listdir(module_dir):  # an empty directory is no download
        path = os.path.join(module_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    assert downloaded_hub_module(URL) is None


@pytest.mark.slow
def test_launch_with_a_downloaded_url_imports_no_tensorflow(
        standin_tf1, hub_cache, tmp_path):
    common = ["--input", str(PHOTOS_DIR / "n01*.JPEG"), "--labels",
              str(LABELS_FILE), "--model_cache_dir", str(tmp_path / "cache")]
    # Converts and gates the module once (same content, local handle).
    first = run_cli([*common, "--output", str(tmp_path / "out1"),
                     "--model", standin_tf1])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli([*common, "--output", str(tmp_path / "out2"),
                      "--model", URL],
                     env={"TFHUB_CACHE_DIR": str(hub_cache),
                          "PYTHONPROFILEIMPORTTIME": "1"})
    assert second.returncode == 0, second.stderr[-3000:]
    assert "passed the parity gate against tf on" in second.stderr
    assert "STAND-IN MODEL" in second.stderr  # what it is, said out loud
    assert not _imported_tensorflow(second.stderr)
