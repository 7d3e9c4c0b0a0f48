# Makes configs/ importable as ntklab.configs, where Hydra finds the YAML (pkg://ntklab.configs).
