"""Layer 4, the data: dialogues loaded, filtered, split and turned into prompts; prompt and
length-cap sampling; detox-generate's input files and output rows. Imports: core, algo,
config, runtime; never models (a sibling)."""
