"""Checks that the library code modelmon relies on beyond a library's public API is the code
it was written against.

A module that touches a library's internals lists, in its tests, every piece of library code
it relies on as a :class:`Pinned`: where it is, the digest of its source (or of what a probe
makes with it, for code with no Python source), and what to re-check when it changes.
:func:`changed` says which differ in the installed libraries, :func:`unpinned` which of those
libraries ``pyproject.toml`` does not pin to exactly the installed version, and
:func:`private_names` which private names a module uses, so that a test can see each is
vouched for by a pin.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
import pkgutil
import re
import textwrap
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@dataclass(frozen=True)
class Pinned:
    """One piece of library code relied on.

    Parameters
    ----------
    target
        ``module:qualname``, as :func:`pkgutil.resolve_name` reads it.
    digest
        The first 16 hex digits of the SHA-256 of its source, or of ``probe()``.
    recheck
        What in modelmon relies on it, to re-check when it changes.
    touches
        The private names of modelmon's module that rely on it.
    probe
        For code with no Python source (a compiled extension): bytes made with it, such as
        an encoding it writes.
    """

    target: str
    digest: str
    recheck: str
    touches: tuple[str, ...] = ()
    probe: Callable[[], bytes] | None = None

    def current(self) -> str:
        if self.probe is not None:
            data = self.probe()
        else:
            data = inspect.getsource(pkgutil.resolve_name(self.target)).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    @property
    def distribution(self) -> str:
        (name,) = importlib.metadata.packages_distributions()[self.target.split(".")[0]]
        return name


def changed(pins: Iterable[Pinned]) -> list[str]:
    """One message per pin whose code differs in the installed libraries."""
    messages = []
    for pin in pins:
        digest = pin.current()
        if digest != pin.digest:
            dist = pin.distribution
            messages.append(
                f"{pin.target} is not the code recorded (digest {digest}, recorded "
                f"{pin.digest}) in the installed {dist} {importlib.metadata.version(dist)}: "
                f"{pin.recheck}. Then record its new digest."
            )
    return messages


def unpinned(pins: Iterable[Pinned]) -> list[str]:
    """The pins' libraries that ``pyproject.toml`` does not pin to the installed version."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    wanted = {f"{d}=={importlib.metadata.version(d)}" for d in {p.distribution for p in pins}}
    return sorted(wanted - {re.sub(r"\s", "", d) for d in dependencies})


def private_names(module: ModuleType) -> set[str]:
    """Every private name ``module`` uses as an attribute (``x._name``) or defines as a
    method (``def _name`` in a class body), outside the bodies of its classes that derive
    from nothing (whose private names are their own)."""
    tree = ast.parse(inspect.getsource(module))
    own = [n for n in tree.body if isinstance(n, ast.ClassDef) and not n.bases]
    nodes = [n for stmt in tree.body if stmt not in own for n in ast.walk(stmt)]
    names = {n.attr for n in nodes if isinstance(n, ast.Attribute)}
    for cls in (n for n in nodes if isinstance(n, ast.ClassDef)):
        names |= {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return {n for n in names if re.fullmatch(r"_[a-z]\w*", n)}


def overridden(cls: type) -> set[str]:
    """The library code that ``cls``'s own body replaces: for each method or attribute it
    defines, the definition it hides in its bases, as ``module:qualname``."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    defined = {n.name for n in body.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    defined |= {
        t.id
        for n in body.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    targets = set()
    for name in defined:
        base = next((b for b in cls.__mro__[1:] if name in vars(b)), None)
        if base is not None and base is not object:  # object's own: no library's internals
            targets.add(f"{base.__module__}:{base.__qualname__}.{name}")
    return targets
