"""vhd-gc: a garbage collector for orphaned Azure VHD page blobs."""

__version__ = "0.1.0"
