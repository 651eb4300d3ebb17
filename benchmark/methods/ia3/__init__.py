"""(IA)^3 (Liu et al. 2022): a method package (``benchmark/methods/registry.py``): ``config.py`` (its YAML section,
registry entry and FLOPs), ``layer.py`` (its modules), ``setup.py`` (what a run adds and trains),
``adapterhub.py`` (AdapterHub's IA3Config)."""
