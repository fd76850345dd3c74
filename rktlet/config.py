"""rktlet's configuration: one table of options, one :class:`Config`.

Every option has one entry in :data:`OPTIONS` with its default. The same key
is a command-line flag (``--run-dir``) and a key of the TOML file given with
``--config`` (``run-dir = "/run/rktlet"``; ``run_dir`` is accepted too).
Precedence, lowest first: the defaults here, the file, the flags.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from rktlet.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")

# Registries always reached over plain HTTP: the node itself.
ALWAYS_INSECURE = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Option:
    """One configuration option.

    :ivar key: the flag and TOML key, with dashes.
    :ivar default: the value when neither file nor flag sets it.
    :ivar help: one line for ``--help`` and the documented config file.
    :ivar parse: turns a flag's string (or a TOML scalar) into the value.
    :ivar repeatable: a flag that may be given many times; a list in TOML.
    """

    key: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = str
    repeatable: bool = False

    @property
    def default_text(self) -> str:
        """The default as a flag would spell it (``none`` when empty)."""
        if isinstance(self.default, tuple):
            return ":".join(self.default) or "none"
        if self.parse is _duration:
            return _duration_text(self.default)
        if self.parse is _size:
            return _size_text(self.default)
        return str(self.default) or "none"

    @property
    def attr(self) -> str:
        """The :class:`Config` attribute name."""
        return self.key.replace("-", "_")


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` → (host, port), brackets removed.

    :raises ValueError: not that shape, or a port out of range.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _host_port(value: Any) -> str:
    text = str(value)
    if not split_address(text)[0]:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return text


def _optional_host_port(value: Any) -> str:
    text = str(value).strip()
    return _host_port(text) if text else ""


def _log_level(value: Any) -> str:
    text = str(value).lower()
    if text == "warning":
        text = "warn"
    if text not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return text


def _log_format(value: Any) -> str:
    text = str(value).lower()
    if text not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return text


def _registry_host(value: Any) -> str:
    text = str(value).strip()
    if not text or "/" in text:
        raise ValueError(f"expected HOST[:PORT], got {value!r}")
    return text


def _handler(value: Any) -> str:
    text = str(value).strip()
    name, sep, path = text.partition("=")
    if not sep or not name or not path or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"expected NAME=PATH (e.g. crun=/usr/bin/crun), got {value!r}")
    return f"{name}={path}"


def _cidr(value: Any) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(str(value).strip(), strict=False))
    except ValueError:
        raise ValueError(f"expected a CIDR like 10.88.0.0/16, got {value!r}") from None


def _mirror(value: Any) -> str:
    text = str(value).strip()
    host, sep, url = text.partition("=")
    if not sep or not _registry_host(host) or not url.startswith(("http://", "https://")):
        raise ValueError(f"expected HOST=URL with an http:// or https:// URL, got {value!r}")
    return f"{host}={url.rstrip('/')}"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def _duration(value: Any) -> float:
    text = str(value).strip()
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"expected seconds or a duration like 30s, 5m, 1h; got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return seconds


def _duration_text(seconds: float) -> str:
    for suffix, unit in (("h", 3600), ("m", 60)):
        if seconds >= unit and seconds % unit == 0:
            return f"{seconds / unit:g}{suffix}"
    return f"{seconds:g}s"


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(value: Any) -> int:
    """A byte count: an integer, or a number with a binary unit (``64Ki``,
    ``4Mi``, ``32Gi``, ``1Ti``; ``K``/``KiB``/``M``/``MB``... mean the same)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a byte count like 4194304 or 4Mi, got {value!r}")
    if isinstance(value, int):
        number, unit = value, 1
    else:
        text = str(value).strip().lower()
        for suffix in ("ib", "b", "i"):
            if text.endswith(suffix) and len(text) > len(suffix):
                text = text[: -len(suffix)]
                break
        unit = _SIZE_UNITS.get(text[-1:], None) if text[-1:].isalpha() else 1
        digits = text[:-1] if text[-1:].isalpha() else text
        try:
            number = float(digits)
        except ValueError:
            number = None  # type: ignore[assignment]
        if unit is None or number is None:
            raise ValueError(f"expected a byte count like 4194304 or 4Mi, got {value!r}")
    result = int(number * unit)
    if result <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return result


def _size_text(size: int) -> str:
    for suffix, unit in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a positive whole number, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"expected a positive whole number, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return number


def _path_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    else:
        parts = str(value).split(":")
    return tuple(p for p in parts if p)


