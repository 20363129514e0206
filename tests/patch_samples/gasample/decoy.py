"""Names that look like the stdlib's but are other objects: never rebound."""


def sleep(seconds):
    return ("decoy", seconds)


class socket:
    pass


time = "not the time module"
