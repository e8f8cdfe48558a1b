"""Beam's gcsio against a GCS emulator: anonymous credentials, which Beam has no option for.

Beam's ``apache_beam.internal.gcp.auth._Credentials`` finds credentials once per process
(``google.auth.default``, retried for ~17 s before it gives up and goes anonymous) and keeps
them in class attributes. Against an emulator there are none to find: this sets that cache
to what Beam would settle on (no credentials) straight away, for the rest of the process.
Used by the build (:func:`use_anonymous_beam_credentials_with_emulator`, when
``STORAGE_EMULATOR_HOST`` is set) and by the tests' emulator, so that the private names
live in one place and are checked first.
"""

from __future__ import annotations

import threading

from runners.beam_internals import Internal, an_instance_of, check, parameters


def use_anonymous_beam_credentials_with_emulator() -> None:
    """Against an emulator, make Beam's gcsio anonymous too. Beam has no option for it and
    would otherwise retry google.auth.default for ~17 s before going anonymous itself."""
    from catalog_index.storage import using_emulator

    if using_emulator():
        use_anonymous_beam_credentials()


def use_anonymous_beam_credentials() -> None:
    """From now on, Beam's gcsio connects without credentials (IncompatibleBeam, one line,
    if Beam's credential cache is not what this was written for)."""
    from apache_beam.internal.gcp import auth

    check([Internal(auth, "_Credentials", an_instance_of(type))], by=_BY)
    cache = auth._Credentials
    check([Internal(cache, "_credentials_lock", an_instance_of(type(threading.Lock()))),
           Internal(cache, "_credentials_init", an_instance_of(bool)),
           Internal(cache, "_credentials", lambda credentials: None),
           Internal(cache, "get_service_credentials", parameters("pipeline_options"))],
          by=_BY)
    with cache._credentials_lock:
        cache._credentials = None
        cache._credentials_init = True


_BY = "runners/beam_gcs.py"
