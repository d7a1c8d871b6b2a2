"""hotswap: a KVM virtual machine monitor that updates itself without stopping the guest."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hotswap")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
