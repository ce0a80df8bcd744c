"""The field types of the API's bodies: text, email addresses, URLs.

Each type is checked by one regular expression that the OpenAPI schema shows as its
``pattern`` (plus lengths), so the schema states exactly what the server accepts. Values are
stored as sent: nothing is stripped, so a length limit counts what is stored. What a pattern
cannot say (which addresses a URL's host may have) is checked after it, with the SSRF
policy the fetcher and webhook sender apply at connect time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from lambdaloop.settings import get_runtime_settings

__all__ = [
    "EMAIL_PATTERN",
    "Email",
    "FetchUrl",
    "Message",
    "Name",
    "WebhookUrl",
    "fetch_url_pattern",
    "webhook_url_pattern",
]

# Control characters (Unicode category Cc: C0, DEL, C1) and the invisible bidirectional
# controls that reorder what a reader sees: marks (ALM, LRM, RLM), embeddings and overrides
# (U+202A-E), isolates (U+2066-9). Lone surrogates are refused too (not text: DynamoDB
# refuses them), outside the pattern: a schema's regex (Rust's, in some validators) cannot
# name them.
_CONTROLS = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_SURROGATE = re.compile("[\ud800-\udfff]")
# Space separators (category Zs) and the line and paragraph separators: a name may hold them,
# but not at either end (it is stored as sent, so " Ann" would be another name than "Ann").
_SPACES = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

#: A name: no control or bidi characters, no space at either end.
NAME_PATTERN = f"^[^{_CONTROLS}{_SPACES}]([^{_CONTROLS}]*[^{_CONTROLS}{_SPACES}])?$"
# What a message may hold besides: line feeds and tabs.
_MESSAGE_CONTROLS = _CONTROLS.replace(r"\x00-\x1f", r"\x00-\x08\x0b-\x1f", 1)
#: A message: no control or bidi characters but line feeds and tabs.
MESSAGE_PATTERN = f"^[^{_MESSAGE_CONTROLS}]+$"

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: An address: a dot-atom local part, a domain of labels with a TLD of letters (RFC 5322 is
#: far wider, and mail servers narrower; this is what real addresses look like).
EMAIL_PATTERN = f"^{_ATOM}(\\.{_ATOM})*@({_LABEL}\\.)+[A-Za-z]{{2,63}}$"

# A host name with a TLD of letters: IP literals are refused (the one address that makes
# sense here, loopback, is allowed by name in local mode).
_HOST_NAME = f"({_LABEL}\\.)+[A-Za-z]{{2,63}}"
_LOOPBACK = r"(localhost|127\.0\.0\.1|\[::1\])"
_ANY_PORT = (
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
)
_WEB_PORT = r"(:(80|443))?"
# Path, query and fragment: RFC 3986's characters, percent-escapes included.
_REST = r"([/?#][A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*)?"


def webhook_url_pattern(local_mode: bool) -> str:
    """Webhooks: https to a host name on 443 (or 80); in local mode also any port, and
    http or https to loopback (a receiver on the developer's machine)."""
    if local_mode:
        return f"^(https://{_HOST_NAME}|https?://{_LOOPBACK}){_ANY_PORT}{_REST}$"
    return f"^https://{_HOST_NAME}{_WEB_PORT}{_REST}$"


def fetch_url_pattern(local_mode: bool) -> str:
    """Fetch jobs: http or https to a host name on 80 or 443; in local mode any port, and
    loopback too."""
    if local_mode:
        return f"^https?://({_HOST_NAME}|{_LOOPBACK}){_ANY_PORT}{_REST}$"
    return f"^https?://{_HOST_NAME}{_WEB_PORT}{_REST}$"


def _local_mode() -> bool:
    return get_runtime_settings().local_mode


def _matches(pattern: str, value: str) -> bool:
    # fullmatch: "$" alone would let a final newline through.
    return re.fullmatch(pattern, value) is not None


class _Pattern:
    """Checks a string against a pattern (per mode, read when used) and shows it in the
    schema with what the pattern means."""

    def __init__(self, pattern: Any, problem: str, description: str) -> None:
        self._pattern = pattern  # a str, or a function of the local mode
        self._problem = problem
        self._description = description

    def pattern(self) -> str:
        return self._pattern if isinstance(self._pattern, str) else self._pattern(_local_mode())

    def __call__(self, value: str) -> str:
        if not _matches(self.pattern(), value):
            raise ValueError(self._problem)
        if _SURROGATE.search(value):
            raise ValueError("must be valid Unicode (no lone surrogates)")
        return value

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = self.pattern()
        json_schema.setdefault("description", self._description)
        return json_schema


_BIDI = "bidirectional controls (U+061C, U+200E-F, U+202A-E, U+2066-9) or lone surrogates"

_name = _Pattern(
    NAME_PATTERN,
    "must not hold control or bidi characters, nor start or end with a space",
    "Stored as sent: 1 to 100 characters, without control characters (NUL, tabs, line "
    f"breaks, ...), {_BIDI}, and not starting or ending with a space.",
)
_message = _Pattern(
    MESSAGE_PATTERN,
    "must not hold control or bidi characters (line feeds and tabs are allowed)",
    "The text, stored as sent: it may span lines (line feeds, tabs), and holds no other "
    f"control characters (NUL, CR, ...), nor {_BIDI}.",
)


def _email(value: str) -> str:
    if not _matches(EMAIL_PATTERN, value):
        raise ValueError("is not a valid email address")
    local, _, domain = value.rpartition("@")
    # Domains are case-insensitive; local parts are kept as given.
    return f"{local}@{domain.lower()}"


class _EmailSchema(_Pattern):
    def __call__(self, value: str) -> str:
        return _email(value)


_email_rule = _EmailSchema(
    EMAIL_PATTERN,
    "is not a valid email address",
    "An address such as ada@example.com: a dot-atom local part, a domain of labels "
    "with a TLD of letters (stored with the domain in lower case).",
)


def _ssrf_checked(kind: str) -> Any:
    def check(value: str) -> str:
        # The connector checks the address it connects to; this refuses at once what it
        # would refuse (imported here: only requests that carry a URL need it).
        from lambdaloop.ssrf import Policy

        if problem := Policy.for_user_urls(_local_mode()).url_problem(value):
            raise ValueError(f"cannot be used for {kind}: {problem}")
        return value

    return check


_webhook = _Pattern(
    webhook_url_pattern,
    "must be an https URL to a host name, on port 443 or 80 (in local mode also http or "
    "https to localhost, 127.0.0.1 or [::1], any port), without credentials",
    "Where notifications are POSTed: an https URL to a host name (no IP address, no "
    "credentials), port 443 or 80. In local mode also any port, and http to localhost, "
    "127.0.0.1 or [::1]. The address the name resolves to must be public.",
)
_fetch = _Pattern(
    fetch_url_pattern,
    "must be an http(s) URL to a host name, on port 80 or 443 (in local mode any port, "
    "and localhost, 127.0.0.1 or [::1] too), without credentials",
    "An http(s) URL to a host name (no IP address, no credentials), port 80 or 443. In "
    "local mode any port, and localhost, 127.0.0.1 or [::1] too. The address the name "
    "resolves to must be public.",
)

Name = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_name), _name]
Message = Annotated[str, AfterValidator(_message), _message]
Email = Annotated[str, Field(max_length=254), AfterValidator(_email_rule), _email_rule]
WebhookUrl = Annotated[
    str,
    Field(max_length=2048),
    AfterValidator(_webhook),
    AfterValidator(_ssrf_checked("webhooks")),
    _webhook,
]
FetchUrl = Annotated[
    str,
    Field(min_length=1, max_length=2048),
    AfterValidator(_fetch),
    AfterValidator(_ssrf_checked("fetch jobs")),
    _fetch,
]
