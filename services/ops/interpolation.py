"""Compose's variable interpolation of one string (the Compose Specification, "Interpolation"): a
template and the variables in, the text out.

    $VAR  ${VAR}                 the value; unset: a blank string (and the name in `missing`)
    ${VAR:-default} ${VAR-default}  the default when VAR is unset or empty (`:-`), or only unset (`-`)
    ${VAR:?err}     ${VAR?err}      a ConfigError saying `err` when VAR is unset or empty, or only unset
    ${VAR:+other}   ${VAR+other}    `other` when VAR is set and not empty, or only set; else blank
    $$                              a literal $

Defaults, errors and replacements are templates themselves, evaluated only when used (`${A:-${B:-c}}`).
A `$` that starts no variable (`$1`, `$ `) stays as it is; `${` without its `}`, or a braced text that is
not a name with one of these operators (`${A B}`, `${A/x/y}`), is a ConfigError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from contracts.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"\$\$|\$\{?(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def substitute(text: str, variables: Mapping[str, str], where: str = "", missing: set[str] | None = None) -> str:
    """`text` with its variables replaced; `where` (file and key) starts every error's message."""
    out, i = [], 0
    while (start := text.find("$", i)) >= 0:
        out.append(text[i:start])
        after = text[start + 1:start + 2]
        if after == "$":
            out.append("$")
            i = start + 2
        elif after == "{":
            end = _closing(text, start + 2, where)
            out.append(_braced(text[start + 2:end], variables, where, missing))
            i = end + 1
        elif name := _NAME.match(text, start + 1):
            out.append(_value(name.group(), variables, missing))
            i = name.end()
        else:
            out.append("$")
            i = start + 1
    out.append(text[i:])
    return "".join(out)


def references(text: str) -> set[str]:
    """Every variable `text` names, those in defaults and messages too."""
    return {m.group("name") for m in _REFERENCE.finditer(text) if m.group("name")}


def _closing(text: str, i: int, where: str) -> int:
    """The index of the `}` that closes the `${` before `i`, nested ones counted."""
    depth = 1
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ConfigError(f"{where}: unterminated ${{ in {text[:80]!r}")


def _braced(body: str, variables: Mapping[str, str], where: str, missing: set[str] | None) -> str:
    name = _NAME.match(body)
    rest = body[name.end():] if name else body
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None) if rest else ""
    if name is None or operator is None:
        raise ConfigError(f"{where}: invalid variable ${{{body[:80]}}} (a name, then :- - :? ? :+ or +)")
    key, arg = name.group(), rest[len(operator):]
    is_set = key in variables
    full = is_set and variables[key] != ""
    if operator == "":
        return _value(key, variables, missing)
    if operator in (":-", "-"):
        return variables[key] if (full if operator == ":-" else is_set) else substitute(arg, variables, where, missing)
    if operator in (":+", "+"):
        return substitute(arg, variables, where, missing) if (full if operator == ":+" else is_set) else ""
    if not (full if operator == ":?" else is_set):
        raise ConfigError(f"{where}: ${{{key}}} is required: {substitute(arg, variables, where, missing) or 'not set'}")
    return variables[key]


def _value(name: str, variables: Mapping[str, str], missing: set[str] | None) -> str:
    if name not in variables and missing is not None:
        missing.add(name)
    return variables.get(name, "")
