"""The kit's version: one place, at the bottom of the layers, so that what records it (a study's
environment, a fleet's version check) need not import the whole package."""

__version__ = "0.1.0"
