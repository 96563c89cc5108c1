"""Dynamic layers, the weight-sharing supernet, static sub-networks and BN re-calibration."""
from .calibrate import calibrate_bn, preserved_bn_stats
from .layers import frozen_bn_stats, sync_batchnorm
from .supernet import DynamicMBConv, Supernet, resize_batch

__all__ = ["DynamicMBConv", "Supernet", "calibrate_bn", "frozen_bn_stats", "preserved_bn_stats", "resize_batch",
           "sync_batchnorm"]
