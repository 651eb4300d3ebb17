"""Developer and reproduction entry points.

    nox -s tests                 # the CI test command (README)
    nox -s reproduce -- quick    # run an experiment grid (default: quick)
    nox -s report -- quick       # render reports/<experiment>.{md,html,tex}
    nox -s lint                  # ruff
    nox -s tracking              # the tracking tests with TensorBoard, MLflow, W&B and Trackio installed, and the sweep tests (Optuna)
    nox -s parity                # compare our modules with AdapterHub `adapters` 1.3.0
    nox -s perf                  # training-step throughput, ours vs AdapterHub
    nox -s gpu                   # the CUDA path: smoke grid on cuda, GPU vs CPU logits, perf on BERT-base shapes
    nox -s slurm                 # --executor slurm on a one-node Slurm cluster brought up here (root)

One virtualenv, ``.nox/afbench``, serves every session that runs the package (tests, reproduce, report, parity,
perf, gpu, slurm): it is built once and installed into again only when ``requirements.lock``,
``pyproject.toml`` or ``AFBENCH_TORCH`` changed (a stamp holds their hash), so a session on a warm env starts
in about a second. uv builds it when it is on PATH, ``python -m venv`` + pip otherwise (no warning either way).

Torch: by default the env gets ``torch==2.13.0`` (a CPU build that lies on local disk on
the project machines) *before* the package, so pip never pulls a multi-GB CUDA build. GPU users set
``AFBENCH_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`` (any pip
arguments; it gets an env of its own, ``.nox/afbench-<hash>``), or ``AFBENCH_TORCH=skip`` to install the lock and
the package into the interpreter that runs nox.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
import tempfile
import time

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("AFBENCH_TORCH", "torch==2.13.0")
REFERENCE = ["transformers==4.57.6", "adapters==1.3.0"]


LOCK = "requirements.lock"


def _uv() -> str | None:
    """uv when it is on PATH and runs (a pyenv shim without uv behind it does not)."""
    uv = shutil.which("uv")
    try:
        return uv if uv and os.system(f"{shlex.quote(uv)} --version >/dev/null 2>&1") == 0 else None
    except OSError:
        return None


def _project_env(session: nox.Session) -> dict:
    """The shared virtualenv (see the module docstring) with torch (AFBENCH_TORCH), then every other dependency
    from the lock with its hashes (the test, slurm and composition extras are in it), then the package itself without
    resolving anything. Returns the environment its commands run with (its bin first on PATH)."""
    t0 = time.perf_counter()
    with open(LOCK, "rb") as lock, open("pyproject.toml", "rb") as pyproject:
        key = hashlib.sha256(lock.read() + pyproject.read() + TORCH.encode()).hexdigest()
    if TORCH == "skip":  # the interpreter that runs nox
        env, stamp = os.path.dirname(os.path.dirname(sys.executable)), None
    else:
        default = TORCH == "torch==2.13.0"
        env = os.path.abspath(os.path.join(".nox", "afbench" if default else f"afbench-{key[:8]}"))
        stamp = os.path.join(env, ".afbench-stamp")
    py, uv = os.path.join(env, "bin", "python"), _uv()
    if stamp is None or not os.path.exists(stamp) or open(stamp).read() != key:
        if stamp is not None and not os.path.exists(py):
            session.run_install(*([uv, "venv", "-q", "--python", sys.executable, env] if uv else
                          [sys.executable, "-m", "venv", env]), external=True)
        pip = [uv, "pip", "install", "--python", py] if uv else [py, "-m", "pip", "install", "-q"]
        where = _pip_sources() if uv else []  # uv does not read pip's configuration
        if TORCH != "skip":
            torch_args = shlex.split(TORCH)  # a GPU variant names its own index: add nothing to it
            own_index = any(a.startswith(("--index-url", "--extra-index-url", "-i")) for a in torch_args)
            session.run_install(*pip, *torch_args, *([] if own_index else where), external=True)
        session.run_install(*pip, "--require-hashes", "--no-deps", "-r", LOCK, *where, external=True)  # all but torch
        session.run_install(*pip, "--no-deps", "-e", ".", external=True)
        if stamp is not None:
            with open(stamp, "w") as fh:
                fh.write(key)
    session.log(f"virtualenv {env}: ready in {time.perf_counter() - t0:.1f} s")
    return {"VIRTUAL_ENV": env, "PATH": os.path.join(env, "bin") + os.pathsep + os.environ.get("PATH", "")}


def _run(session: nox.Session, venv: dict, *args: str, **kwargs) -> str | bool | None:
    """A command of the shared virtualenv (``args[0]`` found in its bin); ``env=`` adds variables."""
    return session.run(os.path.join(venv["VIRTUAL_ENV"], "bin", args[0]), *args[1:], env={**venv, **kwargs.pop(
        "env", {})}, external=True, **kwargs)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Unit and end-to-end tests (tiny models; real data when AFBENCH_DATA_DIR is set)."""
    env = _project_env(session)
    _run(session, env, "pytest", *session.posargs)


