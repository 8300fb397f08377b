"""detox: PPO detoxification of seq2seq summarizers, configured with Hydra."""

__version__ = "0.1.0"
