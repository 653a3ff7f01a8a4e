"""semtrack: quantitative analysis of SEM-BSE time series."""

from ._version import __version__

__all__ = ["__version__"]
