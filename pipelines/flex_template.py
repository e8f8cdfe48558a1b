"""The Flex Template's entry point: the build, submitted without waiting for the job.

A Flex Template launcher is a short-lived container: it must exit once Dataflow has the job
(``--no-wait``). The job itself publishes LATEST, or fails when the quality gate does, and
whoever launched the template watches the job (the Airflow operator waits for it).
"""

from __future__ import annotations

import logging
import sys

from pipelines.build_index import run

NO_WAIT = "--no-wait"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run(list(argv) + [NO_WAIT])


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
