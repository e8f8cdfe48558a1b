"""Runner adaptations: where a Beam runner has a gap, the fix lives here, in one module per
runner, named with the Beam version it adapts (local.py: the FnApiRunner, with spill.py, its
shuffle on disk; dask.py); registry.py knows runners by name. Nothing else in the project
knows a runner.

Every Beam internal the project touches is touched here, and checked first against the
installed Beam (beam_internals.py; fn_api_internals.py lists the FnApiRunner's), including
the one that is not a runner's: beam_gcs.py, anonymous credentials for gcsio against the
GCS emulator."""
