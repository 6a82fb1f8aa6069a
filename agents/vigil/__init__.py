"""Vigil: network and endpoint defence."""
__version__ = "0.1.0"
