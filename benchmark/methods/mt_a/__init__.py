"""MT-A (Stickland & Murray 2019, the paper's multi-task adapters): one run over many tasks that trains an adapter
and a head per task together with the encoder (``benchmark/methods/registry.py``): ``config.py`` (the ``mt_a:``
section, the kind), ``setup.py`` (a whole ``recipe``: its run is not one task's)."""
