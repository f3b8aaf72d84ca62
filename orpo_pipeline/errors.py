"""Errors meant for users: each message names the file, row or field and the fix."""


class OrpoPipelineError(Exception):
    """Base class for every error the CLI shows without a traceback."""


class ConfigError(OrpoPipelineError):
    """A recipe, training config or command-line option is invalid."""


class DataError(OrpoPipelineError):
    """Input data cannot be read or does not match any known layout."""


class RunExistsError(OrpoPipelineError):
    """A run directory already exists and would be overwritten."""
