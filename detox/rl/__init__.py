"""Layer 5, the RL loop: one batch of rollouts, the learning half of a step (advantages and
clipped updates), the trainer that runs the loop, and the divergence guards. Imports the
layers below; never evaluation (a sibling: validation reaches the loop as a callable)."""
