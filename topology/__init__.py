"""GPU topology of one node: link graph, nvidia-smi parsing, presets and k-GPU set choice."""
