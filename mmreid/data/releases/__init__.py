"""The registry of public dataset releases: each module of this package defines one ``RELEASE`` and is found here.

Adding a release means adding one module (its layout, file-name parser, splits, protocol, citation and synthetic
naming; see :class:`mmreid.data.release.Release`) and its recipe ``configs/<preset>.yaml``; the builder, the
synthetic generator, the dataset card and ``embed.py``'s folder reader read it from here.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..release import DatasetLayoutError, Release

__all__ = ["RELEASES", "get_release", "release_names"]


def _discover() -> dict[str, Release]:
    found: dict[str, Release] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        release = getattr(module, "RELEASE", None)
        if not isinstance(release, Release):
            raise TypeError(f"{module.__name__} defines no RELEASE = Release(...)")
        taken = {n.upper() for r in found.values() for n in (r.name, *r.aliases)}
        clash = [n for n in (release.name, *release.aliases) if n.upper() in taken]
        if clash:
            raise ValueError(f"{module.__name__}: the name(s) {clash} are already registered")
        found[release.name] = release
    return found


RELEASES: dict[str, Release] = _discover()
_BY_NAME = {n.upper(): r for r in RELEASES.values() for n in (r.name, *r.aliases)}


def release_names() -> list[str]:
    """Every name a release answers to (its name and aliases), for command-line choices."""
    return sorted({n for r in RELEASES.values() for n in (r.name, *r.aliases)})


def get_release(name: str) -> Release:
    """Look a release up by name or alias, case-insensitively."""
    release = _BY_NAME.get(str(name).upper())
    if release is None:
        raise DatasetLayoutError(f"unknown dataset name {name!r}: expected one of {sorted(RELEASES)}")
    return release
