"""``python -m fedguard`` is the ``fedguard`` command."""

from fedguard.cli import main

main()
