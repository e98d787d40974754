"""Errors of the backbone package: unknown names, bad options and unusable weights files."""


class BackboneError(ValueError):
    """A user-fixable problem with a backbone name, option or weights file (one-line message)."""


class UnsafeFileError(BackboneError):
    """A file that could only be loaded by running code from it (a pickle calling other functions)."""
