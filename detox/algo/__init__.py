"""Layer 1, the algorithm: PPO and its critic-free relatives as pure tensor functions (masked
statistics, KL estimators and controllers, advantage estimators, losses, token-level
log-probs), and the evaluation's metric functions. Nothing here knows a model or a config.
Imports: core."""
