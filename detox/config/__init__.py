"""Layer 2, the config: the typed schema Hydra composes onto, and the checks types cannot
express. Imports: core, algo (the estimator registries name the valid choices)."""
