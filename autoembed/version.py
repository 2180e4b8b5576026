"""The package's version, a leaf every part may read (the run records it in meta.json)."""

__version__ = "0.1.0"
