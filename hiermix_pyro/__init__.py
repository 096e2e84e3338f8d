"""hiermix-pyro: hierarchical mixture VAEs for single-cell counts, written in Pyro."""

from importlib.metadata import PackageNotFoundError, version

try:  # one place for the version: pyproject.toml, through the installed package's metadata
    __version__ = version("hiermix-pyro")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

del PackageNotFoundError, version
