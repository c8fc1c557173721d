"""vhd-gc: a garbage collector for orphaned Azure VHD page blobs."""

# The one place the version is written: pyproject.toml reads it from here at build time
# ([tool.setuptools.dynamic]), so the wheel's metadata, `vhd-gc --version`, the User-Agent of every
# request and the vhdgc_build_info metric cannot disagree, installed or run from the source tree.
__version__ = "0.2.0"

# Sent first in the User-Agent of every request to Azure (ARM and Storage), ahead of the SDK's own.
USER_AGENT = f"vhd-gc/{__version__}"
