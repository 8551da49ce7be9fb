"""Remote variation back ends: an HTTP endpoint and a user-given command, with retries and a rate limit.

The HTTP protocol (``cdi-audit-variation/1``; ``cdi-audit serve`` implements it):

- ``POST URL?strength=S&seed=N[&prompt=TEXT][&class_label=K]`` with the image as the body
  (``Content-Type: image/png``, 8-bit RGB at the model's resolution). The answer is ``200`` with
  the varied image as PNG, of the same size. 429 and 5xx mean "try again later" (``Retry-After``
  is honoured); other 4xx mean the request is wrong and stop the audit.
- ``GET URL`` (optional) answers JSON ``{"protocol": "cdi-audit-variation/1", "sample_size": 512,
  "family": "latent", "conditioning": "text"}``, so an audit needs no options to describe the model.

Secrets: header values may name environment variables (``${API_KEY}``), expanded here and never
written anywhere; reports show header names and the URL without credentials or query values.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from cdi_audit.blackbox.variation import (
    PROTOCOL,
    BlackBoxTarget,
    CallStore,
    EndpointInfo,
    VariationBackend,
    VariationRequest,
    decode_png,
    encode_png,
)
from cdi_audit.errors import ModelUnavailable, SettingsProblem
from cdi_audit.results.schema import ModelInfo
from cdi_audit.rules import check_count, check_number, require

Result = TypeVar("Result")
ENVIRONMENT_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
FAMILIES = ("pixel", "latent")
CONDITIONINGS = ("none", "text", "class")
PLACEHOLDERS = ("{input}", "{output}", "{strength}", "{seed}", "{prompt}", "{class_label}")


class EndpointUnavailable(ModelUnavailable):
    """The endpoint cannot serve the audit (unreachable, refusing, or answering nonsense): exit 4."""


class TransientFailure(Exception):
    """A failed call worth repeating (network, timeout, 429, 5xx, an answer that is not an image)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """Each call is tried ``retries + 1`` times, waiting ``backoff`` seconds before the first retry and
    twice as long before each next one (at most ``max_wait``); one try may take ``timeout`` seconds."""

    retries: int = 5
    backoff: float = 1.0
    max_wait: float = 60.0
    timeout: float = 60.0


class RateLimiter:
    """Spaces the starts of calls at least 1 / ``max_rps`` seconds apart (None: no limit)."""

    def __init__(self, max_rps: float | None) -> None:
        self.interval = 0.0 if not max_rps else 1.0 / max_rps
        self._next_start = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self.interval
        if start > now:
            time.sleep(start - now)


def call_with_retries(attempt: Callable[[], Result], policy: RetryPolicy, what: str) -> Result:
    """``attempt()`` until it succeeds, retrying ``TransientFailure`` with exponential backoff."""
    for tries in range(policy.retries + 1):
        try:
            return attempt()
        except TransientFailure as failure:
            last = failure
            if tries == policy.retries:
                break
            wait = failure.retry_after if failure.retry_after is not None else policy.backoff * 2**tries
            time.sleep(min(wait, policy.max_wait))
    raise EndpointUnavailable(
        f"{what} failed {policy.retries + 1} time(s) in a row (last: {last}); calls that completed are "
        "stored, so re-running the same command resumes without repeating them."
    )


def redact_url(url: str) -> str:
    """The URL as reports may show it: no user or password, and query values replaced by '***'."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = ("***@" if parts.username or parts.password else "") + host + (f":{parts.port}" if parts.port else "")
    query = "&".join(f"{name}=***" for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_headers(specs: tuple[str, ...] | list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """'Name: value' strings -> headers, with ``${VAR}`` in values replaced from the environment.

    Raises ``ValueError`` (naming the variable, never a value) for a malformed header or a missing
    variable.
    """
    environ = os.environ if environ is None else environ
    headers = {}
    for spec in specs:
        name, separator, value = spec.partition(":")
        name = name.strip()
        if not separator or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            raise ValueError(f"a header must look like 'Name: value', e.g. 'Authorization: Bearer ${{API_KEY}}' "
                             f"(got one named {name!r})")
        missing = [var for var in ENVIRONMENT_REFERENCE.findall(value) if var not in environ]
        if missing:
            raise ValueError(f"the header {name} uses the environment variable {missing[0]}, which is not set")
        headers[name] = ENVIRONMENT_REFERENCE.sub(lambda match: environ[match.group(1)], value.strip())
    return headers


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _checked_image(content: bytes, request: VariationRequest, source: str) -> np.ndarray:
    """The answer as an image of the request's size; anything else is worth another try."""
    try:
        image = decode_png(content)
    except ValueError as error:
        raise TransientFailure(f"{source} answered with something that is not an image ({len(content)} bytes)"
                               ) from error
    if image.shape != request.image.shape:
        height, width = request.image.shape[:2]
        raise TransientFailure(f"{source} answered with a {image.shape[1]} x {image.shape[0]} image for a "
                               f"{width} x {height} request")
    return image