OPTIONS: tuple[Option, ...] = (
    Option("socket", "/run/rktlet/rktlet.sock", "unix socket the CRI gRPC server listens on"),
    Option("root", "/var/lib/rktlet", "directory for persistent state (pods, images)"),
    Option("run-dir", "/run/rktlet", "directory for volatile state (namespaces, conmon sockets)"),
    Option("stream-address", "127.0.0.1:10241", "HOST:PORT of the streaming server (exec, attach, port-forward)", _host_port),
    Option("stream-tls-cert", "", "PEM certificate for the streaming server (with --stream-tls-key: serve https)"),
    Option("stream-tls-key", "", "PEM private key for the streaming server"),
    Option("stream-idle-timeout", 4 * 3600.0, "close streaming sessions idle for this long (seconds, or 30s/5m/1h)", _duration),
    Option("cni-conf-dir", "/etc/cni/net.d", "directory holding CNI network configurations"),
    Option("cni-bin-dir", ("/usr/lib/cni", "/opt/cni/bin"), "colon-separated directories searched for CNI plugins", _path_list),
    Option("runtime", "runc", "OCI runtime binary for the default handler (a name on PATH or a path)"),
    Option(
        "runtime-handler",
        (),
        "NAME=PATH: another runtime handler (rkt's stage1 flavor), e.g. crun=/usr/bin/crun (repeatable)",
        _handler,
        repeatable=True,
    ),
    Option("default-network-subnet", "10.88.0.0/16", "subnet of the default CNI network rktlet writes when the conf dir is empty", _cidr),
    Option("cni-del-retry-interval", 60.0,
           "how often a failed CNI DEL of a removed pod is tried again (seconds, or 30s/5m/1h)", _duration),
    Option(
        "insecure-registry",
        (),
        "registry HOST[:PORT] reached over plain HTTP (repeatable; localhost and 127.0.0.1 always are)",
        _registry_host,
        repeatable=True,
    ),
    Option(
        "registry-mirror",
        (),
        "HOST=URL: try the registry at URL before HOST for images named HOST/... (repeatable, in order)",
        _mirror,
        repeatable=True,
    ),
    Option(
        "pull-progress-timeout",
        300.0,
        "cancel an image pull that receives no data for this long (seconds, or 30s/5m/1h)",
        _duration,
    ),
    Option(
        "max-image-bytes",
        32 << 30,
        "refuse an image whose layers hold more bytes of files than this (per layer and in all; 4194304, 512Mi, 32Gi)",
        _size,
    ),
    Option("max-image-inodes", 2_000_000, "refuse an image whose layers hold more inodes (files, dirs...) than this", _count),
    Option("max-image-layers", 128, "refuse an image with more layers than this", _count),
    Option("max-image-config-size", 4 << 20, "refuse an image whose config blob is larger than this (bytes, or 4Mi)", _size),
    Option("max-manifest-size", 4 << 20, "refuse a manifest or index larger than this (bytes, or 4Mi)", _size),
    Option("max-concurrent-downloads", 3, "layer downloads in flight at once, across all pulls", _count),
    Option("grpc-workers", 128,
           "CRI calls served at once (each waiting call, e.g. StopContainer in its grace period, holds one)", _count),
    Option("blocking-threads", 32, "threads for blocking file-system work (unpacking, cgroups, disk usage)", _count),
    Option("nri-socket", "", "unix socket NRI plugins connect to (made mode 0600, its directory 0700); empty: no NRI"),
    Option("nri-request-timeout", 2.0, "time an NRI plugin has to answer one event (seconds, or 30s/5m/1h)", _duration),
    Option(
        "nri-sync-timeout",
        10.0,
        "time an NRI plugin has to answer Synchronize with every pod and container (seconds, or 30s/5m/1h)",
        _duration,
    ),
    Option("metrics-address", "",
           "HOST:PORT of the Prometheus metrics endpoint (/metrics), e.g. 127.0.0.1:9090; empty: no endpoint",
           _optional_host_port),
    Option("metrics-tls-cert", "", "PEM certificate for the metrics endpoint (with --metrics-tls-key: serve https)"),
    Option("metrics-tls-key", "", "PEM private key for the metrics endpoint"),
    Option("log-level", "info", f"least severe log level written: {', '.join(LOG_LEVELS)}", _log_level),
    Option("log-format", "text", "how log events are written: text lines, or json (one JSON object a line)",
           _log_format),
)

