"""What-if results as text: per-stage counts, the first differences, the portfolio before and after."""

from __future__ import annotations

from contracts.events import Event
from replay.whatif import Difference, Performance, WhatIf

NO_DIFFERENCES = "no differences: the logic reproduces the recorded history"


def format_diff(w: WhatIf, *, limit: int = 20) -> str:
    """A readable report: counts per stage, the first `limit` differences, the portfolio before -> after."""
    lines = [f"what-if over {w.bars:,} bars in {w.window}", "",
             f"{'stage':<16}{'recorded':>10}{'simulated':>11}{'added':>8}{'removed':>9}{'changed':>9}"]
    lines += [f"{s.stage:<16}{s.recorded:>10,}{s.simulated:>11,}{s.added:>8,}{s.removed:>9,}{s.changed:>9,}"
              for s in w.stages]
    if w.identical:
        lines += ["", NO_DIFFERENCES]
    else:
        lines += ["", f"first {min(limit, len(w.differences))} of {len(w.differences):,} differences:"]
        lines += [_difference_line(d) for d in w.differences[:limit]]
    lines += ["", *_performance_lines(w.before, w.after)]
    if w.skipped:
        lines += ["", f"skipped {len(w.skipped)} undecodable recorded events:"]
        lines += [f"  {s.id} {s.subject}: {s.reason}" for s in w.skipped[:limit]]
    if w.dead_letters:
        lines += ["", "simulated dead letters: " + ", ".join(f"{k} {n:,}" for k, n in w.dead_letters.items())]
    return "\n".join(lines)


def _performance_lines(before: Performance, after: Performance) -> list[str]:
    """before, after and change of each figure."""
    lines = [f"{'':<16}{'before':>16}{'after':>16}{'change':>16}"]
    for label, field in (("equity", "equity"), ("pnl", "pnl"), ("realised pnl", "realized_pnl"),
                         ("return %", "return_pct"), ("max drawdown %", "max_drawdown_pct"), ("trades", "trades"),
                         ("fills", "fills")):
        old, new = getattr(before, field), getattr(after, field)
        spec = ",.2f" if isinstance(old, float) else ","
        lines.append(f"{label:<16}{old:>16{spec}}{new:>16{spec}}{new - old:>+16{spec}}")
    return lines


def _difference_line(d: Difference) -> str:
    """`time stage kind event key`, and for a changed event what changed."""
    line = f"  {d.event.ts:%Y-%m-%d %H:%M}  {d.stage:<15} {d.kind:<8} {_event_text(d.event):<36} {d.key[:12]}"
    if d.kind == "changed":
        line += "\n" + " " * 21 + "; ".join(_changes(d))
    return line


def _changes(d: Difference) -> list[str]:
    """`field old -> new` per changed field; a mapping's changed entries as `field.key old -> new`."""
    out = []
    for field in d.fields:
        old, new = getattr(d.recorded, field), getattr(d.simulated, field)
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{field}.{k} {_value(old.get(k))} -> {_value(new.get(k))}"
                    for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        else:
            out.append(f"{field} {_value(old)} -> {_value(new)}")
    return out


def _event_text(event: Event) -> str:
    """`side [quantity] SYMBOL [@ price] [(rule)]`."""
    quantity = getattr(event, "quantity", None)
    text = f"{event.side} {'' if quantity is None else f'{quantity:g} '}{event.symbol}"
    if (price := getattr(event, "price", None)) is not None:
        text += f" @ {price:,.2f}"
    if (rule := getattr(event, "rule", None)) is not None:
        text += f" ({rule})"
    return text


def _value(value: object) -> str:
    """A field's value, short: floats to 8 significant digits."""
    return f"{value:.8g}" if isinstance(value, float) else str(value)
