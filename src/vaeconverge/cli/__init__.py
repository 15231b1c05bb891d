"""The command layer: ``vaeconverge train | bbvi | bound | sweep | report | reproduce | data``. Commands read
files and flags and call the library below; nothing below imports them."""

from .main import main

__all__ = ["main"]
