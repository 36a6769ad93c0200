"""The kvsched controller: keeps NodeInventory objects true from what the cluster shows.

`residency` is its pure core (what pods say about model residency and GPU allocations);
the Kubernetes side lives in its own modules.
"""
