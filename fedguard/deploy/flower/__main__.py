"""``python -m fedguard.deploy.flower ...``: see :mod:`fedguard.deploy.flower.entry`."""

import sys

from fedguard.deploy.flower.entry import main

main(sys.argv[1:])
