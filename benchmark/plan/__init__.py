"""The planner: an experiment spec -> runs with stable ids (``build.build_plan``), the ``Run`` and
``Plan`` records that the recipes and the runner read (``run.py``), and what a run id is made of
(``identity.py``)."""
