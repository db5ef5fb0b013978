"""What a service runs: tradeflow's version, its interpreter's and nats-py's (`tradeflow_build_info`)."""

from __future__ import annotations

import platform
from importlib import metadata


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "0.0.0"


def version() -> str:
    """tradeflow's version, as the package says (0.0.0 when run from a tree that is not installed)."""
    return _installed("tradeflow")


def build_labels() -> dict[str, str]:
    """`tradeflow_build_info`'s labels but the service: version, python (implementation and version), nats_py."""
    return {"version": version(), "python": f"{platform.python_implementation()} {platform.python_version()}",
            "nats_py": _installed("nats-py")}
