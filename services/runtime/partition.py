"""Replicas of a per-symbol stateful service, each owning a share of the symbols.

A stateful agent keeps state per symbol and needs a symbol's inputs in stream order, so two
replicas on one durable (each getting whichever messages come next) would each see part of a
symbol's bars. Replicas of such a service partition the symbols instead: replica `i` of `n`
(TRADEFLOW_PARTITION=i/n) owns every n-th symbol of TRADEFLOW_SYMBOLS in sorted order, starting
at the i-th (so the shares differ by at most one symbol), and has a durable of its own,
`<service>-p<i>of<n>`, that the server filters to those symbols' subjects. Every symbol has
exactly one owner, its inputs come to it in stream order, and the outputs are the ones a single
replica would make (ids derive from the service name and the input, not from the replica); the
replicas share the service's dedup registry.

Give every replica the same TRADEFLOW_SYMBOLS. The layout is fixed for a deployment's life: a
new layout (other symbols, another n) means new durables, which start from what the stream holds
with empty state, so change it only on a fresh stream. A symbol outside TRADEFLOW_SYMBOLS is
consumed by no replica: its bars stay in the stream unprocessed, so list every symbol the data
service publishes.

Only agents whose state is per symbol can be partitioned (`partitionable = True`: strategy,
quant); risk, execution and audit keep a portfolio across symbols and run as one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.errors import ConfigError
from contracts.subjects import SYMBOL_RE

_SPEC = re.compile(r"(\d{1,3})/(\d{1,3})")


@dataclass(frozen=True)
class Partition:
    """Replica `index` of `count`, over the symbol universe `symbols`."""

    index: int
    count: int
    symbols: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str, symbols: Sequence[str]) -> Partition:
        """`i/n` (0 <= i < n) over `symbols`; ConfigError naming the setting otherwise."""
        match = _SPEC.fullmatch(spec.strip())
        if not match:
            raise ConfigError(f"TRADEFLOW_PARTITION: {spec!r} is not i/n (replica i of n, counted from 0), e.g. 0/2")
        index, count = int(match.group(1)), int(match.group(2))
        if not 0 <= index < count:
            raise ConfigError(f"TRADEFLOW_PARTITION: replica {index} of {count} does not exist (0 to {count - 1})")
        if not symbols:
            raise ConfigError("TRADEFLOW_PARTITION needs TRADEFLOW_SYMBOLS: the symbols the replicas share out")
        if bad := [s for s in symbols if not SYMBOL_RE.fullmatch(s)]:
            raise ConfigError("TRADEFLOW_SYMBOLS: not a symbol ([A-Z0-9._-], 1 to 32): "
                              f"{', '.join(map(repr, bad[:5]))}")
        partition = cls(index, count, tuple(sorted(set(symbols))))
        if count > 1 and not partition.owned:
            raise ConfigError(f"TRADEFLOW_PARTITION: replica {index} of {count} owns none of the "
                              f"{len(partition.symbols)} symbols in TRADEFLOW_SYMBOLS: run fewer replicas")
        return partition

    @property
    def owned(self) -> tuple[str, ...]:
        return self.symbols[self.index::self.count]

    def durable(self, service: str) -> str:
        return f"{service}-p{self.index}of{self.count}"

    def filters(self, patterns: Sequence[str]) -> tuple[str, ...]:
        """The consumer's subjects: each `<stage>.>` pattern narrowed to the owned symbols."""
        out = []
        for pattern in patterns:
            if not pattern.endswith(".>"):
                raise ConfigError(f"cannot partition the subjects {pattern!r}: they do not end in a symbol")
            out += [f"{pattern[:-1]}{symbol}" for symbol in self.owned]
        return tuple(out)
