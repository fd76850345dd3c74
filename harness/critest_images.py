"""Every image cri-tools' ``critest`` v1.37.0 pulls, rebuilt offline.

critest's validation suite (``sigs.k8s.io/cri-tools/pkg/validate``) pulls
these references; :func:`build_critest_images` builds each one from the
host's ``/bin/busybox`` (busybox-static) plus a few tiny static C programs
compiled here with ``gcc -static``, and :func:`push_critest_images` pushes
them to a :class:`~harness.registry.LocalRegistry` under their
upstream repository paths, so that a rktlet started with
``--registry-mirror HOST=http://127.0.0.1:PORT`` for every host in
:data:`UPSTREAM_HOSTS` finds them all there.

What the specs need of each image (read from cri-tools v1.37.0):

* ``registry.k8s.io/e2e-test-images/busybox:1.29-2`` (the default test
  image, ``framework.DefaultLinuxContainerImage``): a busybox root with the
  usual applets in ``/bin`` (``sh``, ``ls``, ``id``, ``ping``, ``brctl``,
  ``netstat``, ``pidof``, ``top``, ``mount``, ``hostname``...), ``ipcs``
  (Debian's busybox-static has no such applet: a small sh/awk script over
  ``/proc/sysvipc/shm`` stands in), ``pgrep`` (likewise missing: a script
  over ``/proc/*/comm``), ``/etc/passwd`` with ``nobody``
  (RunAsUsername) and ``www-data``.

  The ``MaskedPaths`` spec masks ``/bin/ls`` and runs ``/bin/sh -c ls``,
  expecting ``/bin/sh: ls: Permission denied``.  The real image's busybox is
  built without ``FEATURE_SH_STANDALONE``, so its ``sh`` finds ``ls`` on
  ``PATH`` and execs ``/bin/ls`` — the masked file.  Debian's busybox-static
  *prefers applets*: its ``sh`` runs ``ls`` internally (re-executing
  ``/proc/self/exe``) and never touches ``/bin/ls``, so a masked ``/bin/ls``
  would still "run" and the spec would fail for a reason that has nothing to
  do with the runtime.  ``/bin/sh`` here is therefore a copy of busybox in
  which the applet name ``ls`` is renamed ``lr`` (same length, same sort
  position): that ``sh`` looks ``ls`` up on ``PATH`` like the real image's
  does, and the spec tests the masking for real.  Every other applet,
  ``/bin/ls`` included, is a hard link to the unmodified busybox.
* ``gcr.io/k8s-staging-cri-tools/test-image-*``: busybox plus one file named
  after the image (cri-tools' ``images/image-test``): ``test-image-latest``,
  ``test-image-tag:test``, ``test-image-tag:all``, ``test-image-1/2/3``
  (three different images), ``test-image-tags:1/2/3`` (one image, three
  tags).  ``test-image-digest@sha256:9700f9a2…`` is pinned to an upstream
  digest and cannot be rebuilt: it is not built (its spec is skipped).
* the user images (``images/image-user``): ``test-image-user-uid``
  (``USER 1002``), ``test-image-user-username`` (``www-data``),
  ``test-image-user-uid-group`` (``1003:1004``),
  ``test-image-user-username-group`` (``www-data:1004``).
* ``test-image-predefined-group``: user ``default-user`` (uid/gid 1000) that
  is also a member of ``group-defined-in-image`` (gid 50000); ``USER 1000``.
* ``registry.k8s.io/e2e-test-images/nginx:1.14-2``: a process called
  ``nginx`` (``pidof nginx``) that writes ``/var/run/nginx.pid``, whose
  ``/proc/PID/cmdline`` reads ``nginx: master process ...`` and that answers
  HTTP 200 on port 80 — :data:`NGINX_C`, a tiny static web server.
* ``gcr.io/k8s-staging-cri-tools/hostnet-nginx-ARCH``: the same, on port
  12003 (host network specs).
* ``registry.k8s.io/e2e-test-images/httpd:2.4.39-4``: HTTP 200 on port 80
  and a log line containing ``httpd``.
* ``registry.k8s.io/e2e-test-images/nonewprivs:1.3``: a set-uid-root program
  printing ``Effective uid: N`` (:data:`NNP_C`).
* ``registry.k8s.io/pause:3.9`` and ``k8s.gcr.io/pause:3.9``: the same image
  from two registries (a static ``/pause``, ``USER 65535:65535``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.images import (
    BUSYBOX_PATH,
    DEFAULT_ENV,
    BuiltImage,
    Dir,
    Entry,
    File,
    HardLink,
    Layer,
    build_image,
    host_architecture,
    push_image,
)

if TYPE_CHECKING:  # pragma: no cover
    from harness.registry import LocalRegistry

__all__ = [
    "UPSTREAM_HOSTS", "CritestImage", "build_critest_images", "push_critest_images",
    "critest_images_available", "DIGEST_PINNED_IMAGE",
]

#: Every registry host a critest v1.37.0 image reference names.
UPSTREAM_HOSTS: tuple[str, ...] = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")

E2E = "registry.k8s.io/e2e-test-images/"
STAGING = "gcr.io/k8s-staging-cri-tools/"

#: Pinned to an upstream digest: cannot be rebuilt, so never built.
DIGEST_PINNED_IMAGE = (
    STAGING + "test-image-digest@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf"
)

# -- static helpers -----------------------------------------------------------

#: A minimal nginx stand-in: ``nginx [PORT]``.  It re-executes itself so that
#: its command line reads ``nginx: master process ...`` (as the real master's
#: does; ``comm`` stays ``nginx``), writes its pid to /var/run/nginx.pid and
#: answers every request with 200 and a small page.  It exits on
#: SIGTERM/SIGINT/SIGQUIT even as PID 1 (which ignores unhandled signals).
NGINX_C = r"""
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char TITLE[] = "nginx: master process nginx -g daemon off;";
static void bye(int sig) { (void)sig; unlink("/var/run/nginx.pid"); _exit(0); }

