"""smallfit: does this small language model do my job well enough, on my hardware and budget?

``import smallfit`` imports no ML library: backends load theirs when a candidate uses them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("smallfit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
