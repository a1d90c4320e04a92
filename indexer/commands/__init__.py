"""Sub-commands of the imsearch CLI; each module exposes register(subparsers)."""
