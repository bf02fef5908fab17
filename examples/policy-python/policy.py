"""An example egress-proxy policy in plain Python: no WIT, no wasm, so
`python -m unittest` tests it directly. `app.py` is the thin glue that exports it as
the component's `decider`.

The policy document (the `--routes` file, handed to `configure` as JSON):

    max_upload_bytes: 1048576        # optional, default 1 MiB
    hosts:
      - host: pypi.org               # GET and HEAD only
      - host: api.github.com
        uploads: true                # also POST, PUT and PATCH
        tokens:                      # path prefix -> secret, as `authorization: Bearer ...`
          /repos/acme/: GH_ACME_TOKEN
          /repos/acme-labs/: GH_LABS_TOKEN

What it decides, in order: an unlisted host is denied (403); a port other than the
scheme's default is denied (403); a CONNECT to a listed host is allowed; a method
other than GET and HEAD (or POST, PUT and PATCH on an `uploads` host) is denied (405);
an upload without `content-length` is denied (411) and a body over
`max_upload_bytes` is denied (413); a path under a token prefix (the longest one
wins) gets that token injected, over https only; anything else is allowed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

DEFAULT_MAX_UPLOAD_BYTES = 1 << 20
"""Largest request body allowed when the document does not say: 1 MiB."""

_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_READS = ("GET", "HEAD")
_UPLOADS = ("POST", "PUT", "PATCH")


@dataclass
class Request:
    """The request being decided (the client's address is left out: unused here)."""

    scheme: str  # "http" or "https" (also for the CONNECT that opens a tunnel)
    method: str  # upper-case as sent: "GET", "POST", ... or "CONNECT"
    host: str  # lower-case, no trailing dot
    port: int
    path: str  # path and query, normalised by the proxy; "" for a CONNECT


@dataclass
class Allow:
    rule: Optional[str]


@dataclass
class Deny:
    status: int
    reason: str
    rule: Optional[str]


@dataclass
class Literal:
    text: str


@dataclass
class Secret:
    name: str


@dataclass
class Inject:
    # (header name, value parts); the proxy resolves each Secret, the policy never
    # sees a secret's value.
    headers: List[tuple]
    rule: Optional[str]


Verdict = Union[Allow, Deny, Inject]

# Reads the values of one header, case-insensitively (the WIT `headers.get`).
GetHeader = Callable[[str], List[str]]


@dataclass
class Host:
    uploads: bool = False
    # (path prefix, secret name), longest prefix first.
    tokens: List[tuple] = field(default_factory=list)


@dataclass
class Policy:
    max_upload_bytes: int
    hosts: Dict[str, Host]

    @staticmethod
    def parse(text: str) -> "Policy":
        """Parse and check a policy document (JSON text); ValueError says what is wrong."""
        try:
            document = json.loads(text)
        except ValueError as error:
            raise ValueError(f"invalid policy document: {error}") from None
        _check_keys("the document", document, required={"hosts"}, optional={"max_upload_bytes"})
        max_upload_bytes = document.get("max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES)
        if type(max_upload_bytes) is not int or max_upload_bytes < 0:
            raise ValueError("invalid policy document: max_upload_bytes must be a whole number of bytes")
        if not isinstance(document["hosts"], list):
            raise ValueError("invalid policy document: hosts must be a list")
        hosts: Dict[str, Host] = {}
        for entry in document["hosts"]:
            name, host = _parse_host(entry)
            if name in hosts:
                raise ValueError(f"host `{name}` is listed twice")
            hosts[name] = host
        return Policy(max_upload_bytes, hosts)

    def summary(self) -> tuple:
        """(rules, secrets, rule ids) for `configure`: one rule per host, every secret
        named, and every rule id a verdict may carry (each host, and each host + token
        prefix)."""
        secrets = sorted({secret for host in self.hosts.values() for _, secret in host.tokens})
        rule_ids = sorted(
            [name for name in self.hosts]
            + [f"{name}{prefix}" for name, host in self.hosts.items() for prefix, _ in host.tokens]
        )
        return len(self.hosts), secrets, rule_ids

    def decide(self, req: Request, get_header: GetHeader) -> Verdict:
        """Decide one request. Reads only `content-length`, and only for requests that
        got past the host, port and method checks."""
        host = self.hosts.get(req.host)
        if host is None:
            return Deny(403, f"host `{req.host}` is not allowed", None)
        rule = req.host
        default_port = 443 if req.scheme == "https" else 80
        if req.port != default_port:
            return Deny(403, f"port {req.port} is not allowed for `{req.host}`; only {default_port}", rule)
        # A tunnel is decided on host and port; each request inside it comes next.
        if req.method == "CONNECT":
            return Allow(rule)

        upload = req.method in _UPLOADS
        if not (req.method in _READS or upload and host.uploads):
            allowed = "GET, HEAD, POST, PUT and PATCH" if host.uploads else "GET and HEAD"
            return Deny(405, f"method {req.method} is not allowed for `{req.host}`; only {allowed}", rule)
        denial = self._check_size(req, get_header, upload)
        if denial is not None:
            return denial

        token = _token_for(host, req.path)
        if token is None:
            return Allow(rule)
        prefix, secret = token
        if req.scheme == "http":
            return Deny(
                403,
                f"`{req.host}{prefix}` needs a credential, which is sent only over https; use https://",
                rule,
            )
        return Inject([("authorization", [Literal("Bearer "), Secret(secret)])], f"{req.host}{prefix}")

    def _check_size(self, req: Request, get_header: GetHeader, upload: bool) -> Optional[Deny]:
        """`content-length` must be at most max_upload_bytes, and an upload must send one
        (the proxy enforces that the body matches it)."""
        limit = self.max_upload_bytes
        values = get_header("content-length")
        if not values:
            if upload:
                return Deny(411, f"an upload must send content-length (at most {limit} bytes)", req.host)
            return None
        value = values[0].strip()
        if len(values) != 1 or not (value.isascii() and value.isdigit()):
            return Deny(400, "invalid content-length", req.host)
        length = int(value)
        if length > limit:
            return Deny(413, f"a body of {length} bytes is over the limit of {limit} bytes", req.host)
        return None


def _parse_host(entry: object) -> tuple:
    _check_keys("a host entry", entry, required={"host"}, optional={"uploads", "tokens"})
    name = entry["host"]
    if not isinstance(name, str) or not name or name != name.lower() or name.endswith("."):
        raise ValueError(f"host `{name}`: write host names in lower case, without a trailing dot")
    uploads = entry.get("uploads", False)
    tokens = entry.get("tokens", {})
    if not isinstance(uploads, bool) or not isinstance(tokens, dict):
        raise ValueError(f"host `{name}`: uploads must be true or false, tokens a map of path to secret")
    for prefix, secret in tokens.items():
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError(f"host `{name}`: token path `{prefix}` must start and end with `/`")
        if not isinstance(secret, str) or not _SECRET_NAME.fullmatch(secret):
            raise ValueError(f"host `{name}`: secret name `{secret}` must match [A-Za-z_][A-Za-z0-9_]*")
    # Longest prefix first, so the first match is the most specific one.
    ordered = sorted(tokens.items(), key=lambda item: (-len(item[0]), item[0]))
    return name, Host(uploads, ordered)


def _check_keys(what: str, value: object, required: set, optional: set) -> None:
    """Unknown keys are errors: a typo must not silently drop a rule."""
    if not isinstance(value, dict):
        raise ValueError(f"invalid policy document: {what} must be a map")
    unknown = sorted(set(value) - required - optional)
    if unknown:
        raise ValueError(f"invalid policy document: unknown field `{unknown[0]}` in {what}")
    missing = sorted(required - set(value))
    if missing:
        raise ValueError(f"invalid policy document: missing field `{missing[0]}` in {what}")


def _token_for(host: Host, path: str) -> Optional[tuple]:
    """The longest token prefix the path starts with, and its secret."""
    for prefix, secret in host.tokens:
        if path.startswith(prefix):
            return prefix, secret
    return None
