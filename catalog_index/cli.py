"""What every ``catalog-index`` command shares at the command line: a bad flag is one line
on stderr and exit status 2, never argparse's usage block or a traceback."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """A bad flag or input: reported as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors raise UsageError (the command prints it as one
    line), and that takes no flag for a prefix of another (Beam's --project would
    otherwise be refused as ambiguous with --projection-from)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message)


# Argument types: a bad value is named in the one-line error ("--workers: 0 must be at
# least 1"), the same way in every command.

def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0")
    return value
