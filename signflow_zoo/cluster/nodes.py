"""The nodes of a Ray cluster as bench hosts: their names, their resources, and which ones a command selects.

A node is named by its ``signflow-zoo-host`` label (``ray start --labels signflow-zoo-host=lab-1``), else by a
custom resource ``signflow-zoo-host:NAME`` (``ray start --resources '{"signflow-zoo-host:lab-1": 1}'``, for
clusters whose launcher sets resources but not labels), else by its hostname. Names must be unique: two nodes
of one name would be one column of the table and one set of cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from signflow_zoo.common.errors import ClusterError

HOST_LABEL = "signflow-zoo-host"
HOST_RESOURCE_PREFIX = HOST_LABEL + ":"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5}$")


@dataclass(frozen=True)
class Node:
    """One alive node of the cluster, as a bench host."""

    node_id: str
    name: str
    named_by: str  # "label", "resource" or "hostname"
    cpus: float
    gpus: float
    address: str  # the node's IP as Ray knows it
    hostname: str

    @property
    def threads(self) -> int:
        """The bench's thread count on this node: its CPUs as Ray counts them (what the task holds)."""
        return max(1, int(self.cpus))


def check_address(address: str) -> str:
    """``auto``, ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT``: anything else is refused before connecting."""
    value = (address or "").strip()
    if value == "auto" or _ADDRESS.match(value) and 0 < int(value.rsplit(":", 1)[1]) < 65536:
        return value
    raise ClusterError(f"--cluster {address!r}: give `auto` (the cluster this machine belongs to), HOST:PORT (the "
                       "head node's GCS address, e.g. 10.0.0.5:6379) or ray://HOST:PORT (Ray Client, port 10001)")


def name_of(node: dict[str, Any]) -> tuple[str, str]:
    """(name, how it was named) of one entry of ``ray.nodes()``."""
    labels = node.get("Labels") or {}
    if labels.get(HOST_LABEL):
        return str(labels[HOST_LABEL]), "label"
    named = sorted(k[len(HOST_RESOURCE_PREFIX):] for k in (node.get("Resources") or {})
                   if k.startswith(HOST_RESOURCE_PREFIX))
    if named:
        return named[0], "resource"
    return str(node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or node.get("NodeID", "?")), "hostname"


def alive_nodes(raw: Iterable[dict[str, Any]]) -> tuple[list[Node], list[str]]:
    """The alive nodes with CPUs, sorted by name, and notes on the ones left out (no CPUs: e.g. a KubeRay head
    started with ``num-cpus: 0``). Raises :class:`ClusterError` for a name that is not a plain name or that two
    nodes share."""
    nodes: list[Node] = []
    notes: list[str] = []
    for n in raw:
        if not n.get("Alive"):
            continue
        name, how = name_of(n)
        res = n.get("Resources") or {}
        if not _NAME.match(name):
            raise ClusterError(f"node {n.get('NodeID', '?')[:12]} ({n.get('NodeManagerAddress', '?')}) has the host name "
                               f"{name!r} (from its {how}): use letters, digits, '.', '_' or '-' (at most 63), e.g. "
                               f"ray start ... --labels {HOST_LABEL}=lab-1")
        if float(res.get("CPU", 0)) < 1:
            notes.append(f"node {name} has no CPUs in Ray (num-cpus 0): not a bench host")
            continue
        nodes.append(Node(node_id=str(n["NodeID"]), name=name, named_by=how, cpus=float(res.get("CPU", 0)),
                          gpus=float(res.get("GPU", 0)), address=str(n.get("NodeManagerAddress", "")),
                          hostname=str(n.get("NodeManagerHostname", ""))))
    seen: dict[str, Node] = {}
    for node in nodes:
        if node.name in seen:
            raise ClusterError(f"two nodes are named {node.name!r} (at {seen[node.name].address} and {node.address}, "
                               f"by {node.named_by}): give each its own name with ray start ... --labels "
                               f"{HOST_LABEL}=NAME")
        seen[node.name] = node
    return sorted(nodes, key=lambda x: x.name), notes


def select(nodes: list[Node], hosts: str) -> list[Node]:
    """``all`` or comma-separated names -> those nodes; an unknown name is an error listing the known ones."""
    if not nodes:
        raise ClusterError("the Ray cluster has no alive node with CPUs to bench on")
    wanted = [h.strip() for h in (hosts or "all").split(",") if h.strip()]
    if wanted in ([], ["all"]):
        return list(nodes)
    by_name = {n.name: n for n in nodes}
    unknown = [h for h in wanted if h not in by_name]
    if unknown:
        raise ClusterError(f"--hosts: no alive node named {', '.join(map(repr, unknown))}; the cluster's hosts are "
                           f"{', '.join(sorted(by_name))} (named by their {HOST_LABEL} label, else hostname)")
    return [by_name[h] for h in dict.fromkeys(wanted)]
