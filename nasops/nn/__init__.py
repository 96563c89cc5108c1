"""Dynamic layers, the weight-sharing supernet, static sub-networks and BN re-calibration."""
from .calibrate import calibrate_bn
from .supernet import DynamicMBConv, Supernet, resize_batch

__all__ = ["DynamicMBConv", "Supernet", "calibrate_bn", "resize_batch"]
