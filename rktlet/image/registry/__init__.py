"""Registry HTTP API v2 client (the OCI distribution protocol), on treq.

Everything here runs on the reactor thread and returns Deferreds; no call
blocks.  One :class:`RegistryClient` keeps a persistent connection pool, the
bearer tokens it was given (until they expire), what each registry asked for
when it challenged us, and which scheme each insecure registry speaks.

What one fetch does, from the outside in:

1. **Sources**: the configured mirrors of the image's registry, in order, then
   the registry itself.  Any failure on a mirror falls through to the next
   source; the registry's own failure is the one reported.
2. **Retries**: connection errors, idle timeouts, 429 and 5xx answers are
   retried with exponential backoff (``retries`` attempts in all, on the
   upstream registry; a mirror gets one attempt, since falling through is its
   retry).  4xx answers are final.
3. **Authentication**: anonymous first, or with what an earlier challenge
   from the same registry taught us (a cached bearer token, basic auth).  On
   ``401`` the ``WWW-Authenticate`` challenge is answered (token from the
   realm, or basic auth) and the request is sent once more.
4. **Redirects**: followed up to :data:`MAX_REDIRECTS` hops, dropping the
   ``Authorization`` header once the host changes (blob storage).
5. **Transport**: HTTPS with certificate verification; for insecure
   registries HTTPS without verification first, then plain HTTP, remembering
   per host which one answered.

The parts: :mod:`.client` (sources, retries, manifests, blobs),
:mod:`.auth` (credentials, challenges, tokens, redirect rules),
:mod:`.transport` (exchanges, bodies, scheme choice) and :mod:`.tls`.

Only the Docker Registry token protocol and basic auth are spoken; the
registry's own error codes (``MANIFEST_UNKNOWN`` …) are carried into the
messages of the domain errors from :mod:`rktlet.errors`.
"""

from rktlet.image.registry.auth import MAX_REDIRECTS, Credentials
from rktlet.image.registry.client import MAX_MANIFEST_SIZE, Manifest, RegistryClient

__all__ = ["Credentials", "Manifest", "RegistryClient", "MAX_MANIFEST_SIZE", "MAX_REDIRECTS"]
