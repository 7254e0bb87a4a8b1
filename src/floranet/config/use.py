"""How finished runs are used: inference settings (predict, evaluate, serve) and the server's limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from floranet.config.choices import (
    LOOPBACK_HOSTS,
    NAME_RULE,
    PRECISIONS,
    RUNTIMES,
    check,
    check_choice,
    check_fraction,
    check_positive_int,
    is_finite_number,
    is_name,
)

# The most bytes of a request line and headers the server reads before answering 431 (nginx allows 32 KiB,
# uvicorn's h11 parser 16 KiB): httptools keeps a header that is still arriving in memory, growing it by copies,
# so without a bound one connection could stream one header for the whole header timeout.
MAX_HEADER_BYTES = 64 * 1024
# The server's waits and timeouts, at most: more is a typo (max_wait_ms=inf held every request, and shutdown, for
# a batch that never filled).
TIME_LIMITS = {"max_wait_ms": 10_000, "request_timeout_s": 3600, "decode_timeout_s": 600, "header_timeout_s": 600}


@dataclass(frozen=True)
class InferenceConfig:
    """How a finished run is used by predict, evaluate and serve. Validated on creation.

    Attributes:
        runtime, precision: See :func:`floranet.inference.runtime.choose`; ``auto`` is resolved per job.
        batch_size: Images per model call.
        top_k: Classes per answer.
        low_confidence: Answers whose top probability is below this are flagged.
        calibrated: Report temperature-scaled probabilities (``calibration.json``).
        safe_mode: Refuse a model that contains code (Keras safe mode).
        threads: Most threads OpenVINO may use (None: every core).
        unknown: Answer "unknown" for images the run's out-of-distribution score rejects (``ood.json``);
            off: every row says ``unknown: false`` and ``ood_score: null``.
    """

    runtime: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    top_k: int = 3
    low_confidence: float = 0.5
    calibrated: bool = False
    safe_mode: bool = True
    threads: int | None = None
    unknown: bool = True

    def __post_init__(self) -> None:
        for name in ("unknown", "calibrated", "safe_mode"):  # 'no' is truthy: it turned calibration on
            check(isinstance(getattr(self, name), bool), f"{name} must be True or False", name, getattr(self, name))
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("top_k", self.top_k)
        check_fraction(self, "low_confidence", low_open=False, high_open=False)
        if self.threads is not None:
            check_positive_int("threads", self.threads)


@dataclass(frozen=True)
class ServeConfig:
    """The server's limits and access rules. Validated on creation.

    Attributes:
        max_upload_bytes: Largest accepted request body.
        max_batch: Most images per model call.
        max_wait_ms: How long the batcher waits after a first image for more (at most 10,000).
        top_k: Classes returned per image.
        request_timeout_s: Time allowed to receive a request body.
        max_pixels: Largest image decoded (width x height), checked from its header before decoding; well
            under training's limit, since every pixel of an upload costs the server memory and CPU.
        decode_timeout_s: Time one image may take to decode before the client gets 503.
        max_inflight_bytes: Bytes of request bodies held at once, counted as they arrive; more gets 503.
        client_share: The most of the server's image slots (``4 * max_batch``) and of ``max_inflight_bytes`` one
            client address may hold at once, so one client cannot crowd out the others (1.0: no per-client
            bound, e.g. behind a proxy that sends every request from one address without ``X-Forwarded-For``).
        api_key: Clients must send it (``Authorization: Bearer KEY`` or ``X-API-Key``); None: open.
        allowed_hosts: Host names accepted in the ``Host`` header (``"*"``: any).
        header_timeout_s: Time a client has to send a request's headers.
        max_header_bytes: Most bytes of a request's line and headers (more: 431 and the connection closes).
        max_connections_per_client: Open connections one client address may hold.
        max_connections: Open connections in all.
        model_name: The model's name in the Open Inference Protocol routes (``/v2/models/<name>``);
            None: the run folder's name.
        trusted_proxies: Addresses or networks of reverse proxies whose ``X-Forwarded-For`` names the client
            (their connections have only the global bound); empty: every client is its own TCP address and
            the header is ignored, so no client can claim another's share by sending it.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_batch: int = 32
    max_wait_ms: float = 5.0
    top_k: int = 3
    request_timeout_s: float = 30.0
    max_pixels: int = 16_000_000
    decode_timeout_s: float = 10.0
    max_inflight_bytes: int = 256 * 1024 * 1024
    client_share: float = 0.25
    api_key: str | None = field(default=None, repr=False)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    header_timeout_s: float = 10.0
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections_per_client: int = 32
    max_connections: int = 512
    model_name: str | None = None
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_batch",
            "top_k",
            "max_pixels",
            "max_inflight_bytes",
            "max_header_bytes",
            "max_connections_per_client",
            "max_connections",
        ):
            check_positive_int(name, getattr(self, name))
        check_fraction(self, "client_share", low_open=True, high_open=False)
        for name, highest in TIME_LIMITS.items():
            value = getattr(self, name)
            positive = name != "max_wait_ms"
            ok = is_finite_number(value) and (value > 0 if positive else value >= 0) and value <= highest
            interval = f"{'(' if positive else '['}0, {highest:,}]"
            check(ok, f"{name} must be a number in {interval}", name, value)
        check(
            self.api_key is None
            or (
                isinstance(self.api_key, str)
                and len(self.api_key) >= 16
                and self.api_key.isascii()
                and self.api_key.isprintable()
                and " " not in self.api_key
            ),
            # ASCII: a browser sends a header's other characters as Latin-1 bytes, or refuses to send them.
            "api_key must be at least 16 printable ASCII characters without spaces",
            "api_key",
            "<hidden>",
        )
        hosts = tuple(self.allowed_hosts) if isinstance(self.allowed_hosts, (tuple, list)) else ()
        check(
            bool(hosts) and all(isinstance(h, str) and h.strip() for h in hosts),
            "allowed_hosts must be a non-empty list of host names ('*' for any)",
            "allowed_hosts",
            self.allowed_hosts,
        )
        check(
            not any(_has_port(h) for h in hosts),
            "allowed_hosts must name hosts without a port (a Host header's port is not compared, so an entry with "
            "one would refuse every request)",
            "allowed_hosts",
            self.allowed_hosts,
        )
        object.__setattr__(self, "allowed_hosts", hosts)
        check(self.model_name is None or is_name(self.model_name), NAME_RULE, "model_name", self.model_name)
        proxies = tuple(self.trusted_proxies) if isinstance(self.trusted_proxies, (tuple, list)) else None
        check(
            proxies is not None and all(_is_network(p) for p in proxies),
            "trusted_proxies must be a list of IP addresses or networks (e.g. 127.0.0.1, 10.0.0.0/8)",
            "trusted_proxies",
            self.trusted_proxies,
        )
        object.__setattr__(self, "trusted_proxies", proxies)


def _has_port(host: str) -> bool:
    """Whether a host entry carries a port: ``name:8443`` or ``[::1]:8443`` (a bare IPv6 address has colons)."""
    host = host.strip()
    return "]:" in host if host.startswith("[") else host.count(":") == 1


def _is_network(text: object) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return isinstance(text, str)
