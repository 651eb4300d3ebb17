"""Developer and reproduction entry points.

    nox -s tests                 # the CI test command (README)
    nox -s reproduce -- quick    # run an experiment grid (default: quick)
    nox -s report -- quick       # render reports/<experiment>.{md,html,tex}
    nox -s lint                  # ruff
    nox -s tracking              # the tracking tests with TensorBoard, MLflow, W&B and Trackio installed
    nox -s parity                # compare our modules with AdapterHub `adapters` 1.3.0
    nox -s perf                  # training-step throughput, ours vs AdapterHub
    nox -s gpu                   # the CUDA path: smoke grid on cuda, GPU vs CPU logits, perf on BERT-base shapes
    nox -s slurm                 # --executor slurm on a one-node Slurm cluster brought up here (root)

Torch: by default every session installs ``torch==2.13.0`` (a CPU build that lies on local disk on
the project machines) *before* the package, so pip never pulls a multi-GB CUDA build. GPU users set
``AFBENCH_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`` (any pip
arguments), or ``AFBENCH_TORCH=skip`` together with ``nox --no-venv`` to use the current interpreter.
"""

from __future__ import annotations

import os
import shlex
import tempfile

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "uv|virtualenv"  # uv when it is on PATH: set-up in seconds

TORCH = os.environ.get("AFBENCH_TORCH", "torch==2.13.0")
REFERENCE = ["transformers==4.57.6", "adapters==1.3.0"]


LOCK = "requirements.lock"


def _uv(session: nox.Session) -> bool:
    return getattr(session.virtualenv, "venv_backend", "") == "uv"


def _install_project(session: nox.Session, extras: str = "") -> None:
    """torch (AFBENCH_TORCH), then every other dependency from the lock with its hashes, then the package
    itself without resolving anything (``extras`` are in the lock already: test and slurm)."""
    where = _pip_sources() if _uv(session) else []  # uv does not read pip's configuration
    if TORCH != "skip":
        torch_args = shlex.split(TORCH)  # a GPU variant names its own index: add nothing to it
        own_index = any(a.startswith(("--index-url", "--extra-index-url", "-i")) for a in torch_args)
        session.install(*torch_args, *([] if own_index else where))
    session.install("--require-hashes", "--no-deps", "-r", LOCK, *where)  # the lock is the whole closure but torch
    session.install("--no-deps", "-e", ".")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and end-to-end tests (tiny models; real data when AFBENCH_DATA_DIR is set)."""
    _install_project(session, "[test]")
    session.run("pytest", *session.posargs)


@nox.session
def tracking(session: nox.Session) -> None:
    """The experiment-tracking tests with every backend installed (the ``track`` extra; ``nox -s tests``
    skips them where a backend is missing). Its own venv: the backends never enter the lock's."""
    _install_project(session, "[test]")
    session.install("tensorboard>=2.16", "mlflow>=3", "wandb>=0.19", "trackio>=0.2",
                    *(_pip_sources() if _uv(session) else []))
    session.run("pytest", "tests/test_tracking.py", *session.posargs, env={"WANDB_MODE": "offline"})


@nox.session
def reproduce(session: nox.Session) -> None:
    """Run an experiment grid: ``nox -s reproduce -- [EXPERIMENT] [afbench run options]``."""
    _install_project(session)
    args = session.posargs or ["quick"]
    session.run("afbench", "run", *args)


