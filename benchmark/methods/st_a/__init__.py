"""Single-task bottleneck adapters (the paper's ST-A: Pfeiffer, and ST-A Houlsby): a method package
(``benchmark/methods/registry.py``): ``config.py`` (the ``adapter:`` section, both kinds, FLOPs), ``layer.py``
(the adapter type's model API over ``modeling/adapters.py``, the module fusion and MT-A are built of too),
``setup.py`` (one adapter named after the task, trained with the head)."""
