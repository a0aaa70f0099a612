"""Step 1, URI → bytes (transforms/read.py), on local files: plain paths
and file:// URIs give the file's exact bytes, nothing is inflated, the size
limit holds, and answers that will not change are not retried."""
from __future__ import annotations

import gzip
import os
import time

import pytest

from tests.conftest import photo_paths
from transforms.errors import ImageError
from transforms.read import read_file_bytes


@pytest.fixture
def photo():
    return photo_paths()[0]


def test_plain_path_and_file_uri_give_the_same_bytes(photo):
    data = open(photo, "rb").read()
    assert read_file_bytes(str(photo), 1 << 26) == data
    assert read_file_bytes(f"file://{os.path.abspath(photo)}",
                           1 << 26) == data


def test_a_file_named_gz_is_not_inflated(tmp_path, photo):
    packed = gzip.compress(open(photo, "rb").read())
    named = tmp_path / "image.jpg.gz"
    named.write_bytes(packed)
    assert read_file_bytes(str(named), 1 << 26) == packed


def test_size_limit(photo):
    size = os.path.getsize(photo)
    assert len(read_file_bytes(str(photo), size)) == size
    with pytest.raises(ImageError) as raised:
        read_file_bytes(str(photo), size - 1)
    assert raised.value.error_type == "FileTooLarge"


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_permanent_answers_are_not_retried(tmp_path, make, monkeypatch):
    path = tmp_path / "x.jpg"
    if make == "directory":
        path.mkdir()
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)  # the retry's back-off
    with pytest.raises(OSError):
        read_file_bytes(str(path), 1 << 26)
    assert waits == []
