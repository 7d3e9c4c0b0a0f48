"""``hydra/launcher=local``: submitit's local executor (each job in its own process, logs under
``<sweep dir>/.submitit/``) running at most ``array_parallelism`` jobs at once.

``array_parallelism`` (null by default) is then what the machine allows for the sweep's largest
job: its cores over ``cpus_per_task`` (default 1), and its available memory over the job's
estimated need (:func:`ntklab.resources.default_parallelism`). A job starts when a running one ends.
"""

# no `from __future__ import annotations`: Hydra's plugin scan executes this module outside
# sys.modules, where dataclasses cannot resolve string annotations
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

log = logging.getLogger(__name__)
_POLL_S = 0.2       # how often finished jobs are looked for; small next to a job's own start (~2 s)


@dataclass
class NtklabLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.ntklab_launcher.local_launcher.NtklabLocalLauncher"
    array_parallelism: Optional[int] = None     # jobs at once; null: what the cores and memory allow


ConfigStore.instance().store(group="hydra/launcher", name="ntklab_local", node=NtklabLocalConf(),
                             provider="ntklab")


class NtklabLocalLauncher(LocalLauncher):
    def __init__(self, array_parallelism: Optional[int] = None, **params: Any) -> None:
        super().__init__(**params)
        self.array_parallelism = array_parallelism

    def parallelism(self, job_overrides: Sequence[Sequence[str]]) -> int:
        if self.array_parallelism is not None:
            if int(self.array_parallelism) < 1:
                raise ValueError(f"hydra.launcher.array_parallelism must be >= 1, got {self.array_parallelism}")
            return int(self.array_parallelism)
        from ntklab import resources

        need = 0
        for overrides in job_overrides:     # the largest job sets the limit
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                # seeds=M trains M nets in one process
                need = max(need, int(cfg.get("seeds", 1) or 1) * resources.run_bytes(cfg))
            except Exception:               # not a training config (spectrum, phase) or not composable here
                pass
        return resources.default_parallelism(need, self.params.get("cpus_per_task"))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from omegaconf import OmegaConf

        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        assert self.config is not None
        limit = self.parallelism(job_overrides)
        executor = submitit.AutoExecutor(cluster="local", folder=self.params["submitit_folder"])
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"local_{k}": v for k, v in self.params.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'local' sweep output dir : {sweep_dir} ({limit} job(s) at a time)")
        pending = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            pending.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs: List[Any] = [None] * len(pending)
        running: List[int] = []
        next_job = 0
        while next_job < len(pending) or running:
            running = [i for i in running if not jobs[i].done()]
            while next_job < len(pending) and len(running) < limit:
                jobs[next_job] = executor.submit(self, *pending[next_job])
                running.append(next_job)
                next_job += 1
            if running:
                time.sleep(_POLL_S)
        return [job.results()[0] for job in jobs]
