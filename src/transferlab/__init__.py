"""transferlab: transfer-learning experiments as one command and one sweep."""

__version__ = "0.1.0"
