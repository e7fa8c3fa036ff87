"""The one place that holds CumApp's version."""

__version__ = "0.1.0"