class HttpVariation(VariationBackend):
    """Variations from an HTTP endpoint speaking the protocol above."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, policy: RetryPolicy | None = None,
                 max_rps: float | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the endpoint must be an http:// or https:// URL (got {redact_url(url)!r})")
        self.url = url
        self.headers = dict(headers or {})
        self.policy = policy or RetryPolicy()
        self.limiter = RateLimiter(max_rps)
        self.identity = f"http|{url}"
        self.display = redact_url(url)

    def describe(self) -> EndpointInfo | None:
        """The endpoint's own description (GET), or None when it gives none."""
        def attempt() -> bytes | None:
            try:
                return self._send(urllib.request.Request(self.url, headers=self.headers, method="GET"))
            except EndpointUnavailable:
                return None  # 404, 405...: the endpoint does not describe itself

        content = call_with_retries(attempt, self.policy, f"Reaching the endpoint {self.display}")
        try:
            data = json.loads(content or b"")
            family, conditioning = data["family"], data.get("conditioning", "none")
            if data["protocol"] != PROTOCOL or family not in FAMILIES or conditioning not in CONDITIONINGS:
                return None
            return EndpointInfo(int(data["sample_size"]), family, conditioning)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def vary(self, request: VariationRequest) -> np.ndarray:
        query = {"strength": repr(float(request.strength)), "seed": str(request.seed)}
        if request.prompt is not None:
            query["prompt"] = request.prompt
        if request.class_label is not None:
            query["class_label"] = str(request.class_label)
        separator = "&" if urllib.parse.urlsplit(self.url).query else "?"
        url = self.url + separator + urllib.parse.urlencode(query)
        body = encode_png(request.image)
        headers = {**self.headers, "Content-Type": "image/png", "Accept": "image/png"}

        def attempt() -> np.ndarray:
            content = self._send(urllib.request.Request(url, data=body, headers=headers, method="POST"))
            return _checked_image(content, request, f"The endpoint {self.display}")

        return call_with_retries(attempt, self.policy, f"A call to the endpoint {self.display}")

    def _send(self, request: urllib.request.Request) -> bytes:
        """One HTTP exchange: the body of a 2xx answer; ``TransientFailure`` for what may pass,
        ``EndpointUnavailable`` for a refusal that will not."""
        self.limiter.wait()
        try:
            with urllib.request.urlopen(request, timeout=self.policy.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            status = f"HTTP {error.code} {error.reason}"
            if error.code in (408, 429) or error.code >= 500:
                raise TransientFailure(status, _retry_after(error.headers.get("Retry-After"))) from None
            raise EndpointUnavailable(
                f"The endpoint {self.display} refused the request ({status}); check the URL, the --header "
                "options (an API key?) and that it speaks the cdi-audit-variation/1 protocol (see the README)."
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", None) or error
            if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError):
                reason = f"no answer within {self.policy.timeout:g} s"
            raise TransientFailure(f"{type(error).__name__}: {reason}") from None


class CommandVariation(VariationBackend):
    """Variations from a program: ``prog {input} {output} {strength} {seed}`` writes the varied image
    (PNG) to ``{output}``; ``{prompt}`` and ``{class_label}`` are filled in for conditional models.
    The template is split like a shell line but never run through a shell."""

    def __init__(self, template: str, policy: RetryPolicy | None = None, max_rps: float | None = None) -> None:
        self.arguments = shlex.split(template)
        if not self.arguments or not all(p in template for p in ("{input}", "{output}")):
            raise ValueError("the endpoint command must contain {input} and {output}, e.g. "
                             "'python vary.py {input} {output} {strength} {seed}'")
        self.policy = policy or RetryPolicy()
        self.limiter = RateLimiter(max_rps)
        self.identity = f"command|{template}"
        self.display = template

    def vary(self, request: VariationRequest) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="cdi-audit-call-") as folder:
            source, result = Path(folder) / "input.png", Path(folder) / "output.png"
            source.write_bytes(encode_png(request.image))
            values = {"{input}": str(source), "{output}": str(result), "{strength}": repr(float(request.strength)),
                      "{seed}": str(request.seed), "{prompt}": request.prompt or "",
                      "{class_label}": "" if request.class_label is None else str(request.class_label)}
            arguments = [_fill(argument, values) for argument in self.arguments]

            def attempt() -> np.ndarray:
                result.unlink(missing_ok=True)
                self.limiter.wait()
                try:
                    completed = subprocess.run(arguments, capture_output=True, timeout=self.policy.timeout,
                                               check=False)
                except FileNotFoundError:
                    raise EndpointUnavailable(f"The endpoint command's program {arguments[0]!r} was not found."
                                              ) from None
                except subprocess.TimeoutExpired:
                    raise TransientFailure(f"no result within {self.policy.timeout:g} s") from None
                if completed.returncode != 0:
                    last_line = (completed.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
                    raise TransientFailure(f"exit status {completed.returncode}: {last_line[:200]}")
                if not result.is_file():
                    raise TransientFailure("the command wrote no {output} file")
                return _checked_image(result.read_bytes(), request, "The endpoint command")

            return call_with_retries(attempt, self.policy, "The endpoint command")


def _fill(argument: str, values: dict[str, str]) -> str:
    for placeholder in PLACEHOLDERS:
        argument = argument.replace(placeholder, values[placeholder])
    return argument


@dataclass(frozen=True, kw_only=True)
class EndpointSettings:
    """How to reach a black-box model: an HTTP ``url`` or a ``command`` template, and what to assume
    about the model when the endpoint does not describe itself."""

    url: str | None = None
    command: str | None = None
    headers: tuple[str, ...] = ()  # 'Name: value', values may hold ${ENV_VAR}
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 1.0
    max_rps: float | None = None
    image_size: int | None = None
    family: str | None = None  # "pixel" or "latent"
    conditioning: str | None = None  # "none", "text" or "class"

    def __post_init__(self) -> None:
        require((self.url is None) != (self.command is None), "endpoint",
                "must be given as a URL or as a command, not both and not neither.")
        check_number(self.timeout, "endpoint_timeout", 0.1)
        check_count(self.retries, "retries", least=0)
        check_number(self.backoff, "retry_backoff", 0)
        if self.max_rps is not None:
            check_number(self.max_rps, "max_rps", 0.001)
        if self.image_size is not None:
            check_count(self.image_size, "image_size", least=8)
        require(self.family in (None, "pixel", "latent"), "endpoint_family",
                f"must be 'pixel' or 'latent', not {self.family!r}.")
        require(self.conditioning in (None, "none", "text", "class"), "endpoint_conditioning",
                f"must be 'none', 'text' or 'class', not {self.conditioning!r}.")

    def public(self) -> dict[str, str | int | float | None]:
        """The settings as reports record them: no header values, no credentials in the URL."""
        return {
            "endpoint": redact_url(self.url) if self.url else None,
            "endpoint_command": self.command,
            "endpoint_headers": ", ".join(spec.partition(":")[0].strip() for spec in self.headers) or None,
            "endpoint_timeout": self.timeout,
            "endpoint_retries": self.retries,
            "endpoint_max_rps": self.max_rps,
            "endpoint_image_size": self.image_size,
            "endpoint_family": self.family,
            "endpoint_conditioning": self.conditioning,
        }


def open_endpoint(settings: EndpointSettings, store_root: Path | None) -> BlackBoxTarget:
    """The ``BlackBoxTarget`` for an endpoint: its back end, what it serves (its own description,
    or the settings'), and the store of completed calls under ``store_root`` (None: no store)."""
    policy = RetryPolicy(settings.retries, settings.backoff, timeout=settings.timeout)
    try:
        if settings.url is not None:
            backend: VariationBackend = HttpVariation(settings.url, parse_headers(settings.headers), policy,
                                                      settings.max_rps)
        else:
            backend = CommandVariation(settings.command or "", policy, settings.max_rps)
    except ValueError as error:
        raise SettingsProblem(f"The endpoint cannot be used: {error}.") from None
    described = backend.describe() if isinstance(backend, HttpVariation) else None
    size = settings.image_size or (described.sample_size if described else None)
    if size is None:
        raise SettingsProblem(
            f"The endpoint {backend.display} does not describe itself (GET answers no cdi-audit-variation/1 JSON); "
            "give the resolution it works at with --image-size (e.g. 512), and --endpoint-family latent or pixel."
        )
    info = EndpointInfo(
        size,
        settings.family or (described.family if described else "latent"),
        settings.conditioning or (described.conditioning if described else "none"),
    )
    description = ModelInfo(
        path=backend.display,
        fingerprint=hashlib.sha256(backend.identity.encode()).hexdigest(),
        family=f"image-to-image endpoint ({info.family} model, {info.conditioning} conditioning)",
        sample_size=info.sample_size,
        num_train_timesteps=None,
        prediction_type=None,
        device="remote",
        dtype="unknown",
        access="black",
        endpoint=backend.display,
    )
    store = CallStore(store_root, backend.identity) if store_root is not None else None
    return BlackBoxTarget(backend, info, description, store)
