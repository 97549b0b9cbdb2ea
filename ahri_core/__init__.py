"""ahri: learn a world model of a game from gameplay video.

The library never prints. Long operations report through a ``Progress`` callback
(see :mod:`ahri_core.progress`) that the command-line interface fills with rich.
"""

__version__ = "0.1.0"
