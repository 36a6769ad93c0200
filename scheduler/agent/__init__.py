"""The node agent (`kvsched agent`): what one GPU node has, written to its NodeInventory.

* ``gpus``: GPUs and their links through NVML, else ``nvidia-smi``;
* ``cache_scan``: models in the node's model cache folders, and whether they sit in page cache;
* ``podresources``: the GPUs the kubelet really gave each pod, and the ones it offers (its
  PodResources gRPC API; client generated from the kubelet's own api.proto in
  ``podresources_v1``): the truth that replaces kvsched's predictions;
* ``report``: the NodeInventory status from those, and the conflict-safe write of it;
* ``run``: the loop behind ``kvsched agent`` (scheduler/commands/agent_cmd.py).

Nothing here crashes on a bad node: a missing driver, an unreadable file or a half-written
download is a log line (and a ``problems`` entry), and the rest of the report still goes out.
"""