OPTIONS_BY_KEY = {o.key: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """The effective configuration of one daemon; built by :func:`load`."""

    socket: str = OPTIONS_BY_KEY["socket"].default
    root: str = OPTIONS_BY_KEY["root"].default
    run_dir: str = OPTIONS_BY_KEY["run-dir"].default
    stream_address: str = OPTIONS_BY_KEY["stream-address"].default
    stream_tls_cert: str = OPTIONS_BY_KEY["stream-tls-cert"].default
    stream_tls_key: str = OPTIONS_BY_KEY["stream-tls-key"].default
    stream_idle_timeout: float = OPTIONS_BY_KEY["stream-idle-timeout"].default
    cni_conf_dir: str = OPTIONS_BY_KEY["cni-conf-dir"].default
    cni_bin_dir: tuple[str, ...] = OPTIONS_BY_KEY["cni-bin-dir"].default
    runtime: str = OPTIONS_BY_KEY["runtime"].default
    runtime_handler: tuple[str, ...] = field(default=OPTIONS_BY_KEY["runtime-handler"].default)
    default_network_subnet: str = OPTIONS_BY_KEY["default-network-subnet"].default
    cni_del_retry_interval: float = OPTIONS_BY_KEY["cni-del-retry-interval"].default
    insecure_registry: tuple[str, ...] = field(default=OPTIONS_BY_KEY["insecure-registry"].default)
    registry_mirror: tuple[str, ...] = field(default=OPTIONS_BY_KEY["registry-mirror"].default)
    pull_progress_timeout: float = OPTIONS_BY_KEY["pull-progress-timeout"].default
    max_image_bytes: int = OPTIONS_BY_KEY["max-image-bytes"].default
    max_image_inodes: int = OPTIONS_BY_KEY["max-image-inodes"].default
    max_image_layers: int = OPTIONS_BY_KEY["max-image-layers"].default
    max_image_config_size: int = OPTIONS_BY_KEY["max-image-config-size"].default
    max_manifest_size: int = OPTIONS_BY_KEY["max-manifest-size"].default
    max_concurrent_downloads: int = OPTIONS_BY_KEY["max-concurrent-downloads"].default
    grpc_workers: int = OPTIONS_BY_KEY["grpc-workers"].default
    blocking_threads: int = OPTIONS_BY_KEY["blocking-threads"].default
    nri_socket: str = OPTIONS_BY_KEY["nri-socket"].default
    nri_request_timeout: float = OPTIONS_BY_KEY["nri-request-timeout"].default
    nri_sync_timeout: float = OPTIONS_BY_KEY["nri-sync-timeout"].default
    metrics_address: str = OPTIONS_BY_KEY["metrics-address"].default
    metrics_tls_cert: str = OPTIONS_BY_KEY["metrics-tls-cert"].default
    metrics_tls_key: str = OPTIONS_BY_KEY["metrics-tls-key"].default
    log_level: str = OPTIONS_BY_KEY["log-level"].default
    log_format: str = OPTIONS_BY_KEY["log-format"].default
    config_file: str | None = None
    #: the keys given as command-line flags (they win over the file, also on reload).
    command_line: frozenset[str] = frozenset()

    @property
    def stream_port(self) -> int:
        """The port part of ``stream_address``."""
        return int(self.stream_address.rpartition(":")[2])

    def is_insecure_registry(self, host: str) -> bool:
        """Whether *host* (``name`` or ``name:port``) may be reached over plain HTTP."""
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        allowed = set(self.insecure_registry)
        return host in allowed or bare in ALWAYS_INSECURE or bare in allowed

    @property
    def handlers(self) -> dict[str, str]:
        """Runtime handler name → OCI runtime binary; ``runc`` is the default
        handler, running ``--runtime``."""
        out = {"runc": self.runtime}
        for entry in self.runtime_handler:
            name, _, path = entry.partition("=")
            out[name] = path
        return out

    @property
    def mirrors(self) -> dict[str, list[str]]:
        """Registry host → mirror URLs, in the order they are tried."""
        out: dict[str, list[str]] = {}
        for entry in self.registry_mirror:
            host, _, url = entry.partition("=")
            out.setdefault(host, []).append(url)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-ready data, keyed like the TOML file."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            value = getattr(self, opt.attr)
            out[opt.key] = list(value) if isinstance(value, tuple) else value
        out["config"] = self.config_file
        return out


def _parse(opt: Option, value: Any, origin: str) -> Any:
    try:
        if opt.repeatable:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(opt.parse(v) for v in items)
        return opt.parse(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{origin}: option {opt.key!r}: {e}") from None


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML config file into ``{attr: value}``, refusing unknown keys."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        opt = OPTIONS_BY_KEY.get(key.replace("_", "-"))
        if opt is None:
            known = ", ".join(sorted(OPTIONS_BY_KEY))
            raise ConfigError(f"config file {path}: unknown key {key!r} (known: {known})")
        values[opt.attr] = _parse(opt, value, f"config file {path}")
    return values


def load(flags: dict[str, Any], config_file: str | None = None) -> Config:
    """Build the effective :class:`Config`.

    :param flags: ``{key: raw value}`` for the flags actually given on the
        command line (absent or ``None`` means "not given").
    :param config_file: path of a TOML file whose keys override the defaults.
    """
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_file(config_file))
    given = set()
    for key, raw in flags.items():
        if raw is None or (isinstance(raw, (list, tuple)) and not raw):
            continue
        opt = OPTIONS_BY_KEY[key]
        values[opt.attr] = _parse(opt, raw, f"--{key}")
        given.add(key)
    config = dataclasses.replace(Config(), config_file=config_file, command_line=frozenset(given), **values)
    _check_metrics(config)
    return config


def reread(current: Config, file_values: dict[str, Any] | None = None) -> Config:
    """The configuration *current* would be with its config file as it is
    now: the file read again (blocking), or its *file_values* as
    :func:`read_file` gave them; the command-line flags of *current* still
    win over it.

    :raises ConfigError: the file is unreadable or invalid.
    """
    values: dict[str, Any] = {}
    if file_values is not None:
        values.update(file_values)
    elif current.config_file:
        values.update(read_file(current.config_file))
    for key in current.command_line:
        attr = OPTIONS_BY_KEY[key].attr
        values[attr] = getattr(current, attr)
    config = dataclasses.replace(Config(), config_file=current.config_file, command_line=current.command_line,
                                 **values)
    _check_metrics(config)
    return config


def _check_metrics(config: Config) -> None:
    """The metrics endpoint has a listener of its own: never the streaming
    server's port, and TLS needs both files."""
    if not config.metrics_address:
        return
    port = int(config.metrics_address.rpartition(":")[2])
    if port and port == config.stream_port:
        raise ConfigError(f"option 'metrics-address': {config.metrics_address} uses port {port}, the streaming "
                          f"server's (stream-address {config.stream_address}); give the metrics endpoint a port of "
                          "its own")
    if bool(config.metrics_tls_cert) != bool(config.metrics_tls_key):
        raise ConfigError("options 'metrics-tls-cert' and 'metrics-tls-key': TLS for the metrics endpoint needs "
                          "both a certificate and a key")


_EXAMPLES = {
    "insecure-registry": ["registry.example:5000"],
    "registry-mirror": ["registry.k8s.io=http://127.0.0.1:5000"],
    "runtime-handler": ["crun=/usr/bin/crun"],
}


def _toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f'"{value}"'


def default_config_text() -> str:
    """The documented default configuration file (``packaging/rktlet.toml``
    is this text; ``python -m rktlet.config`` prints it)."""
    lines = [
        "# rktlet configuration (TOML). Every key is also a command-line option of the",
        "# same name (`--run-dir` ...); a flag given on the command line wins over this",
        "# file. The values below are the defaults: uncomment a line to change it.",
        "",
    ]
    for opt in OPTIONS:
        lines.append(f"# {opt.help}.")
        value = _EXAMPLES.get(opt.key, opt.default) if opt.repeatable else opt.default
        lines.append(f"#{opt.key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def dump_toml(config: Config) -> str:
    """The effective *config* as a TOML file that :func:`load` accepts back
    (what ``rktlet config`` prints): every option at its value, after its
    help. Written from :data:`OPTIONS`, so every option is in it."""
    import tomli_w

    origin = f"the defaults, then {config.config_file}, then the flags" if config.config_file else \
        "the defaults, then the flags"
    lines = [
        "# rktlet's effective configuration (`rktlet config`): " + origin.replace("\n", " ") + ".",
        "# A valid file for --config.",
        "",
    ]
    for opt in OPTIONS:
        value = getattr(config, opt.attr)
        lines.append(f"# {opt.help}.")
        lines.append(tomli_w.dumps({opt.key: list(value) if isinstance(value, tuple) else value}).rstrip("\n"))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(default_config_text(), end="")
