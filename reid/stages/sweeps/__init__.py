"""Hyperparameter sweeps: SSL temperature and fine-tuning margins on Ray Tune, assigner threshold on a grid.

- :mod:`reid.stages.sweeps.trials`: the Train-in-Tune driver every Tune sweep shares (each trial launches a
  ``TorchTrainer``; MLflow parent run with one child run per trial; resume; best config and summary).
- :mod:`reid.stages.sweeps.pretrain`, :mod:`reid.stages.sweeps.finetune`: the two Tune sweeps.
- :mod:`reid.stages.sweeps.threshold`: the assigner's distance threshold and linkage (embeddings computed once;
  no Tune needed).
- :mod:`reid.stages.sweeps.summary`: the summary table every sweep writes next to its ``best.yaml``.
"""
