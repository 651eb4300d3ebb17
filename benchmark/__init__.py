"""AdapterFusion-Bench: a reproducibility benchmark for AdapterFusion (Pfeiffer et al., EACL 2021).

Data flows one way: spec -> plan -> run -> result -> report.
"""

__version__ = "0.1.0"
