"""kvsched: a KV-cache-aware kube-scheduler extender for LLM-serving pods."""

__version__ = "0.1.0"
