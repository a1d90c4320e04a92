"""``python -m indexer`` is the ``imsearch`` command."""

import sys

try:
    from indexer.cli import main

    sys.exit(main())
except KeyboardInterrupt:  # Ctrl-C before the command could install its own handler
    sys.exit(130)
