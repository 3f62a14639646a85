"""``python -m dntk`` — the same as the ``dntk`` command (see :mod:`dntk.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
