"""The network: dynamic layers, the weight-sharing supernet, static sub-networks, BN
re-calibration, checkpoints of trained supernets and the released AttentiveNAS/AlphaNet ones."""
from .calibrate import calibrate_bn, preserved_bn_stats
from .layers import frozen_bn_stats, sync_batchnorm
from .supernet import DynamicMBConv, Supernet

__all__ = ["DynamicMBConv", "Supernet", "calibrate_bn", "frozen_bn_stats", "preserved_bn_stats",
           "sync_batchnorm"]
