"""ResidencySettings: how pod history becomes residency, and how long an agent's word lasts.

Both sides of a NodeInventory read these: the controller's residency tracker
(scheduler.controller.residency) and the merge of the agent's and the controller's views
(scheduler.inventory.merge). They live with the inventory, which both depend on, so that the
inventory package depends on nothing of the controller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ResidencySettings"]


@dataclass(frozen=True)
class ResidencySettings:
    """How the controller turns pod history into residency.

    ``host_memory_ttl_s``: seconds a model counts as in the host page cache after its last
    pod on the node stopped; after that it counts as on local disk.
    ``default_cache_capacity_bytes``: a node's model-cache capacity when neither an agent's
    inventory nor the node label ``kvsched.io/model-cache-bytes`` states one.
    ``agent_stale_after_s``: an agent report whose ``observedAt`` is older than this no longer
    wins over the controller's own picture (the agent is presumed gone).
    ``max_models_per_node``: most models remembered per node (the CRD accepts 1024); the
    least recently used beyond it are forgotten like evicted ones.
    """

    host_memory_ttl_s: float = 1800.0
    default_cache_capacity_bytes: int = 2 * 2**40
    agent_stale_after_s: float = 600.0
    max_models_per_node: int = 1024

    def __post_init__(self) -> None:
        if not math.isfinite(self.host_memory_ttl_s) or self.host_memory_ttl_s < 0:
            raise ValueError(f"host_memory_ttl_s must be >= 0, not {self.host_memory_ttl_s}")
        if self.default_cache_capacity_bytes < 0:
            raise ValueError(
                f"default_cache_capacity_bytes must be >= 0, not "
                f"{self.default_cache_capacity_bytes}"
            )
        if not math.isfinite(self.agent_stale_after_s) or self.agent_stale_after_s <= 0:
            raise ValueError(f"agent_stale_after_s must be > 0, not {self.agent_stale_after_s}")
        if self.max_models_per_node < 1:
            raise ValueError(f"max_models_per_node must be >= 1, not {self.max_models_per_node}")
