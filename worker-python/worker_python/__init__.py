"""worker-python: the Flask + Pillow image worker (primary op: grayscale)."""

__version__ = "1.0.0"
SERVICE = "worker-python"