int main(int argc, char **argv) {
    int port = 80;
    FILE *f = fopen("/etc/nginx/port", "r");
    if (f) { if (fscanf(f, "%d", &port) != 1) port = 80; fclose(f); }
    if (strncmp(argv[0], "nginx:", 6) != 0) {
        char *args[] = {(char *)TITLE, NULL};
        execv("/usr/sbin/nginx", args);
        perror("execv /usr/sbin/nginx");
        return 1;
    }
    signal(SIGTERM, bye); signal(SIGINT, bye); signal(SIGQUIT, bye);
    signal(SIGPIPE, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(port); a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("nginx: bind"); return 1; }
    mkdir("/var/run", 0755);
    f = fopen("/var/run/nginx.pid", "w");
    if (f) { fprintf(f, "%d\n", (int)getpid()); fclose(f); }
    fprintf(stderr, "nginx: listening on port %d\n", port);
    static const char body[] = "<html><body><h1>Welcome to nginx!</h1></body></html>\n";
    char resp[512], buf[4096];
    int n = snprintf(resp, sizeof resp,
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
        "Content-Length: %d\r\nConnection: close\r\n\r\n%s", (int)strlen(body), body);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        struct timeval tv = {5, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        size_t got = 0;
        while (got < sizeof buf - 1) {
            ssize_t r = read(c, buf + got, sizeof buf - 1 - got);
            if (r <= 0) break;
            got += r; buf[got] = 0;
            if (strstr(buf, "\r\n\r\n")) break;
        }
        if (write(c, resp, n) < 0) { /* client went away */ }
        shutdown(c, SHUT_WR);
        close(c);
    }
}
"""

#: k8s' nonewprivs test program: run set-uid root, it prints its effective uid.
NNP_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
"""

#: A pause process: waits for signals, reaps children, exits on TERM/INT.
PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void bye(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGTERM, bye); signal(SIGINT, bye); signal(SIGCHLD, reap);
    for (;;) pause();
}
"""

#: ``ipcs -m`` for an image whose busybox has no ipcs applet.
IPCS_SH = r"""#!/bin/sh
# ipcs stand-in: shared memory segments from /proc/sysvipc/shm
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
awk 'NR > 1 { printf "0x%08x %-10s %-10s %-10o %-10s %-10s\n", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm
echo
"""

#: ``pgrep PATTERN`` for an image whose busybox has no pgrep applet (critest
#: runs ``sh -c "pgrep sleep || true"`` and wants an empty stderr).
PGREP_SH = r"""#!/bin/sh
# pgrep stand-in: pids of the processes whose name matches the regexp $1
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
rc=1
for d in /proc/[0-9]*; do
    name=$(cat "$d/comm" 2>/dev/null) || continue
    if echo "$name" | grep -q -e "$1"; then echo "${d#/proc/}"; rc=0; fi
