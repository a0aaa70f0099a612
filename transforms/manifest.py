"""The finished output's manifest, `<output>/_SUCCESS.json`: the authority on
which files hold the job's rows.

The job writes it last, after every chunk is committed and every file left
by a failed or duplicate attempt is deleted. It lists each committed file by
name and carries the job's own counts (labels, errors by type, top labels),
so readers and the summary never list or re-read the whole output.

Readers (report, evaluate, --resume, the summary, the documented queries)
read the files it lists. Without it the output is unfinished: a run is still
going, or was killed and can be completed with --resume.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from apache_beam.io.filesystems import FileSystems

SUCCESS_FILE = "_SUCCESS.json"


class OutputNotFinished(Exception):
    """The output has no manifest: its job is running, failed or was killed."""


def output_path(output: str, name: str) -> str:
    """`<output>/<name>` on any Beam filesystem."""
    return FileSystems.join(output.rstrip("/"), name)


def read_manifest(output: str) -> Optional[Dict[str, Any]]:
    """The parsed `_SUCCESS.json` of `output`, or None if there is none."""
    path = output_path(output, SUCCESS_FILE)
    try:
        with FileSystems.open(path) as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (FileNotFoundError, OSError) as exc:
        if FileSystems.exists(path):
            raise OSError(f"cannot read {path}: {exc}") from exc
        return None


def write_manifest(output: str, manifest: Dict[str, Any]) -> str:
    """Write `_SUCCESS.json` (a single object write: atomic on object
    storage, and a rename-free overwrite of one small file locally)."""
    path = output_path(output, SUCCESS_FILE)
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(manifest, indent=1, sort_keys=True)
                     .encode("utf-8"))
    return path


def committed_files(output: str, prefix: str,
                    manifest: Optional[Dict[str, Any]] = None) -> List[str]:
    """Full paths of the finished output's files of one kind ("labels" or
    "errors"), as its manifest lists them. Raises OutputNotFinished when
    there is no manifest."""
    manifest = manifest if manifest is not None else read_manifest(output)
    if manifest is None:
        raise OutputNotFinished(
            f"{output} has no {SUCCESS_FILE}: its job has not finished (still "
            "running, or killed: run it again with --resume to complete it)")
    return [output_path(output, name) for name in manifest["files"]
            if name.startswith(f"{prefix}-")]