@nox.session(venv_backend="uv|virtualenv")
def tracking(session: nox.Session) -> None:
    """The experiment-tracking tests with every backend installed (the ``track`` extra; ``nox -s tests``
    skips them where a backend is missing). Its own venv, so the backends never enter the shared one: the
    same torch, lock and package as ``_project_env``, then the backends."""
    where = _pip_sources() if getattr(session.virtualenv, "venv_backend", "") == "uv" else []
    if TORCH != "skip":
        torch_args = shlex.split(TORCH)  # a GPU variant names its own index: add nothing to it
        own_index = any(a.startswith(("--index-url", "--extra-index-url", "-i")) for a in torch_args)
        session.install(*torch_args, *([] if own_index else where))
    session.install("--require-hashes", "--no-deps", "-r", LOCK, *where)
    session.install("--no-deps", "-e", ".")
    session.install("tensorboard>=2.16", "mlflow>=3", "wandb>=0.19", "trackio>=0.2", "optuna>=4", *where)
    session.run("pytest", "tests/test_tracking.py", "tests/test_sweep.py", *session.posargs, env={"WANDB_MODE": "offline"})


@nox.session(venv_backend="none")
def reproduce(session: nox.Session) -> None:
    """Run an experiment grid: ``nox -s reproduce -- [EXPERIMENT] [afbench run options]``."""
    env = _project_env(session)
    _run(session, env, "afbench", "run", *(session.posargs or ["quick"]))


@nox.session(venv_backend="none")
def report(session: nox.Session) -> None:
    """Render reports for experiments: ``nox -s report -- [EXPERIMENT ...]``."""
    env = _project_env(session)
    _run(session, env, "afbench", "report", *(session.posargs or ["quick"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "benchmark", "tests", "noxfile.py")


def _reference_env(session: nox.Session) -> str:
    """A second virtualenv holding the AdapterHub reference (transformers 4.57)."""
    ref = os.path.abspath(os.path.join(".nox", "reference"))
    py = os.path.join(ref, "bin", "python")
    if not os.path.exists(py):
        session.run("python", "-m", "venv", ref, external=True)
    pip = [py, "-m", "pip", "install", "-q"]
    if TORCH != "skip":
        session.run(*pip, *shlex.split(TORCH), external=True)
    session.run(*pip, *REFERENCE, external=True)
    return py


@nox.session(venv_backend="none")
def parity(session: nox.Session) -> None:
    """Logit parity with AdapterHub adapters 1.3.0 (tiny BERT/RoBERTa, weights exported)."""
    env = _project_env(session)
    ref_py = _reference_env(session)
    _run(session, env, "afbench", "parity", "--reference-python", ref_py, *session.posargs)


@nox.session(venv_backend="none")
def perf(session: nox.Session) -> None:
    """Training steps/s for ST-A and Fusion (N = 2..16) vs the reference; writes reports/perf.md."""
    env = _project_env(session)
    ref_py = _reference_env(session)
    _run(session, env, "afbench", "perf", "--reference-python", ref_py, *session.posargs)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: the smoke grid on ``--device cuda``, fp32 GPU vs CPU logits (ST-A, Houlsby,
    Fusion), and ``afbench perf --device cuda`` on BERT-base shapes (reports/perf_gpu.md), the
    reference on the GPU too. Needs a CUDA torch (``AFBENCH_TORCH``, see above). Without CUDA: one
    line, success."""
    env = _project_env(session)
    has_cuda = _run(session, env, "python", "-c", "import torch; print(int(torch.cuda.is_available()))",
                    silent=True).strip().endswith("1")
    if not has_cuda:
        session.log("nox -s gpu: no CUDA device (or a CPU torch build; set AFBENCH_TORCH); nothing checked")
        return
    ref_py = _reference_env(session)
    _run(session, env, "python", "-m", "benchmark.perf.gpu_check", "--reference-python", ref_py, *session.posargs)


@nox.session(venv_backend="none")
def slurm(session: nox.Session) -> None:
    """``--executor slurm`` end to end: apt-gets slurm-wlm + munge when missing, brings a one-node cluster
    up in a temp folder (tools/slurm_cluster.py), runs tests/test_slurm_cluster.py against it (the smoke
    grid vs a local one, a scancel mid-grid and its rerun, a killed driver, rejected parameters) and
    tears the cluster down. Needs root; prints the measured wall times."""
    env = _project_env(session)
    state = tempfile.mkdtemp(prefix="afbench-slurm-")
    timings = os.path.join(state, "timings.txt")
    _run(session, env, "python", "tools/slurm_cluster.py", "up", "--dir", state, "--install")
    try:
        _run(session, env, "pytest", "tests/test_slurm_cluster.py", "-q", "-s", *session.posargs,
             env={"SLURM_CONF": os.path.join(state, "slurm.conf"), "AFBENCH_REQUIRE_SLURM": "1",
                  "AFBENCH_SLURM_TIMINGS": timings})
    finally:
        _run(session, env, "python", "tools/slurm_cluster.py", "down", "--dir", state)
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
        session.run("uv", "pip", "compile", "pyproject.toml", "--extra", "test", "--extra", "slurm", "--extra", "composition",
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
