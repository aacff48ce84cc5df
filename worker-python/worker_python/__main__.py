"""`python -m worker_python`: serve with gunicorn until SIGTERM (server.py)."""

import sys

from worker_python.server import main

if __name__ == "__main__":
    sys.exit(main())
