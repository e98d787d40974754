"""``Registry``: one type for every table of named things that users extend.

Models (``backbones.models``), checkpoint kinds (``backbones.weights``), and in ``resnet_det`` the
detection heads, datasets and metrics are each a ``Registry``: register under a name (as a
decorator or a call), look up by name, list. An unknown name is one line that names the kind,
the close matches and what is known, raised as the error type of the package that owns the table
(``BackboneError`` here, ``ConfigError``, ``DatasetError``, ... in ``resnet_det``). Modelled on
fvcore's ``Registry``; this package has no detection code, so it lives here, at the bottom.
"""

import difflib
from typing import Dict, Generic, Iterator, List, Optional, Type, TypeVar

from .errors import BackboneError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind.

    ``kind`` names the kind in messages ("detection head"); ``error`` is raised for unknown and
    duplicate names; ``listing`` introduces the known names in the unknown-name message (default
    "known <kind>s are"), and ``hint`` ends it (how to add one).
    """

    def __init__(
        self, kind: str, error: Type[Exception] = BackboneError, hint: str = "", listing: Optional[str] = None
    ):
        self.kind, self.error, self.hint = kind, error, hint
        self.listing = listing or f"known {kind}s are"
        self._entries: Dict[str, T] = {}

    def register(self, name: str, obj: Optional[T] = None):
        """``register(name, obj)``, or ``@register(name)`` above a function or class; returns ``obj``."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(fn: T) -> T:
            self._add(name, fn)
            return fn

        return decorator

    def _add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise self.error(f"{self.kind} name '{name}' is already registered: choose another name")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def unknown(self, name: str) -> Exception:
        """The error for an unknown ``name`` (for lookups that try more than exact names first)."""
        hint = f"; {self.hint}" if self.hint else ""
        return self.error(
            f"unknown {self.kind} '{name}': {self.listing} {', '.join(self.names())}{self.close_matches(name)}{hint}"
        )

    def close_matches(self, name: str) -> str:
        """``"; did you mean a, b?"`` when some names are close to ``name``, else ``""``."""
        matches = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.6)
        return f"; did you mean {', '.join(matches)}?" if matches else ""

    def names(self) -> List[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self):
        return self._entries.items()

    def copy(self) -> "Registry[T]":
        """A registry with the same entries, for tests that register throw-away names."""
        other = Registry(self.kind, self.error, self.hint, self.listing)
        other._entries = dict(self._entries)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
