"""Cluster launch configuration (the `launch` section of a run config)."""

import re
from dataclasses import dataclass

from ops.config_rules import Problem, range_problems

SLURM_MAX_SIGNAL_LEAD_S = 65535        # sbatch --signal accepts at most this many seconds


@dataclass
class LaunchConfig:
    nodes: int = 1                     # SLURM nodes (--nodes)
    gpus_per_node: int = 1             # ranks per node; on CPU-only nodes, gloo ranks per node
    request_gpus: bool = True          # --gpus-per-node to SLURM; false on CPU-only nodes (gloo)
    cpus_per_node: int = 0             # --cpus-per-task of the one task per node; 0 = cluster default
    partition: str = ""                # --partition; "" = the cluster default
    time: str = "01:00:00"             # --time: MM | MM:SS | HH:MM:SS | D-HH[:MM[:SS]]
    account: str = ""                  # --account; "" = the user's default
    qos: str = ""                      # --qos; "" = the partition default
    signal_grace_s: int = 120          # USR1 this long before the time limit: checkpoint, requeue
    template: str = ""                 # sbatch template path; "" = the built-in template

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        problems = range_problems(self, "launch", {"nodes": 1, "gpus_per_node": 1, "signal_grace_s": 0,
                                                   "cpus_per_node": 0})
        limit_s = slurm_time_to_seconds(self.time)
        if limit_s is None:
            problems.append((f"launch.time must be a SLURM time (MM, MM:SS, HH:MM:SS or D-HH[:MM[:SS]]), "
                             f"got {self.time!r}", ("launch.time",)))
        elif self.signal_grace_s >= limit_s:
            problems.append((f"launch.signal_grace_s ({self.signal_grace_s}) must be shorter than "
                             f"launch.time ({self.time} = {limit_s} s)",
                             ("launch.signal_grace_s", "launch.time")))
        if self.signal_grace_s > SLURM_MAX_SIGNAL_LEAD_S:
            problems.append((f"launch.signal_grace_s must be <= {SLURM_MAX_SIGNAL_LEAD_S} (sbatch --signal "
                             f"limit), got {self.signal_grace_s}", ("launch.signal_grace_s",)))
        return problems


_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_time_to_seconds(text: str) -> int | None:
    """Seconds in a SLURM --time value, or None if it is not one.

    Example: slurm_time_to_seconds("1-02:00:00") == 93600; "30" is 30 minutes, "5:00" is 5 minutes.
    """
    match = _SLURM_TIME.fullmatch(text.strip())
    if match is None:
        return None
    days, first, second, third = match.groups()
    if days is not None:                       # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = first, second or 0, third or 0
    elif third is not None:                    # HH:MM:SS
        hours, minutes, seconds = first, second, third
    else:                                      # MM or MM:SS
        hours, minutes, seconds = 0, first, second or 0
    return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(seconds)
