"""URIs → fixed chunks (transforms/label_chunks.py: ChunkUris) on Beam's
local runner: every URI in exactly one chunk, repeats and done URIs left
out, and each bundle's URIs grouped by chunk before the shuffle."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.label_chunks import (ChunkUris, _GroupByChunkInBundle,
                                     chunk_count, chunk_of)

URIS = [f"gs://bucket/images/{i:04d}.jpg" for i in range(100)]


def expected_chunks(uris, done, rows_per_file):
    chunks = chunk_count(len(uris), rows_per_file)
    expected = {}
    for uri in sorted(set(uris) - set(done)):
        expected.setdefault(chunk_of(uri, chunks), []).append(uri)
    return sorted(expected.items())


def test_each_uri_once_in_its_chunk_without_repeats_or_done_uris():
    inputs = URIS + URIS[:30]         # repeated URIs, as a manifest may hold
    done = URIS[10:25]                # already committed (--resume)
    with TestPipeline() as pipeline:
        chunks = ((pipeline | "Uris" >> beam.Create(inputs, reshuffle=True))
                  | ChunkUris(10, pipeline | "Done" >> beam.Create(done),
                              max_buffered=7))  # several flushes per bundle
        assert_that(chunks, equal_to(expected_chunks(inputs, done, 10)))


def test_a_bundle_sends_one_group_per_chunk_to_the_shuffle():
    group = _GroupByChunkInBundle(rows_per_file=10, max_buffered=1000)
    group.start_bundle()
    sent = [g for uri in URIS for g in group.process(uri, len(URIS))]
    sent += [windowed.value for windowed in group.finish_bundle()]
    assert len(sent) == chunk_count(len(URIS), 10)  # not one per URI
    assert sorted(uri for _, uris in sent for uri in uris) == URIS
    assert all(chunk_of(uri, 10) == chunk for chunk, uris in sent
               for uri in uris)


def test_a_full_buffer_is_flushed_within_the_bundle():
    group = _GroupByChunkInBundle(rows_per_file=10, max_buffered=25)
    group.start_bundle()
    flushed = [len(list(group.process(uri, len(URIS)))) for uri in URIS]
    assert [i for i, n in enumerate(flushed) if n] == [24, 49, 74, 99]
    assert list(group.finish_bundle()) == []  # nothing left behind
