"""The Beam internals this project's runner adaptations rely on, checked before they are used,
and swapped in only for as long as a pipeline runs.

Beam keeps no compatibility promise for these (private names, module globals, method
signatures of the FnApiRunner). A Beam upgrade that renames or reshapes one would otherwise
leave a patch that silently stops applying, or breaks in the middle of a build. So each is
described, by the module that relies on it, with what it must look like
(:class:`Internal`), and checked against the installed Beam before it is used: :func:`check`
raises :class:`IncompatibleBeam` with a one-line reason (which attribute, or which version)
when one does not fit. :class:`Patches` swaps module and class attributes for the duration of
a ``with`` block and restores them after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

import apache_beam

BEAM_VERSION = "2.77.0"  # the Beam whose internals these descriptions were written against


class IncompatibleBeam(RuntimeError):
    """The installed Beam is not the one a patch was written for; the message is one line."""


Expectation = Callable[[Any], Optional[str]]  # the attribute -> None, or what is wrong with it


def parameters(names: str) -> Expectation:
    """A function (or method, ``self`` included) whose parameters have these names."""
    wanted = names.split()

    def check(function) -> Optional[str]:
        if not callable(function):
            return f"is a {type(function).__name__}, not a function"
        try:
            found = list(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            return "has no signature to check"
        if found != wanted:
            return f"takes ({', '.join(found)}), expected ({', '.join(wanted)})"
        return None

    return check


def a_class(sets: str = "", **methods: str) -> Expectation:
    """A class with these methods (``name="parameter names"``), whose ``__init__`` assigns
    these instance attributes (``sets="_table _windowing"``, read from its source)."""

    def check(cls) -> Optional[str]:
        if not isinstance(cls, type):
            return f"is a {type(cls).__name__}, not a class"
        for name, names in methods.items():
            method = inspect.getattr_static(cls, name, None)
            if method is None:
                return f"has no method {name}"
            problem = parameters(names)(getattr(cls, name))
            if problem:
                return f"{name} {problem}"
        if sets:
            try:
                source = inspect.getsource(cls.__init__)
            except (OSError, TypeError):
                return "has no __init__ source to check"
            for attribute in sets.split():
                if f"self.{attribute} =" not in source and f"self.{attribute}:" not in source:
                    return f"no longer sets self.{attribute}"
        return None

    return check


def an_instance_of(kind: type) -> Expectation:
    def check(value) -> Optional[str]:
        return None if isinstance(value, kind) else \
            f"is a {type(value).__name__}, expected a {kind.__name__}"

    return check


@dataclasses.dataclass(frozen=True)
class Internal:
    """``owner.name`` (a module or a class), as the code that relies on it expects it."""

    owner: Any
    name: str
    expected: Expectation

    @property
    def label(self) -> str:
        owner = getattr(self.owner, "__name__", repr(self.owner))
        return f"{owner.rsplit('.', 1)[-1]}.{self.name}"  # execution.GroupingBuffer

    def problem(self) -> Optional[str]:
        if not hasattr(self.owner, self.name):
            return f"{self.label} is gone"
        found = self.expected(getattr(self.owner, self.name))
        return f"{self.label} {found}" if found else None


def check(internals: Sequence[Internal], written_for: str = BEAM_VERSION,
          by: str = "runners/local.py") -> None:
    """Raise IncompatibleBeam (one line) unless Beam is the version ``by`` was written for
    and every internal it relies on is there, shaped as described."""
    installed = apache_beam.__version__
    if installed != written_for:
        raise IncompatibleBeam(
            f"{by} adapts Beam {written_for}, and this is Beam {installed}: check its "
            f"patches against the new version (runners/beam_internals.py) before using it")
    for internal in internals:
        problem = internal.problem()
        if problem:
            raise IncompatibleBeam(f"{by} cannot patch Beam {installed}: {problem}")


@dataclasses.dataclass(frozen=True)
class Patch:
    """While patched, ``owner.name`` is ``replacement``."""

    owner: Any
    name: str
    replacement: Any


class Patches:
    """A set of patches applied while any ``with patches.applied():`` block runs and
    restored, every attribute to what it was, when the last such block ends (on error too).
    Blocks may overlap (two pipelines in two threads): the first applies, the last restores.
    While applied, the patches are process-wide, as module globals are."""

    def __init__(self, patches: Sequence[Patch]):
        self.patches = tuple(patches)
        self._lock = threading.Lock()
        self._users = 0
        self._originals: list = []

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._apply()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._restore()

    def _apply(self) -> None:
        self._originals = []
        try:
            for patch in self.patches:
                # Its own attribute as stored (a staticmethod stays one), or _INHERITED.
                self._originals.append(vars(patch.owner).get(patch.name, _INHERITED))
                setattr(patch.owner, patch.name, patch.replacement)
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        for patch, original in reversed(list(zip(self.patches, self._originals))):
            if original is _INHERITED:
                delattr(patch.owner, patch.name)
            else:
                setattr(patch.owner, patch.name, original)
        self._originals = []


_INHERITED = object()  # a class attribute that came from a base class, not the class's own
