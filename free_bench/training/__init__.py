"""Exit training on a frozen backbone: teacher-forced batches, the loop (checkpoints, GAN guard)."""

from free_bench.training.batches import TFBatch, teacher_forced_batches
from free_bench.training.loop import ExitTrainConfig, GanCollapse, train_exits

__all__ = ["ExitTrainConfig", "GanCollapse", "TFBatch", "teacher_forced_batches", "train_exits"]
