"""The package version (its own module so that sdsim's modules can read it without importing the
top-level package)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
