"""The version of jobkit (a foundation module: the faces import it, not the package)."""

__version__ = "0.1.0"