@nox.session
def report(session: nox.Session) -> None:
    """Render reports for experiments: ``nox -s report -- [EXPERIMENT ...]``."""
    _install_project(session)
    session.run("afbench", "report", *(session.posargs or ["quick"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "benchmark", "tests", "noxfile.py")


def _reference_env(session: nox.Session) -> str:
    """A second virtualenv holding the AdapterHub reference (transformers 4.57)."""
    ref = os.path.join(session.virtualenv.location, "..", "reference")
    ref = os.path.abspath(ref)
    py = os.path.join(ref, "bin", "python")
    if not os.path.exists(py):
        session.run("python", "-m", "venv", ref, external=True)
    pip = [py, "-m", "pip", "install", "-q"]
    if TORCH != "skip":
        session.run(*pip, *shlex.split(TORCH), external=True)
    session.run(*pip, *REFERENCE, external=True)
    return py


@nox.session
def parity(session: nox.Session) -> None:
    """Logit parity with AdapterHub adapters 1.3.0 (tiny BERT/RoBERTa, weights exported)."""
    _install_project(session)
    ref_py = _reference_env(session)
    session.run("afbench", "parity", "--reference-python", ref_py, *session.posargs)


@nox.session
def perf(session: nox.Session) -> None:
    """Training steps/s for ST-A and Fusion (N = 2..16) vs the reference; writes reports/perf.md."""
    _install_project(session)
    ref_py = _reference_env(session)
    session.run("afbench", "perf", "--reference-python", ref_py, *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: the smoke grid on ``--device cuda``, fp32 GPU vs CPU logits (ST-A, Houlsby,
    Fusion), and ``afbench perf --device cuda`` on BERT-base shapes (reports/perf_gpu.md), the
    reference on the GPU too. Needs a CUDA torch (``AFBENCH_TORCH``, see above). Without CUDA: one
    line, success."""
    _install_project(session)
    has_cuda = session.run("python", "-c", "import torch; print(int(torch.cuda.is_available()))",
                           silent=True).strip().endswith("1")
    if not has_cuda:
        session.log("nox -s gpu: no CUDA device (or a CPU torch build; set AFBENCH_TORCH); nothing checked")
        return
    ref_py = _reference_env(session)
    session.run("python", "-m", "benchmark.perf.gpu_check", "--reference-python", ref_py, *session.posargs)


@nox.session
def slurm(session: nox.Session) -> None:
    """``--executor slurm`` end to end: apt-gets slurm-wlm + munge when missing, brings a one-node cluster
    up in a temp folder (tools/slurm_cluster.py), runs tests/test_slurm_cluster.py against it (the smoke
    grid vs a local one, a scancel mid-grid and its rerun, a killed driver, rejected parameters) and
    tears the cluster down. Needs root; prints the measured wall times."""
    _install_project(session, "[test,slurm]")
    state = tempfile.mkdtemp(prefix="afbench-slurm-")
    timings = os.path.join(state, "timings.txt")
    session.run("python", "tools/slurm_cluster.py", "up", "--dir", state, "--install")
    try:
        session.run("pytest", "tests/test_slurm_cluster.py", "-q", "-s", *session.posargs,
                    env={"SLURM_CONF": os.path.join(state, "slurm.conf"), "AFBENCH_REQUIRE_SLURM": "1",
                         "AFBENCH_SLURM_TIMINGS": timings})
    finally:
        session.run("python", "tools/slurm_cluster.py", "down", "--dir", state)
    if os.path.exists(timings):
        with open(timings) as fh:
            session.log("measured:\n" + fh.read())


# Versions the committed minilm_table1 results were trained with; kept in the lock until a deliberate bump.
LOCK_PINS = ["transformers==5.24.0", "tokenizers==0.23.3", "numpy==2.4.6", "datasets==5.2.0", "scikit-learn==1.9.1"]


@nox.session(venv_backend="none")
def lock(session: nox.Session) -> None:
    """Regenerate ``requirements.lock`` (every dependency but torch, with hashes) with uv. Existing pins
    are kept; ``nox -s lock -- -P transformers==5.25.0`` moves one package (then retrain, or say why not).
    torch is resolved as the CPU build (its CUDA wheels would add nvidia-* packages) and left out of the
    file: it is installed from ``AFBENCH_TORCH`` as before."""
    with tempfile.TemporaryDirectory() as tmp:
        where = _torch_sources()
        override = os.path.join(tmp, "torch.txt")
        with open(override, "w") as fh:
            fh.write("torch==2.13.0+cpu\n")
        session.run("uv", "pip", "compile", "pyproject.toml", "--extra", "test", "--extra", "slurm",
                    "--generate-hashes", "--no-emit-package", "torch", "--override", override,
                    "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
                    "--custom-compile-command", "nox -s lock", "-o", "requirements.lock", *where,
                    *[a for p in LOCK_PINS for a in ("-P", p)], *session.posargs, external=True)


def _pip_config(key: str) -> list[str]:
    import subprocess
    import sys
    try:
        return subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                              capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []


def _torch_sources() -> list[str]:
    """Where uv finds the CPU torch wheel: pip's configured find-links (uv does not read pip's config),
    else PyTorch's CPU index."""
    links = [a for link in _pip_config("global.find-links") if os.path.isdir(link) for a in ("--find-links", link)]
    return links or ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy",
                     "unsafe-best-match"]


def _pip_sources() -> list[str]:
    """pip's configured sources as uv arguments (find-links, index, extra indexes), so a nox session under
    uv installs from the same place as under pip: the local CPU torch wheel, never the multi-GB CUDA
    build. Without pip configuration: uv's defaults plus PyTorch's CPU index for torch."""
    args = [a for link in _pip_config("global.find-links") if os.path.isdir(link) for a in ("--find-links", link)]
    args += [a for url in _pip_config("global.index-url") for a in ("--index-url", url)]
    args += [a for url in _pip_config("global.extra-index-url") for a in ("--extra-index-url", url)]
    if not args:
        return _torch_sources()
    return [*args, "--index-strategy", "unsafe-best-match"]
