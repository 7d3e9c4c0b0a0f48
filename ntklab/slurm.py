"""What a SLURM partition can run, from ``sinfo``, against what a sweep's tasks ask for.

A task asking more than any node of its partition has (the SLURM launcher's default 8 CPUs, 32 GB
and 1 GPU on a small node) is accepted by sbatch and then pends forever, while the sweep waits on
it. :func:`unrunnable` compares the request of ``hydra/launcher=slurm`` (hydra-submitit-launcher's
fields) with the nodes ``sinfo`` reports for the partition and returns one line naming each field
to override, or None when some node could run the task (busy or not: a node's size, not its
load, decides). What is compared, per node of the partition (all of its nodes, whatever their state):

    CPUs      cpus_per_task (1 when unset; cpus_per_gpu × GPUs per task when that is how they are
              asked) × tasks_per_node
    memory    mem_gb (GB of 1024 MB, as sbatch reads ``--mem=NGB``), or mem_per_cpu × CPUs, or
              mem_per_gpu × GPUs
    GPUs      gpus_per_node, or gpus_per_task × tasks_per_node, or a ``gpu:[type:]N`` gres
    nodes     how many nodes of the partition could each run one node's share of the task
    time      timeout_min against the partition's time limit

Fields passed through ``additional_parameters`` and node features (``constraint``) are not
checked. :func:`read_partitions` parses the one ``sinfo`` call :func:`query_sinfo` makes, so the
comparison is tested without a cluster.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

# one line per node and partition: partition ('*' marks the default), node, CPUs, memory in MB,
# generic resources (gpu:a100:4(S:0-1), or (null)), the partition's time limit
SINFO_FIELDS = ("%P", "%N", "%c", "%m", "%G", "%l")
SINFO_COMMAND = ("sinfo", "--noheader", "--Node", "--format=" + "|".join(SINFO_FIELDS))
SLURM_LAUNCHER = "SlurmLauncher"      # hydra-submitit-launcher's class, the target of hydra/launcher=slurm
_MB_PER = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int


@dataclass
class Partition:
    name: str
    default: bool
    time_limit_min: Optional[float]     # None: no limit
    nodes: List[Node]


# ----------------------------------------------------------------------------- sinfo

def query_sinfo(timeout_s: float = 30.0) -> Tuple[Optional[str], str]:
    """``sinfo``'s nodes as :data:`SINFO_COMMAND` asks them: (its output, "") or (None, why not)."""
    try:
        done = subprocess.run(SINFO_COMMAND, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        return None, "sinfo is not installed"
    except subprocess.TimeoutExpired:
        return None, f"sinfo did not answer within {timeout_s:g} s"
    if done.returncode != 0:
        return None, f"sinfo failed: {(done.stderr or done.stdout).strip()}"
    return done.stdout, ""


def gpu_count(gres: str) -> int:
    """GPUs in a node's generic resources: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:a:2,gpu:b:2``
    (4), ``(null)`` (0)."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres):        # commas inside (S:0-1,3) are not separators
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
        elif parts[0] == "gpu" and len(parts) == 1:     # "gpu" alone counts one
            total += 1
    return total


def time_limit_minutes(text: str) -> Optional[float]:
    """A partition's time limit as sinfo writes it (``infinite``, ``30:00``, ``2:00:00``,
    ``1-00:00:00``, ``1-12``) in minutes; None for no limit."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    fields = [float(f) for f in clock.split(":")]
    if days:        # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (fields + [0.0, 0.0])[:3]
    else:           # minutes | minutes:seconds | hours:minutes:seconds
        hours, minutes, seconds = {1: [0.0, fields[0], 0.0], 2: [0.0] + fields, 3: fields}[len(fields)]
    return float(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def memory_mb(value) -> Optional[float]:
    """A memory size as sbatch reads it (``4096``, ``4096M``, ``4G``, ``1T``; megabytes without a
    unit) in MB; None when unset."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(value), flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"cannot read {value!r} as a memory size (e.g. 4096, 4096M, 4G)")
    return float(match.group(1)) * _MB_PER[match.group(2).upper() or "M"]


def read_partitions(text: str) -> Dict[str, Partition]:
    """The partitions in :data:`SINFO_COMMAND`'s output, by name, each with its nodes."""
    partitions: Dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, node, cpus, memory, gres, limit = line.split("|")[:6]
        default = name.endswith("*")
        name = name.rstrip("*")
        partition = partitions.setdefault(name, Partition(name, default, time_limit_minutes(limit), []))
        partition.nodes.append(Node(node, int(cpus.rstrip("+")), int(memory.rstrip("+")), gpu_count(gres)))
    return partitions


# ----------------------------------------------------------------------------- the request

def _number(launcher: Mapping, key: str) -> Optional[int]:
    value = launcher.get(key)
    return None if value is None else int(value)


@dataclass
class _Need:
    """One resource a node must have: ``field``'s value (``amount`` in the node's unit: CPUs, MB,
    GPUs) times ``times`` (tasks per node, CPUs or GPUs, said by ``times_text``)."""
    resource: str           # the Node attribute it is compared with
    field: str              # the launcher field that asks it
    value: object           # as the launcher holds it ("8G", 32, ...)
    amount: float           # the value in the node's unit
    times: float = 1
    times_text: str = ""
    largest: float = 0.0    # the most any node of the partition has

    @property
    def per_node(self) -> float:
        return self.amount * self.times

    def fits(self, node: Node) -> bool:
        return getattr(node, self.resource) >= self.per_node

    def asked(self) -> str:
        return f"hydra.launcher.{self.field}={self.value}" + (f" × {self.times_text}" if self.times != 1 else "")

    def have(self) -> str:
        if self.resource == "cpus":
            return f"its nodes have at most {int(self.largest)} CPUs"
        if self.resource == "gpus":
            return f"at most {int(self.largest)} GPUs" if self.largest else "no GPUs"
        return f"at most {self.largest / 1024:.1f} GB"

    def largest_value(self) -> str:
        """The largest value of the field some node could give, as an override would write it."""
        most = self.largest / self.times
        if self.field == "mem_gb":
            return str(int(most // 1024)) if most >= 1024 else "null"
        if self.resource == "memory_mb":
            return f"{int(most)}M"
        return str(max(int(most), 1) if self.resource == "cpus" else int(most))


def _needs(launcher: Mapping) -> List[_Need]:
    """What one node must have for the launcher's request: CPUs, then memory and GPUs when asked."""
    tasks = _number(launcher, "tasks_per_node") or 1
    per_tasks = dict(times=tasks, times_text=f"tasks_per_node={tasks}")
    if _number(launcher, "gpus_per_task"):
        gpus = _Need("gpus", "gpus_per_task", launcher["gpus_per_task"], _number(launcher, "gpus_per_task"),
                     **per_tasks)
    elif _number(launcher, "gpus_per_node"):
        gpus = _Need("gpus", "gpus_per_node", launcher["gpus_per_node"], _number(launcher, "gpus_per_node"))
    elif launcher.get("gres") and gpu_count(str(launcher["gres"])):
        gpus = _Need("gpus", "gres", launcher["gres"], gpu_count(str(launcher["gres"])))
    else:
        gpus = None
    if _number(launcher, "cpus_per_task") is None and _number(launcher, "cpus_per_gpu") and gpus is not None:
        cpus = _Need("cpus", "cpus_per_gpu", launcher["cpus_per_gpu"], _number(launcher, "cpus_per_gpu"),
                     times=gpus.per_node, times_text=f"{int(gpus.per_node)} GPUs")
    else:
        cpus = _Need("cpus", "cpus_per_task", launcher.get("cpus_per_task") or 1,
                     _number(launcher, "cpus_per_task") or 1, **per_tasks)
    needs = [cpus]
    if launcher.get("mem_gb") is not None:
        needs.append(_Need("memory_mb", "mem_gb", launcher["mem_gb"], float(launcher["mem_gb"]) * 1024))
    elif launcher.get("mem_per_cpu") is not None:
        needs.append(_Need("memory_mb", "mem_per_cpu", launcher["mem_per_cpu"], memory_mb(launcher["mem_per_cpu"]),
                           times=cpus.per_node, times_text=f"{int(cpus.per_node)} CPUs"))
    elif launcher.get("mem_per_gpu") is not None and gpus is not None:
        needs.append(_Need("memory_mb", "mem_per_gpu", launcher["mem_per_gpu"], memory_mb(launcher["mem_per_gpu"]),
                           times=gpus.per_node, times_text=f"{int(gpus.per_node)} GPUs"))
    return needs + ([gpus] if gpus is not None else [])


def _partitions_of(launcher: Mapping, partitions: Mapping[str, Partition]) -> Tuple[List[Partition], Optional[str]]:
    """The partitions the task may run in (a comma-separated list, or the default), or the one line
    saying why there are none."""
    known = ", ".join(sorted(partitions)) or "none"
    if launcher.get("partition"):
        names = [n.strip() for n in str(launcher["partition"]).split(",") if n.strip()]
        missing = [n for n in names if n not in partitions]
        if missing:
            return [], (f"hydra.launcher.partition={launcher['partition']}: no partition {missing[0]!r} on this "
                        f"cluster (partitions: {known})")
        return [partitions[n] for n in names], None
    defaults = [p for p in partitions.values() if p.default]
    if not defaults:
        return [], ("hydra.launcher.partition is not set and this cluster has no default partition "
                    f"(partitions: {known})")
    return defaults, None


def unrunnable(launcher: Mapping, partitions: Mapping[str, Partition]) -> Optional[str]:
    """One line naming the launcher fields to override when no node of the task's partition could
    ever run one of its tasks (see the module's docstring); None when some could."""
    chosen, problem = _partitions_of(launcher, partitions)
    if problem:
        return problem
    where = "partition " + ", ".join(repr(p.name) for p in chosen)
    nodes = [n for p in chosen for n in p.nodes]
    wanted_nodes = _number(launcher, "nodes") or 1
    needs = _needs(launcher)
    for need in needs:
        need.largest = max((getattr(n, need.resource) for n in nodes), default=0)
    fitting = [n for n in nodes if all(need.fits(n) for need in needs)]
    problems, overrides = [], []
    for need in needs:
        if need.largest < need.per_node:
            problems.append(f"{need.asked()} ({need.have()})")
            overrides.append(f"hydra.launcher.{need.field}={need.largest_value()}")
    if not problems and len(fitting) < wanted_nodes:
        if len(nodes) < wanted_nodes or fitting:
            problems.append(f"hydra.launcher.nodes={wanted_nodes} ({len(fitting)} of its {len(nodes)} nodes could "
                            "run one node's share)")
            overrides.append(f"hydra.launcher.nodes={max(len(fitting), 1)}")
        else:
            asked = ", ".join(need.asked() for need in needs)
            problems.append(f"{asked} (no node has all of these at once)")
    limit = max((p.time_limit_min for p in chosen), key=lambda t: math.inf if t is None else t)
    timeout = launcher.get("timeout_min")
    if limit is not None and timeout is not None and float(timeout) > limit:
        problems.append(f"hydra.launcher.timeout_min={timeout} (its time limit is {limit:g} minutes)")
        overrides.append(f"hydra.launcher.timeout_min={int(limit)}")
    if not problems:
        return None
    line = f"no node of SLURM {where} could ever run a task asking " + ", ".join(problems)
    if overrides:
        line += "; override " + ("it" if len(overrides) == 1 else "them") + ", e.g. " + " ".join(overrides)
    return line


def is_slurm_launcher(launcher: Mapping) -> bool:
    """Whether a ``hydra.launcher`` config submits to SLURM (hydra-submitit-launcher's SLURM launcher)."""
    return str(launcher.get("_target_", "")).rsplit(".", 1)[-1] == SLURM_LAUNCHER


def check_launcher(launcher: Mapping, sinfo_text: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
    """(the line refusing the launcher's request, or None; why it could not be checked, or None).
    ``sinfo_text`` defaults to asking :func:`query_sinfo`."""
    if sinfo_text is None:
        sinfo_text, why = query_sinfo()
        if sinfo_text is None:
            return None, why
    try:
        return unrunnable(launcher, read_partitions(sinfo_text)), None
    except ValueError as err:       # a memory size sbatch would refuse as well, or sinfo output not understood
        return None, str(err)

