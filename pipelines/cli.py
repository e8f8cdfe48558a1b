"""``catalog-index``: one command for the build and the query side (:data:`USAGE`)."""

from __future__ import annotations

import sys

USAGE = """\
catalog-index: one command for the build and the query side.

  catalog-index build --catalog SRC --output ROOT [...]      (see: catalog-index build --help)
  catalog-index query --index ROOT (--image PATH | --item-id ID | --text "...") [-k 10] [--json]
  catalog-index rollback --index ROOT --version ID          (point LATEST at an earlier version)
  catalog-index prune --index ROOT --keep N [--dry-run]     (delete old versions, safely)
  catalog-index serve --index ROOT [--port 8080] [--workers N]  (HTTP API and search page)
"""


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command == "build" and {"-h", "--help"} & set(rest):
        from pipelines.options import build_parser  # no Beam, no TensorFlow to import

        build_parser().print_help()
        sys.exit(0)
    if command == "build":
        from pipelines.build_index import run
    elif command == "query":
        from search.cli import run
    elif command == "rollback":
        from pipelines.rollback import run
    elif command == "prune":
        from pipelines.prune import run
    elif command == "serve":
        from serve.cli import run
    elif command in ("-h", "--help"):
        print(USAGE.strip())
        sys.exit(0)
    else:
        print(USAGE.strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(run(rest))


if __name__ == "__main__":
    main()
