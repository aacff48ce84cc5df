import sys

from coordinator.cli import main

sys.exit(main(prog="python -m coordinator"))
