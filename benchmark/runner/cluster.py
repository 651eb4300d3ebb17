"""What a Slurm run asks of the cluster: partition, time, GPUs/CPUs/memory per run, extra sbatch options.

Read from a small YAML file (``afbench run ... --executor slurm --cluster specs/clusters/NAME.yaml``)
validated like every spec (unknown keys are errors, one paragraph naming file, field and fix); each
field can be overridden on the command line. ``specs/clusters/`` is not part of the spec registry.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from benchmark.errors import BenchError
from benchmark.spec.loader import read_yaml, validate_model


class ClusterSpec(BaseModel):
    """Per-run resources: every pending run of a plan becomes one Slurm job with these."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None  # None: the cluster's default partition
    time_min: int = Field(120, ge=1)  # wall-clock limit per run, minutes
    gpus_per_run: int | None = Field(None, ge=0)  # None: 1 when the run's device is cuda, else 0
    cpus_per_run: int = Field(1, ge=1)  # also the torch thread count of the run
    mem_gb: float | None = Field(None, gt=0)  # None: the partition's default
    array_parallelism: int | None = Field(None, ge=1)  # runs sharing their dependencies go in one array %N
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)  # extra #SBATCH --key=value
    setup: list[str] = Field(default_factory=list)  # shell lines run before each job (module load ...)
    log_dir: str | None = None  # default: results/<experiment>/.slurm/


def load_cluster(path: str | Path | None) -> ClusterSpec:
    """The cluster file's settings, or the defaults when no file is given."""
    if path is None:
        return ClusterSpec()
    return validate_model(ClusterSpec, read_yaml(Path(path)), file=str(path))


def parse_sbatch_options(items: list[str] | None, *, file: str | None = None) -> dict[str, str | bool]:
    """``--sbatch KEY=VALUE`` (or a bare ``KEY`` for a flag such as ``exclusive``) as a dict."""
    out: dict[str, str | bool] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise BenchError(f"--sbatch {item!r} names no option", field="--sbatch", file=file,
                             fix="write --sbatch KEY=VALUE, e.g. --sbatch account=myproject")
        out[key.replace("_", "-")] = value if sep else True
    return out
