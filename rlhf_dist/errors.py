"""Errors a user can cause and fix; the CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """Bad input (config, paths, data, resources). The message says what was wrong and the fix."""
