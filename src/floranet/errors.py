"""The floranet exception family.

Every error a user can cause derives from :class:`FloranetError`, so callers
(the CLI above all) can catch one type and print a clean one-line message.
Messages follow Keras's template: name the argument and echo the value.
"""

from __future__ import annotations


class FloranetError(Exception):
    """Base class of every error floranet raises for bad input or environment."""


class ConfigError(FloranetError, ValueError):
    """An argument or configuration value is invalid."""


class DatasetError(FloranetError):
    """A dataset folder, image file or split manifest cannot be used."""


class DownloadError(FloranetError):
    """A file could not be downloaded or failed its checksum."""


class WeightsError(FloranetError):
    """Model weights cannot be found, downloaded or loaded."""


class ModelError(FloranetError):
    """A model or run directory cannot be built, loaded or used."""
