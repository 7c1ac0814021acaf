"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class TranslateError(Exception):
    """A problem with the user's input (recipe, data, weights): shown as one line, no traceback."""
