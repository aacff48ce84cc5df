"""Coordinator: split an image into strips, process them on workers, stitch the result."""

__version__ = "1.0.0"
