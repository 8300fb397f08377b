"""Layer 5, evaluation and reports: held-out sampling and judging of a policy, the figures
computed from samples, report files and plots, and the sweep objective. Imports the layers
below; never rl (a sibling)."""
