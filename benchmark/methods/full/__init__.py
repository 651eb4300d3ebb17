"""Full fine-tuning (the paper's Full): the encoder and the head train (``benchmark/methods/registry.py``)."""
