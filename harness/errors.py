"""The error a user's own mistake raises: printed as one line, no traceback, exit status 2."""


class UserError(ValueError):
    pass
