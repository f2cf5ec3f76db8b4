"""Errors a user can act on: the CLI prints their message without a traceback."""


class CurateError(Exception):
    """Base of every error curate reports to the user as a plain message."""


class InvalidArgument(CurateError, ValueError):
    """A parameter given to a stage is out of range or malformed."""


class SourceError(CurateError):
    """The image board answered in a way the crawl cannot go on from."""


class ModelError(CurateError):
    """A model file is missing, fails its checksum, or is not in a format curate can load."""
