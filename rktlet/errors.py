"""Domain exceptions. The CRI boundary maps each to one gRPC status code
(``rktlet/cri/status.py``); nothing below the boundary knows about gRPC."""


class RktletError(Exception):
    """Base of every error rktlet reports to a caller. Its text is the message."""


class InvalidArgument(RktletError):
    """A request field is missing or malformed; the message names the field."""


class NotFound(RktletError):
    """The pod, container, image or token named does not exist."""


class AlreadyExists(RktletError):
    """A name or id is already taken by something different."""


class FailedPrecondition(RktletError):
    """The object exists but is in the wrong state for the request."""


class PermissionDenied(RktletError):
    """Credentials were refused (e.g. by a registry); the message says by whom."""


class ResourceExhausted(RktletError):
    """A limit was hit (disk, size caps); the message names the limit."""


class Unimplemented(RktletError):
    """The RPC or feature is not built (yet); the message says which."""


class Unavailable(RktletError):
    """The daemon cannot serve right now (e.g. it is shutting down)."""


class DeadlineExceeded(RktletError):
    """The operation did not finish within its deadline."""


class RuntimeFailure(RktletError):
    """An external program (runc, conmon, a CNI plugin) failed; the message
    carries the program's own words."""


class ConfigError(RktletError):
    """The configuration (file or flags) is invalid; the message names the key."""


class StartupError(RktletError):
    """The daemon cannot start (not root, socket owned by another rktlet, ...)."""


class HostileContent(InvalidArgument):
    """Image content tries to write outside its target (path traversal,
    symlink or hard-link escape); the message names the entry."""


class DigestMismatch(RktletError):
    """Content did not match the digest it was fetched by; the message names
    both digests and where the content came from."""