done
exit $rc
"""


def gcc_available() -> str | None:
    """``None`` if static C programs can be built here, else why not."""
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    return None


@functools.lru_cache(maxsize=None)
def _static_binary(name: str, source: str) -> bytes:
    """Compile *source* with ``gcc -static -Os`` and return the stripped binary."""
    with tempfile.TemporaryDirectory(prefix="critest-cc-") as tmp:
        src, out = os.path.join(tmp, name + ".c"), os.path.join(tmp, name)
        with open(src, "w") as f:
            f.write(source)
        subprocess.run(["gcc", "-static", "-Os", "-s", "-o", out, src], check=True, capture_output=True)
        with open(out, "rb") as f:
            return f.read()


# -- the busybox root ---------------------------------------------------------

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "bin:x:2:2:bin:/bin:/bin/false\n"
    "sys:x:3:3:sys:/dev:/bin/false\n"
    "sync:x:4:100:sync:/bin:/bin/sync\n"
    "mail:x:8:8:mail:/var/spool/mail:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "operator:x:37:37:Operator:/var:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
GROUP = (
    "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\n"
    "lp:x:7:\nmail:x:8:\nkmem:x:9:\nwheel:x:10:root\ncdrom:x:11:\ndialout:x:18:\n"
    "floppy:x:19:\nvideo:x:28:\naudio:x:29:\ntape:x:32:\nwww-data:x:33:\n"
    "operator:x:37:\nutmp:x:43:\nplugdev:x:46:\nstaff:x:50:\nlock:x:54:\n"
    "netdev:x:82:\nusers:x:100:\nnogroup:x:65534:\n"
)


@functools.lru_cache(maxsize=None)
def _applets() -> tuple[str, ...]:
    out = subprocess.run([BUSYBOX_PATH, "--list"], check=True, capture_output=True, text=True).stdout
    return tuple(sorted({a.strip() for a in out.split() if a.strip() and "/" not in a}))


@functools.lru_cache(maxsize=None)
def _sh_binary() -> bytes:
    """busybox whose ``sh`` execs ``ls`` from PATH (see the module docstring)."""
    with open(BUSYBOX_PATH, "rb") as f:
        data = f.read()
    old, new = b"\0losetup\0ls\0", b"\0losetup\0lr\0"
    if data.count(old) != 1:
        raise RuntimeError(f"{BUSYBOX_PATH}: cannot find the applet name 'ls' to rename in its applet table")
    return data.replace(old, new)


@functools.lru_cache(maxsize=None)
def busybox_root_layer() -> Layer:
    """``/bin/busybox`` with every applet hard-linked in ``/bin``, ``/bin/sh``
    (see the module docstring), ``ipcs``, the usual directories and
    ``/etc/passwd`` / ``/etc/group`` of the busybox image."""
    with open(BUSYBOX_PATH, "rb") as f:
        busybox = f.read()
    entries: list[Entry] = [
        Dir("bin"), Dir("usr"), Dir("usr/bin"), Dir("usr/sbin"), Dir("etc"), Dir("tmp", mode=0o1777),
        Dir("root", mode=0o700), Dir("home"), Dir("proc"), Dir("sys"), Dir("dev"), Dir("var"),
        Dir("var/run"), Dir("var/www"), Dir("var/spool"), Dir("var/spool/mail"),
        File("bin/busybox", busybox, mode=0o755),
        File("bin/sh", _sh_binary(), mode=0o755),
        HardLink("bin/ash", "bin/sh"),
        File("etc/passwd", PASSWD), File("etc/group", GROUP),
        File("etc/shadow", "", mode=0o640),
    ]
    applets = set(_applets()) - {"sh", "ash", "busybox"}
    entries += [HardLink(f"bin/{a}", "bin/busybox") for a in sorted(applets)]
    if "ipcs" not in applets:
        entries.append(File("bin/ipcs", IPCS_SH, mode=0o755))
    if "pgrep" not in applets:
        entries.append(File("bin/pgrep", PGREP_SH, mode=0o755))
    return Layer(entries, created_by="busybox (host busybox-static; sh without applet preference for ls)")


def _busybox(*extra: Layer, **config) -> BuiltImage:
    config.setdefault("cmd", ["sh"])
    return build_image([busybox_root_layer(), *extra], **config)


def _marker(name: str) -> Layer:
    """cri-tools' images/image-test: ``ADD ${TEST} ${TEST}`` (an empty file)."""
    return Layer([File(name, b"")], created_by=f"ADD {name} {name}")


def _nginx(port: int) -> BuiltImage:
    layer = Layer(
        [
            File("usr/sbin/nginx", _static_binary("nginx", NGINX_C), mode=0o755),
            File("etc/nginx/port", f"{port}\n"),
            File("usr/share/nginx/html/index.html", "<html><body><h1>Welcome to nginx!</h1></body></html>\n"),
        ],
        created_by=f"nginx stand-in on port {port}",
    )
    return _busybox(
        layer, cmd=["nginx", "-g", "daemon off;"], exposed_ports={f"{port}/tcp": {}}, stop_signal="SIGQUIT",
    )


