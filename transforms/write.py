"""Step 4b: rows → Parquet shards under the output prefix.

Beam's file sinks write each shard to a temporary directory and rename it
into place when the whole write finalizes, so a partial file never appears
under a final `labels-*` / `errors-*` name.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.errors import METRICS_NAMESPACE, ErrorRecord
from transforms.schema import (ERRORS_PREFIX, ERRORS_SCHEMA, LABELS_PREFIX,
                               LABELS_SCHEMA, PARQUET_SUFFIX, error_row)


def output_path(output: str, prefix: str) -> str:
    """`<output>/<prefix>`: the shard-name prefix under an output directory."""
    return FileSystems.join(output.rstrip("/"), prefix)


class WriteLabels(beam.PTransform):
    """Label rows (dicts of LABELS_SCHEMA) → <output>/labels-SSSSS-of-NNNNN.parquet."""

    def __init__(self, output: str, num_shards: int = 0):
        super().__init__()
        self._output = output
        self._num_shards = num_shards

    def expand(self, rows):
        return rows | "WriteLabelsParquet" >> beam.io.WriteToParquet(
            output_path(self._output, LABELS_PREFIX), schema=LABELS_SCHEMA,
            file_name_suffix=PARQUET_SUFFIX, num_shards=self._num_shards,
            codec="snappy")


def _counted_error_row(record: ErrorRecord) -> dict:
    """Count an error (`images_failed_<stage>`) as it is written: the one
    place every error passes, whichever step and thread produced it."""
    Metrics.counter(METRICS_NAMESPACE, f"images_failed_{record.stage}").inc()
    return error_row(record)


class WriteErrors(beam.PTransform):
    """ErrorRecords → <output>/errors-SSSSS-of-NNNNN.parquet (written even
    when empty, so a reader can tell "no errors" from "not written")."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, errors):
        return (errors
                | "ToErrorRow" >> beam.Map(_counted_error_row)
                | "WriteErrorsParquet" >> beam.io.WriteToParquet(
                    output_path(self._output, ERRORS_PREFIX),
                    schema=ERRORS_SCHEMA, file_name_suffix=PARQUET_SUFFIX,
                    num_shards=1, codec="snappy"))
