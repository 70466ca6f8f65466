"""The errors mentor_agents raises on purpose. Each names what is wrong; `mentor` prints them as one line, and any
other exception is a bug that keeps its traceback."""


class MentorError(Exception):
    """Base of the errors mentor_agents raises for a problem it can name."""


class InvalidInputError(MentorError, ValueError):
    """An argument, file or run directory given to mentor_agents is not what it needs; the message says which."""


class StageError(MentorError, RuntimeError):
    """A pipeline stage cannot go on with what it was given (e.g. no teacher trace was verified correct)."""
