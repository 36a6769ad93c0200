"""Trace-driven placement simulator (`kvsched simulate`).

* :mod:`scheduler.simulate.trace`: a seeded workload generator (GPU pool, deployments that
  scale up and down, Zipf-popular models, gangs) and the reference trace;
* :mod:`scheduler.simulate.engine`: replays a trace against one policy on a ClusterStore,
  with node caches learned by the controller's ResidencyTracker;
* :mod:`scheduler.simulate.policies`: kvsched (the extender's filter/prioritize/bind path)
  and the baselines;
* :mod:`scheduler.simulate.metrics`: per-policy metrics, the table, JSON;
* :mod:`scheduler.simulate.plots`: PNG plots (matplotlib, optional).
"""