def _httpd() -> BuiltImage:
    script = (
        "#!/bin/sh\n"
        "echo \"AH00558: httpd: Could not reliably determine the server's fully qualified domain name\" >&2\n"
        "exec httpd -f -p 80 -h /usr/local/apache2/htdocs\n"
    )
    layer = Layer(
        [
            File("usr/local/bin/httpd-foreground", script, mode=0o755),
            File("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n"),
        ],
        created_by="httpd stand-in (busybox httpd)",
    )
    return _busybox(
        layer, cmd=["httpd-foreground"], working_dir="/usr/local/apache2", exposed_ports={"80/tcp": {}},
        env=(DEFAULT_ENV[0].replace("PATH=", "PATH=/usr/local/apache2/bin:"),),
    )


def _nonewprivs() -> BuiltImage:
    layer = Layer(
        [File("usr/local/bin/nnp", _static_binary("nnp", NNP_C), mode=0o4755)],
        created_by="set-uid root nnp",
    )
    return _busybox(layer, cmd=None, entrypoint=["/usr/local/bin/nnp"])


def _pause() -> BuiltImage:
    layer = Layer([File("pause", _static_binary("pause", PAUSE_C), mode=0o755)], created_by="pause")
    return build_image([layer], entrypoint=["/pause"], user="65535:65535", env=DEFAULT_ENV)


def _predefined_group() -> BuiltImage:
    layer = Layer(
        [
            File("etc/passwd", PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"),
            File("etc/group", GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"),
            Dir("home/default-user", uid=1000, gid=1000),
        ],
        created_by="adduser -u 1000 -D default-user && addgroup -g 50000 group-defined-in-image && "
                   "addgroup default-user group-defined-in-image",
    )
    return _busybox(layer, user="1000")


@dataclass(frozen=True)
class CritestImage:
    """One image pushed under ``repository:tag`` (``repository`` includes
    the upstream host, e.g. ``registry.k8s.io/pause``)."""

    repository: str
    tag: str
    image: BuiltImage

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def host(self) -> str:
        return self.repository.split("/", 1)[0]

    @property
    def path(self) -> str:
        """The repository path inside the registry (without the host)."""
        return self.repository.split("/", 1)[1]


@functools.lru_cache(maxsize=None)
def build_critest_images() -> tuple[CritestImage, ...]:
    """Build every image critest v1.37.0 pulls (except the digest-pinned one)."""
    arch = host_architecture()
    busybox = _busybox()
    tags_image = _busybox(_marker("test-image-tags"))
    pause = _pause()
    nginx = _nginx(80)
    out: list[tuple[str, str, BuiltImage]] = [
        (E2E + "busybox", "1.29-2", busybox),
        (E2E + "nginx", "1.14-2", nginx),
        (E2E + "httpd", "2.4.39-4", _httpd()),
        (E2E + "nonewprivs", "1.3", _nonewprivs()),
        ("registry.k8s.io/pause", "3.9", pause),
        ("k8s.gcr.io/pause", "3.9", pause),
        (STAGING + f"hostnet-nginx-{arch}", "latest", _nginx(12003)),
        (STAGING + "test-image-latest", "latest", _busybox(_marker("test-image-latest"))),
        (STAGING + "test-image-tag", "test", _busybox(_marker("test-image-tag"))),
        (STAGING + "test-image-tag", "all", _busybox(_marker("test-image-tag-all"))),
        (STAGING + "test-image-predefined-group", "latest", _predefined_group()),
    ]
    out += [(STAGING + f"test-image-{n}", "latest", _busybox(_marker(f"test-image-{n}"))) for n in (1, 2, 3)]
    out += [(STAGING + "test-image-tags", str(n), tags_image) for n in (1, 2, 3)]
    for name, user in (
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ):
        out.append((STAGING + name, "latest", _busybox(user=user)))
    return tuple(CritestImage(repo, tag, image) for repo, tag, image in out)


def push_critest_images(registry: "LocalRegistry") -> list[CritestImage]:
    """Build and push every critest image to *registry* (one registry serves
    as the mirror of all :data:`UPSTREAM_HOSTS`: images are pushed under
    their upstream path, the host left out — which is how a mirror is asked,
    so two hosts' same path share one repository, e.g. ``pause``)."""
    images = list(build_critest_images())
    for item in images:
        push_image(registry, item.path, item.tag, item.image)
    return images


def critest_images_available() -> str | None:
    """``None`` if the images can be built here, else why not."""
    if not os.path.exists(BUSYBOX_PATH):
        return f"{BUSYBOX_PATH} is missing (Debian package busybox-static)"
    return gcc_available()

