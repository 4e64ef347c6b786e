"""What every rwkvtune command does around its work: logging, and bad input as one error line, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


def run_command(prog: str, action: Callable[[], str]) -> int:
    """Run ``action`` (it returns the line to print on success); exit code 0, or 2 with ``prog: error: ...``
    on stderr when the input is bad or the file system refuses (``ValueError``, ``OSError``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        message = action()
    except (OSError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(message)
    return 0
