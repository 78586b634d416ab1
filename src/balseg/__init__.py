"""balseg: pixel-level Bayesian active learning for semantic segmentation."""
__version__ = "0.1.0"
