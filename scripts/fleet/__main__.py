import sys

from scripts.fleet.cli import main

sys.exit(main())
