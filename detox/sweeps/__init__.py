"""Layer 7, sweeps seen from outside: reading a multirun's job dirs and writing its summary
(`detox-sweep-summary`). Imports every layer below."""
