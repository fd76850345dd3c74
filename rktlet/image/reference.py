"""Image references, parsed and normalized as the kubelet and containerd do.

``busybox`` is ``docker.io/library/busybox:latest``; ``host:5000/a/b@sha256:…``
keeps its registry and digest; ``name:tag@digest`` is pulled by its digest.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from rktlet.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
# The host that serves docker.io's registry API.
DOCKER_HUB_API_HOST = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
NAME_TOTAL_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A normalized image reference.

    :ivar domain: registry host as named (``docker.io``, ``127.0.0.1:5000``).
    :ivar path: repository path within the registry (``library/busybox``).
    :ivar tag: the tag, or ``None`` (never both absent: ``latest`` is implied).
    :ivar digest: the manifest digest, or ``None``.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path``, the repository's full name."""
        return f"{self.domain}/{self.path}"

    @property
    def api_host(self) -> str:
        """The host whose ``/v2/`` API serves this repository."""
        return DOCKER_HUB_API_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def lookup(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def repo_tag(self) -> str | None:
        """``name:tag`` as ListImages reports it, when pulled by tag."""
        return f"{self.name}:{self.tag}" if self.tag and not self.digest else None

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _invalid(ref: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid image reference {ref!r}: {why}")


def is_digest(text: str) -> bool:
    """Whether *text* is a content digest (``algorithm:hex``)."""
    return bool(_DIGEST_RE.match(text))


def validate_digest(text: str) -> str:
    """Return *text* if it is a sha256 digest rktlet can verify, else raise."""
    if not _SHA256_RE.match(text):
        raise InvalidArgument(f"unsupported or malformed digest {text!r} (expected sha256:<64 hex>)")
    return text


@functools.lru_cache(maxsize=4096)  # References are immutable; ImageStatus parses the same few names all day.
def parse(ref: str) -> Reference:
    """Parse and normalize *ref*.

    :raises InvalidArgument: naming the reference and what is wrong with it.
    """
    if not ref or ref != ref.strip():
        raise _invalid(ref, "empty or surrounded by whitespace")
    remainder = ref
    digest = None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        if not is_digest(digest):
            raise _invalid(ref, f"malformed digest {digest!r}")
        validate_digest(digest)
    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise _invalid(ref, f"malformed tag {tag!r}")
    domain, _, path = remainder.partition("/")
    if not path or not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")
                        or domain != domain.lower()):
        domain, path = DEFAULT_DOMAIN, remainder
    elif not _DOMAIN_RE.match(domain):
        raise _invalid(ref, f"malformed registry host {domain!r}")
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if not _PATH_RE.match(path):
        if path != path.lower():
            raise _invalid(ref, "repository name must be lowercase")
        raise _invalid(ref, f"malformed repository name {path!r}")
    if len(f"{domain}/{path}") > NAME_TOTAL_MAX:
        raise _invalid(ref, f"repository name longer than {NAME_TOTAL_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
