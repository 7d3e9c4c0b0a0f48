"""Hydra plugin of ntklab: ``hydra/launcher=local`` with a limit on the jobs run at once
(:mod:`hydra_plugins.ntklab_launcher.local_launcher`). Hydra finds launchers only under the
``hydra_plugins`` namespace, so this thin package holds it; the logic is in ntklab.resources."""
