"""The error types users see. Each names the input and what is wrong with it."""


class Glm4VoiceError(Exception):
    """Base class for every error glm4voice raises on bad input."""


class AudioError(Glm4VoiceError, ValueError):
    """Audio that cannot be read or used: missing, empty, corrupt, not audio."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class CheckpointError(Glm4VoiceError, ValueError):
    """A model folder or hub id that does not hold a usable checkpoint."""
