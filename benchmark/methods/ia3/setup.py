"""What a (IA)^3 run adds to the model (one vector per target linear layer, named after the task) and trains."""

from benchmark.training.recipe import one_module_setup

setup = one_module_setup("ia3")
