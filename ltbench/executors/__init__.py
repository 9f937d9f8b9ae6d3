"""Executors: where a suite's jobs run. `local` runs them here, one after another; `ray` runs each
as a Ray task on a cluster. Both call `suites.execute.execute` for every job, so a job trains,
tunes or fuses the same way wherever it runs."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..store.index import Registry
    from ..suites.schema import Suite

EXECUTORS = ("local", "ray")


def check_executor(executor: str, address: str | None) -> None:
    """Bad --executor / --address: one line before anything runs."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ConfigError(f"--address {address!r} needs --executor ray")
    if address is not None and address != "auto" and not address.startswith("ray://") and ":" not in address:
        raise ConfigError(f"--address must be auto, ray://HOST:PORT or HOST:PORT, got {address!r}")


def run_suite(suite: "Suite", registry: "Registry | None" = None, console: Console | None = None,
              quiet: bool = False, executor: str = "local", address: str | None = None) -> list[str]:
    """Train every run of the suite that is not registered yet, then fit its fusions; the experts' names.

    `executor="ray"` runs them as Ray tasks (at `address`), else here, in order."""
    from ..store.index import Registry

    check_executor(executor, address)
    registry = registry or Registry()
    if executor == "ray":
        from .ray import run_suite_ray

        return run_suite_ray(suite, registry, address=address, console=console, quiet=quiet)
    from .local import run_local

    return run_local(suite, registry, console=console, quiet=quiet)
