"""AdapterFusion over ST-A and over MT-A (the paper's two fusions), with static mixing and weight merging as
its ``mixing`` variants (issue 36): a method package (``benchmark/methods/registry.py``): ``config.py`` (the
``fusion:`` section, both kinds, their comparisons, FLOPs), ``setup.py`` (load or merge the sources, add the
fusion layer, its objective, and after training its attention and pruning). The fusion layer itself is the
core's (``modeling/fusion.py``, ``mixing.py``, ``merging.py``), since the model's adapter slots host it."""
