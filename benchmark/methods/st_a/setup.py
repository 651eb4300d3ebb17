"""What an ST-A run (Pfeiffer or Houlsby) adds: one adapter named after the task, trained with the head."""

from benchmark.training.recipe import one_module_setup

setup = one_module_setup("adapter")
