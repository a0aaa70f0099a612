"""The labeling job's configuration: one frozen value built once from the
parsed options (pipeline/options.py holds every option and its default).

Field names are the option names, so `config.top_k` is `--top_k`.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from transforms.uris import absolute_uri

if TYPE_CHECKING:
    from transforms.imaging import DecodeSettings


@dataclass(frozen=True)
class JobConfig:
    """Every option of the labeling job, typed; see `python -m pipeline
    --help` for what each one means."""
    # input and output
    input: Optional[str]
    input_manifest: Optional[str]
    input_schemes: Optional[str]
    output: Optional[str]
    overwrite: bool
    resume: bool
    rows_per_file: int
    read_threads: Optional[int]
    # model
    model: str
    embedding_model: Optional[str]
    labels: str
    top_k: int
    max_batch_size: int
    backend: str
    recheck_parity: bool
    inference_threads: Optional[int]
    model_cache_dir: Optional[str]
    create_standin_model: bool
    # decoding
    max_pixels: int
    max_file_bytes: int
    allowed_formats: str
    decode_threads: Optional[int]
    max_bytes_in_flight: Optional[int]
    fast_jpeg: bool
    # command line
    progress_interval: float
    verbose: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "JobConfig":
        """The parsed options → a config. A local --input glob or
        --input_manifest path is made absolute, so the output's `uri`
        column holds absolute paths."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        for name in ("input", "input_manifest"):
            if values[name]:
                values[name] = absolute_uri(values[name])
        return cls(**values)

    @classmethod
    def defaults(cls) -> "JobConfig":
        """Every option at its default (no input or output)."""
        from pipeline.options import build_parser  # pylint: disable=import-outside-toplevel
        return cls.from_args(build_parser().parse_args([]))

    def decode_settings(self) -> "DecodeSettings":
        """What the decode step accepts and how it decodes."""
        from transforms.imaging import (DecodeSettings,  # pylint: disable=import-outside-toplevel
                                        allowed_formats)
        return DecodeSettings(
            max_pixels=self.max_pixels,
            allowed_formats=allowed_formats(self.allowed_formats.split(",")),
            fast_jpeg=self.fast_jpeg)

    def allowed_schemes(self) -> Tuple[str, ...]:
        """Filesystems input URIs may be on: --input_schemes, or else the
        filesystem of --input / --input_manifest itself."""
        if self.input_schemes:
            return tuple(s.strip().lower() for s in
                         self.input_schemes.split(",") if s.strip())
        from transforms.sources import uri_scheme  # pylint: disable=import-outside-toplevel
        source = self.input or self.input_manifest
        return (uri_scheme(source),) if source else ()

    def locations(self) -> Dict[str, Optional[str]]:
        """Every location the job reads or writes, by option name."""
        return {f"--{name}": getattr(self, name) for name in (
            "input", "input_manifest", "output", "model", "embedding_model",
            "labels", "model_cache_dir")}

    def cloud_locations(self) -> Dict[str, Optional[str]]:
        """locations(), plus a stand-in for manifest URIs on gs://."""
        found = self.locations()
        if "gs" in self.allowed_schemes():
            found["manifest URIs on"] = "gs://"
        return found


def default_decode_settings() -> "DecodeSettings":
    """The job's decode settings with its default options."""
    return JobConfig.defaults().decode_settings()
