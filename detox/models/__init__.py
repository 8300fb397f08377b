"""Layer 4, the models: the policy and its model-family adapters (the one place that knows how
an encoder-decoder family is called), decoding, reward components and toxicity judges.
Imports: core, algo, config, runtime; never data (a sibling)."""
