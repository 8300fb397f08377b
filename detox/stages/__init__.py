"""Layer 6, the stages: config in, run dir out. One place builds every stage's objects
(`assemble`); `ppo`, `evaluate`, `export`, `sft` and `summarize` wire them up; `dispatch`
picks the stage. Imports every layer below."""
