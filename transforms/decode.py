"""Step 2 on Beam: batches of ImageBytes → DecodedBatch, or error records.

The image code is in transforms/imaging (no Beam); this module holds only
what Beam needs around it: the DecodedBatch coder, the DoFn and the
PTransform.
"""
from __future__ import annotations

import pickle
from typing import List, Optional, Sequence, Union

import apache_beam as beam

from transforms.errors import ERRORS_TAG, ErrorRecord
from transforms.imaging import (DECODE_THREAD_NICENESS, DecodedBatch,
                                DecodeSettings, ImageBytes, decode_batch,
                                warm_up)
from transforms.threaded import ThreadedDoFn, threaded_pardo


class DecodedBatchCoder(beam.coders.Coder):
    """Beam's coder for DecodedBatch: pickles it, but estimates its size
    without doing so. Beam samples the size of elements on every output;
    the default estimate pickled whole 7 MB batches on the bundle thread
    just to measure them (~2 ms each, ~30 per 5,000 images)."""

    def encode(self, value: DecodedBatch) -> bytes:
        return pickle.dumps(tuple(value), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> DecodedBatch:
        return DecodedBatch(*pickle.loads(encoded))

    def estimate_size(self, value: DecodedBatch) -> int:
        pixels = 0 if value.pixels is None else value.pixels.nbytes
        return (pixels + value.widths.nbytes + value.heights.nbytes +
                sum(len(uri) + len(fmt) + 16
                    for uri, fmt in zip(value.uris, value.formats)))

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return DecodedBatch

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


beam.coders.registry.register_coder(DecodedBatch, DecodedBatchCoder)


class DecodeImages(ThreadedDoFn):
    """Batch of ImageBytes → one DecodedBatch, and an ErrorRecord (stage
    "decode") on ERRORS_TAG per file that does not decode. Batches decode
    on `threads` threads: libjpeg-turbo and Pillow release the GIL, so they
    decode while the bundle thread classifies."""

    def __init__(self, settings: DecodeSettings, threads: int = 1,
                 max_in_flight: int = 0):
        super().__init__(threads, max_in_flight,
                         niceness=DECODE_THREAD_NICENESS)
        self._settings = settings

    def setup(self):
        super().setup()
        warm_up()

    def work(self, element: Sequence[ImageBytes]
             ) -> List[Union[DecodedBatch, beam.pvalue.TaggedOutput]]:
        decoded, errors = decode_batch(element, self._settings)
        outputs: List[Union[DecodedBatch, beam.pvalue.TaggedOutput]] = [
            beam.pvalue.TaggedOutput(ERRORS_TAG, e) for e in errors]
        if decoded is not None:
            outputs.append(decoded)
        return outputs


class DecodeAndPreprocess(beam.PTransform):
    """PCollection[ImageBytes] → {"images": DecodedBatch, ERRORS_TAG:
    ErrorRecord}.

    Images are batched here, before decoding (Beam's BatchElements, between
    `min_batch_size` and `max_batch_size`; with min_batch_size None, every
    batch but the last has max_batch_size images), so that everything
    downstream (the decode hand-off, the model call, rows, Parquet) works a
    batch at a time instead of paying Python and Beam overhead per image.
    Each batch is decoded into the array the model takes, with no copy in
    between.
    """

    def __init__(self, settings: DecodeSettings, threads: int = 1, *,
                 min_batch_size: Optional[int] = None,
                 max_batch_size: int = 64, batches_in_flight: int = 0):
        super().__init__()
        self._settings = settings
        self._threads = threads
        self._batch_sizes = (min_batch_size or max_batch_size, max_batch_size)
        self._batches_in_flight = batches_in_flight

    def expand(self, images):
        results = (
            images
            | "Batch" >> beam.BatchElements(
                min_batch_size=self._batch_sizes[0],
                max_batch_size=self._batch_sizes[1])
            | "Decode" >> threaded_pardo(DecodeImages(
                self._settings, self._threads, self._batches_in_flight)
            ).with_output_types(DecodedBatch, **{ERRORS_TAG: ErrorRecord})
            .with_outputs(ERRORS_TAG, main="images"))
        return {"images": results.images, ERRORS_TAG: results[ERRORS_TAG]}
