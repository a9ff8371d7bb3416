"""Optional requirements of plugins, and the install command that fits how tlbench itself was installed.

A plugin object (strategy, backbone or dataset family, executor, report section) may declare
``requires = {"<importable module>": <hint>}``. The hint is an :class:`Extra` (an optional part of tlbench, named
as in pyproject's ``[project.optional-dependencies]``) or a plain string shown as it is (a third-party plugin's own
install command). Whatever cannot be imported makes the object *unavailable*: ``tlbench list`` marks it,
``tlbench run --all`` leaves it out with one line saying why, and naming it explicitly stops with that line.
"""
from __future__ import annotations

import importlib.util
import json
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

DISTRIBUTION = "tlbench"


@dataclass(frozen=True)
class Extra:
    """An optional part of tlbench: ``name`` is the pyproject extra (``peft``); ``why`` says what it brings."""

    name: str
    why: str = ""

    def __str__(self) -> str:
        return install_command(self.name) + (f" ({self.why})" if self.why else "")


def missing_requirements(obj: Any) -> list[str]:
    """Install hints for the modules in ``obj.requires`` that cannot be imported (empty: ``obj`` can run here)."""
    requires: Mapping[str, Any] = getattr(obj, "requires", None) or {}
    return [str(hint) for module, hint in requires.items() if not module_available(module)]


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def install_command(extra: str | None = None, origin: Mapping[str, str] | None = None) -> str:
    """``pip install ...`` for tlbench (with ``extra``) as this copy was installed (``origin``, default
    :func:`installed_from`): from a checkout, ``pip install -e '/path/to/checkout[peft]'``; from a local folder or
    archive, its path; from a version-control URL or a remote archive, that URL; from an index,
    ``pip install 'tlbench[peft]'``."""
    suffix = f"[{extra}]" if extra else ""
    origin = installed_from() if origin is None else origin
    kind, where = origin.get("kind"), origin.get("where", "")
    if kind == "checkout" and where:
        return f"pip install -e {shlex.quote(where + suffix)}"
    if kind in ("directory", "archive") and where:
        return f"pip install {shlex.quote(where + suffix)}"
    if kind == "url" and where:
        return f"pip install {shlex.quote(f'{DISTRIBUTION}{suffix} @ {where}')}"
    return f"pip install {shlex.quote(DISTRIBUTION + suffix)}"


def installed_from() -> dict[str, str]:
    """How this tlbench was installed: ``checkout`` when the code runs from a source tree (an editable install or
    ``PYTHONPATH``; ``where`` is its root), else what the distribution's PEP 610 ``direct_url.json`` says (see
    :func:`origin_of`)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "harness" / Path(__file__).name).is_file():
        return {"kind": "checkout", "where": str(root)}
    for dist in metadata.distributions(name=DISTRIBUTION):  # a stray tlbench.egg-info may come first on sys.path
        try:
            text = dist.read_text("direct_url.json")
            if text:
                return origin_of(json.loads(text))
        except (OSError, ValueError):
            continue
    return origin_of(None)


def origin_of(direct_url: Any) -> dict[str, str]:
    """A PEP 610 ``direct_url.json`` as ``{"kind", "where"}``: ``directory`` (a local folder), ``archive`` (a local
    wheel or sdist), ``url`` (a VCS or remote archive URL, with the revision asked for), or ``index`` (None: the
    package came from an index)."""
    if not isinstance(direct_url, dict) or not isinstance(direct_url.get("url"), str):
        return {"kind": "index"}
    url = direct_url["url"]
    if isinstance(direct_url.get("vcs_info"), dict):
        vcs = direct_url["vcs_info"]
        revision = vcs.get("requested_revision") or vcs.get("commit_id")
        return {"kind": "url", "where": f"{vcs.get('vcs', 'git')}+{url}" + (f"@{revision}" if revision else "")}
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return {"kind": "url", "where": url}
    path = unquote(parsed.path)
    return {"kind": "directory" if "dir_info" in direct_url else "archive", "where": path}
