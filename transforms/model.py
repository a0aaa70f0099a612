"""Loading a classifier in this process by backend name: kept for tools that
import it from here; the backends and their registry live in
transforms/backends/."""
from transforms.backends import (ImageClassifier, ModelLoadError,  # noqa: F401
                                 load_classifier)
from transforms.backends.handles import is_url, resolve_handle  # noqa: F401
