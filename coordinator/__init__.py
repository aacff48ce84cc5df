"""Coordinator: split an image into strips, process them on workers, stitch the result."""
