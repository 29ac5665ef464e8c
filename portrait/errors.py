"""One exception hierarchy for the library, the Triton models and the clients."""


class PortraitError(Exception):
    """Base class: front ends show `str(error)`, never a traceback."""


class InvalidInput(PortraitError, ValueError):
    """A request field is out of its limits; maps to Triton's INVALID_ARG."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class ModelSetError(PortraitError):
    """The weights directory is missing, incomplete or of the wrong layout."""


class ServerError(PortraitError):
    """The inference server failed, could not be reached, or could not be started."""


class Cancelled(PortraitError):
    """The request was cancelled by its client."""


class Unavailable(ServerError):
    """The server (or a model it calls) cannot take the request now: draining, restarting, or a worker died.
    Maps to Triton's UNAVAILABLE; a client may retry, on another replica or after a moment."""
