"""Head (the paper's baseline): only a task head over the frozen encoder (``benchmark/methods/registry.py``)."""
