"""Actionlayer: a System of Action on top of a System of Record."""

__version__ = "0.1.0"
