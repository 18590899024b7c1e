"""Errors that mean "the user asked for something we cannot do": the CLI prints them as one line."""


class UserError(ValueError):
    """Bad input from the user (config, paths, options); the CLI exits with code 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
