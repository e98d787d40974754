"""What every command-line tool shares: one-line errors instead of tracebacks."""

import functools
import sys

from resnet_det.errors import USER_ERRORS


def main_guard(main):
    """Run ``main``; print a user error as ``error: <message>`` and exit with status 2.

    Set ``RESNET_DET_TRACEBACK=1`` to see the full traceback of such an error.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        import os

        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("RESNET_DET_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
