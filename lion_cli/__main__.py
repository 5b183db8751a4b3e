"""``python -m lion_cli``: the ``lion`` command (:func:`lion_cli.command.main`)."""

import sys

from lion_cli.command import main

if __name__ == "__main__":
    sys.exit(main())
