"""Training on sparse labels and evaluation."""

from balseg.train.metrics import confusion_matrix, iou_from_confusion
from balseg.train.trainer import TrainSettings, TrainStats, train_cycle

__all__ = ["TrainSettings", "TrainStats", "confusion_matrix", "iou_from_confusion",
           "train_cycle"]
