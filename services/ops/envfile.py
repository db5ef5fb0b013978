"""A `.env` file read as Compose reads it: a path and the environment in, the file's variables out.

python-dotenv's parser reads the lines (comments, `export `, single and double quotes, escapes in
double quotes, an inline ` # comment` after an unquoted value); its own expansion knows only ${VAR}
and ${VAR:-default} and expands single-quoted values too, so Compose's interpolation is applied here
instead: to unquoted and double-quoted values, never to single-quoted ones, each seeing the environment
first, then the lines above it (compose-go's order).

dotenv.parser is the one module of python-dotenv used, and only here (pinned to 1.x in pyproject).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

from dotenv.parser import parse_stream

from contracts.errors import ConfigError
from services.ops.interpolation import substitute

_SINGLE_QUOTED = re.compile(r"\s*(?:export\s+)?[^=]+=\s*'")


def read_env_file(path: Path, environment: Mapping[str, str]) -> dict[str, str]:
    """The variables `path` sets (a line with no `=` sets nothing), interpolated."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        where = f"{path}:{binding.original.line}"
        if binding.error:
            raise ConfigError(f"{where}: not a VARIABLE=value line: {binding.original.string.strip()[:80]!r}")
        if binding.key is None or binding.value is None:
            continue
        literal = _SINGLE_QUOTED.match(binding.original.string)
        values[binding.key] = binding.value if literal else substitute(binding.value, {**values, **environment},
                                                                       where)
    return values

