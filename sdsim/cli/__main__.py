"""``python -m sdsim.cli``: the same as the ``sdsim`` command."""

from sdsim.cli import main

main()
