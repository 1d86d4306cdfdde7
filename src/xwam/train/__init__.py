"""Training X-WAM: ``train(TrainConfig(...))`` or ``xwam train``.

- ``options``: :class:`TrainConfig`, everything about a run except the model shape;
- ``data``: episode splits, statistics, and the seeded global batch of every step;
- ``parallel``: torchrun context, model construction, LoRA, FSDP2;
- ``checkpoints``: step folders, ``latest``, RNG states;
- ``samples``: validation images;
- ``trainer``: the loop (:class:`Trainer`, :func:`train`). The objective itself lives in
  ``xwam.diffusion.objective``.
"""

from xwam.train.checkpoints import TRAIN_CONFIG_FILE, latest_checkpoint
from xwam.train.options import TrainConfig, TrainingDiverged
from xwam.train.trainer import Trainer, train

__all__ = ["TRAIN_CONFIG_FILE", "TrainConfig", "Trainer", "TrainingDiverged", "latest_checkpoint", "train"]
