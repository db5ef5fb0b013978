"""Settings read once from the environment into frozen structs; errors name the variable.

`load(cls, prefix)` maps each field `foo_bar` to `<PREFIX>FOO_BAR`; a field may
name its variable explicitly in `ENV_NAMES`. Lists are comma-separated. Nothing
else in tradeflow reads `os.environ`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import msgspec

from contracts.errors import ConfigError

T = TypeVar("T", bound=msgspec.Struct)
_CREDENTIALS = re.compile(r"//[^/]*@")  # up to the last @ before the host, as urlparse reads it
_PASSWORD_OPTION = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)   # ?password=, ?sentinel_password=


def redact(url: str) -> str:
    """A URL with any user:password part, and the value of any ...password= option, replaced by ***."""
    return _PASSWORD_OPTION.sub(r"\1***", _CREDENTIALS.sub("//***@", url))


def _env_name(cls: type, field: str, prefix: str) -> str:
    explicit: Mapping[str, str] = getattr(cls, "ENV_NAMES", {})
    return explicit.get(field) or f"{prefix}{field.upper()}"


def load(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` from the environment; ConfigError naming the variable on a bad value."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        name = _env_name(cls, field.name, prefix)
        if name in environ:
            value: Any = environ[name]
            if _is_list(field.type):
                value = [item.strip() for item in value.split(",") if item.strip()]
            raw[field.name] = value
    raw.update(overrides)
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = re.search(r"\$\.(\w+)", message)
        if match:
            message = f"{_env_name(cls, match.group(1), prefix)}: {message}"
        raise ConfigError(f"invalid setting: {message}") from None


def _is_list(tp: Any) -> bool:
    origin = getattr(tp, "__origin__", None)
    return origin in (list, tuple)


class Redacted:
    """Mixin for settings structs: `repr` hides credentials in URL fields."""

    __slots__ = ()
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        parts = []
        for name in self.__struct_fields__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if name in self.SECRET_FIELDS and value:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = redact(value)
            parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"
