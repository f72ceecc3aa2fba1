"""Every registered backend and whether it can run here: what ``signflow-zoo backends`` lists.

Availability comes from the registry's safe check, so a plugin that fails while answering is listed as
broken with its error instead of stopping the listing.
"""

from __future__ import annotations

from typing import Any


def describe_backends(registry=None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(one row per backend: plugin, package, artifact, precision, device, available and why not;
    broken plugins with their error)."""
    from .plugins import get_registry

    reg = registry or get_registry()
    rows, broken = [], [{"plugin": b.name, "package": b.package, "error": b.error} for b in reg.broken]
    for name, be in reg.runners.items():
        av = reg.availability(name)
        rows.append({"name": name, "plugin": be.plugin.name, "package": be.plugin.package, "artifact": be.cls.artifact,
                     "precision": be.cls.precision, "device": be.cls.device_kind, "available": av.ok,
                     "reason": "" if av.ok else av.reason, "detail": av.reason if av.ok else "",
                     "summary": be.cls.summary})
        if av.broken:
            broken.append({"plugin": be.plugin.name, "package": be.plugin.package, "error": f"{name}: {av.reason}"})
    return rows, broken
