"""TEST-ONLY shims that let Apache Beam talk to a local GCS emulator.

NEVER put any of this in product code. It is active only in a Python process
that has this directory on ``PYTHONPATH`` *and* ``LABELER_TEST_GCS_SHIMS=1``
in its environment -- both are set by ``tests.gcs_emulator.GcsEmulator.env()``.
Because it is a ``sitecustomize`` module, the ``site`` module imports it at
interpreter start-up in *every* Python process that inherits that
environment, including the SDK-worker subprocesses that Beam's DirectRunner
(``--direct_running_mode multi_processing``) or a portable worker pool
spawns; those processes never run any of our test code otherwise.

Shims
-----
1. ``apache_beam.internal.gcp.auth.get_service_credentials`` -> ``None``.
   Beam's GCS client (``apache_beam.io.gcp.gcsio.create_storage_client``)
   always tries ``google.auth.default()`` first, wrapped in a retry with
   exponential back-off (4 retries, 2+4+8+16 s each fuzzed to [d/2, d]): with
   no credentials on the machine that is 15-30 s (typically ~27 s) in every
   process that creates a GCS client, before it falls back to
   ``storage.Client.create_anonymous_client()``. Returning None sends it
   straight to the anonymous client, which honours STORAGE_EMULATOR_HOST.
   We also mark Beam's credential cache (``_Credentials``) as initialised
   with None, for any caller that goes through the class directly.

2. ``Content-ID`` header on every batch sub-request.
   ``google-cloud-storage`` builds batch sub-requests
   (``google.cloud.storage.batch.MIMEApplicationHTTP``) without a
   ``Content-ID``; fake-gcs-server ignores such parts and answers with a
   non-multipart body, so ``Batch.finish()`` raises
   ``ValueError("Bad response:  not multi-part")``. Beam's file sinks (e.g.
   WriteToParquet) finalize with ``GcsIO.copy_batch`` / ``delete_batch``, so
   every GCS write would fail. Real GCS accepts (and documents) Content-ID,
   so adding it is harmless.

Why lazy (import hook) rather than importing and patching eagerly
-----------------------------------------------------------------
Importing apache_beam costs seconds, and this file runs in every Python
process with the test environment -- including tiny helpers and processes
that never touch Beam. So instead of importing the targets here we install a
``sys.meta_path`` finder that wraps the loader of exactly the two target
modules and applies the patch right after the module body has executed, i.e.
before any other module can ``from ... import`` the function (so even such
by-name imports, e.g. in Beam's Dataflow client, see the patched function).
If a target module was somehow imported already, it is patched immediately.
Correctness check: ``tests/test_gcs_emulator.py`` asserts that no process
(including Beam's worker subprocesses) logs the credential retry, and that the
multi-process pipeline finishes well under the credential back-off.

Any other ``sitecustomize`` further along ``sys.path`` (e.g. one in the base
interpreter) would be shadowed by this file; we locate and execute it so it
still runs, whether or not the shims are enabled.
"""

import importlib.machinery
import os
import sys

_THIS_DIR = os.path.dirname(os.path.abspath(__file__))
_ENABLED = os.environ.get("LABELER_TEST_GCS_SHIMS") == "1"


# --------------------------------------------------------------- the patches
def _patch_beam_auth(mod):
    if getattr(mod, "_labeler_test_shimmed", False):
        return

    def get_service_credentials(pipeline_options):  # noqa: ARG001
        """TEST SHIM (tests/gcs_shims): no credentials -> anonymous client."""
        return None

    mod.get_service_credentials = get_service_credentials
    creds_cls = getattr(mod, "_Credentials", None)
    if creds_cls is not None:
        creds_cls._credentials = None
        creds_cls._credentials_init = True
    mod._labeler_test_shimmed = True


def _patch_storage_batch(mod):
    cls = getattr(mod, "MIMEApplicationHTTP", None)
    if cls is None or getattr(cls, "_labeler_test_shimmed", False):
        return
    import itertools
    import uuid

    original_init = cls.__init__
    counter = itertools.count(1)
    prefix = uuid.uuid4().hex

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if "Content-ID" not in self:
            # Same shape as the Content-IDs the GCS JSON API docs use.
            self["Content-ID"] = f"<{prefix}+{next(counter)}>"

    __init__.__wrapped__ = original_init
    cls.__init__ = __init__
    cls._labeler_test_shimmed = True


_PATCHES = {
    "apache_beam.internal.gcp.auth": _patch_beam_auth,
    "google.cloud.storage.batch": _patch_storage_batch,
}


# ------------------------------------------------------------ the import hook
# Plain (duck-typed) classes: importlib.abc would pull in importlib.resources,
# tempfile, typing, ... (~50 ms) at start-up of every process.
class _PatchingLoader:
    """Delegates to the real loader, then applies the patch."""

    def __init__(self, wrapped, patch):
        self._wrapped = wrapped
        self._patch = patch

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        # Restore the real loader on the module/spec so reloads, pickling-by-
        # reference, importlib.resources etc. see the normal loader.
        module.__loader__ = self._wrapped
        if module.__spec__ is not None:
            module.__spec__.loader = self._wrapped
        self._wrapped.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):  # get_source, get_filename, ...
        return getattr(self._wrapped, name)


class _PostImportPatcher:
    def find_spec(self, fullname, path=None, target=None):
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # cannot wrap (namespace pkg / legacy loader): leave as is
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def _install():
    if any(isinstance(f, _PostImportPatcher) for f in sys.meta_path):
        return
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PostImportPatcher())


# ------------------------------------------- chain to a shadowed sitecustomize
def _chain_shadowed_sitecustomize():
    search = [
        p for p in sys.path
        if os.path.abspath(p or os.curdir) != _THIS_DIR
    ]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", search)
    if spec is None or spec.loader is None:
        return
    if spec.origin and os.path.abspath(spec.origin) == os.path.abspath(__file__):
        return
    from importlib.util import module_from_spec

    module = module_from_spec(spec)
    # Make it importable by a private name; don't replace ourselves.
    sys.modules["_labeler_shadowed_sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # site.py would also just warn
        sys.stderr.write(f"Error in shadowed sitecustomize {spec.origin}: {e!r}\n")


if _ENABLED:
    _install()

_chain_shadowed_sitecustomize()
