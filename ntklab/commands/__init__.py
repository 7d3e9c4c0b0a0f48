"""The analysis commands, each a module with its config's validation and its runner:

    python -m ntklab spectrum   :mod:`ntklab.commands.spectrum`  kernels' eigenvalues by degree, depth sweep
    python -m ntklab phase      :mod:`ntklab.commands.phase`     freeze and chaos: χ_1 diagram, kernels against depth
    python -m ntklab chaos      :mod:`ntklab.commands.chaos`     freeze and chaos of finite nets (norms) beside the limit
    python -m ntklab gan        :mod:`ntklab.commands.gan`       a GAN with a frozen, chaotic or normalised generator

``run(cfg, run_dir)`` takes a composed config and a directory and returns the summary it writes
there, so tests call it without a subprocess; ``validate(cfg)`` raises
:class:`ntklab.errors.ConfigError` for values that type-check but make no sense, before anything
is computed. Their figures are in :mod:`ntklab.plots`. (``train`` is :func:`ntklab.train.run`,
``collect`` :mod:`ntklab.collect`.)
"""
