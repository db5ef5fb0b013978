"""Hosts for the tests that cross a network: Linux network namespaces joined by veth links to a bridge
in a namespace of their own (the switch), all made by the test and removed after it. Nothing touches
the machine's own namespace: an observer that must reach the hosts is a namespace too.

    h0 ──┐
    h1 ──┤ switch (bridge)      each hN: 10.X.0.(N+1)/24 on eth0, lo up
    h2 ──┤
    h3 ──┘

`cut(host)` takes a host's link down on the switch side (its processes live on, unreachable, as when
a cable or a top-of-rack switch port fails); `restore(host)` brings it back.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address, and the command prefix that runs a program on it."""

    name: str
    address: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


class Network:
    """`count` hosts on one switch; `hosts[i]`, `cut(host)`, `restore(host)`, `close()`."""

    def __init__(self, count: int = 0) -> None:
        if not count:
            return   # a view (from_env): owns nothing
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.switch = f"tfsw{tag}"
        subnet = random.randrange(16, 250)
        self.hosts = [Host(f"tfh{i}{tag}", f"10.{subnet}.0.{i + 1}") for i in range(count)]
        self._made: list[str] = []
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    ENV = "TRADEFLOW_TEST_NETWORK"

    def to_env(self) -> dict[str, str]:
        """The network, for a process on one of its hosts that must see (and cut) it too: `from_env`."""
        return {self.ENV: ",".join([self.switch, *(f"{h.name}={h.address}" for h in self.hosts)])}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Network:
        """A view of the network `to_env` described; it removes nothing when closed."""
        switch, *hosts = (environ or os.environ)[cls.ENV].split(",")
        view = cls()
        view.switch, view._made = switch, []
        view.hosts = [Host(*entry.split("=", 1)) for entry in hosts]
        return view

    def _port(self, host: Host) -> str:
        return f"sw{self.hosts.index(host)}"

    def _make(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        sw = ["-n", self.switch]
        _ip(*sw, "link", "add", "br0", "type", "bridge")
        _ip(*sw, "link", "set", "br0", "up")
        _ip(*sw, "link", "set", "lo", "up")
        for host in self.hosts:
            _ip("netns", "add", host.name)
            self._made.append(host.name)
            port = self._port(host)
            # made inside the switch, one end moved to the host: nothing is ever in the machine's namespace
            _ip(*sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.name)
            _ip(*sw, "link", "set", port, "master", "br0")
            _ip(*sw, "link", "set", port, "up")
            h = ["-n", host.name]
            _ip(*h, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip(*h, "link", "set", "eth0", "up")
            _ip(*h, "link", "set", "lo", "up")

    def cut(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", self._port(host), "down")

    def restore(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", self._port(host), "up")

    def close(self) -> None:
        """Kill whatever still runs in the hosts, then remove every namespace this network made."""
        for name in reversed(self._made):
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
        self._made.clear()


@contextlib.contextmanager
def network(count: int) -> Iterator[Network]:
    net = Network(count)
    try:
        yield net
    finally:
        net.close()
