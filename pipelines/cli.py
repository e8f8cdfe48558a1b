"""``catalog-index``: one command for the build and the query side.

    catalog-index build --catalog SRC --output ROOT [...]   (see: catalog-index build --help)
"""

from __future__ import annotations

import sys

COMMANDS = ("build",)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command == "build":
        from pipelines.build_index import run

        sys.exit(run(rest))


if __name__ == "__main__":
    main()
