"""Trace-driven placement simulator (`kvsched simulate`).

* :mod:`scheduler.simulate.trace`: a seeded workload generator (GPU pool, deployments that
  scale up and down, Zipf-popular models, gangs) and the reference trace;
* :mod:`scheduler.simulate.engine`: replays a trace against one policy on a ClusterStore,
  with node caches learned by the controller's ResidencyTracker;
* :mod:`scheduler.simulate.policies`: kvsched (the extender's filter/prioritize/bind path)
  and the baselines; they choose nodes only;
* :mod:`scheduler.simulate.kubelet`: the GPUs a pod gets on its node, the NVIDIA device
  plugin's best-effort choice over the free GPUs in the kubelet's random order (for every
  policy, and for hack/bench_scheduler.py);
* :mod:`scheduler.simulate.metrics`: per-policy metrics, the table, JSON;
* :mod:`scheduler.simulate.plots`: PNG plots (matplotlib, optional).
"""
