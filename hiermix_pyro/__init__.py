"""hiermix-pyro: hierarchical mixture VAEs for single-cell counts, written in Pyro."""

__version__ = "0.1.0"

