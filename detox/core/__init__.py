"""Layer 0, the ground floor: user errors, atomic file writes, the run dir's names, Hydra
override keys, friendly load errors, shipped assets and quiet logs. Imports no other layer
(and neither torch nor transformers)."""
