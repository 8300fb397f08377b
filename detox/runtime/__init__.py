"""Layer 3, run plumbing: checkpoints, results.json, trackers (metrics.jsonl, W&B,
TensorBoard, MLflow), the run-dir lock, stop signals, devices and data-parallel collectives,
CPU threads, and what Hydra says about the running job. Imports: core, algo, config."""
