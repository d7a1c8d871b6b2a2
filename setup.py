"""Builds the two compiled modules: the cffi extension kvm._kvm_cffi against the system's <linux/kvm.h> (cffi API
mode), and the state codec's C happy path hotswap.state._fastcodec (a plain CPython extension: it builds Python
objects, which cffi does not)."""

from setuptools import Extension, setup

setup(
    cffi_modules=["kvm/_build.py:ffibuilder"],
    ext_modules=[Extension("hotswap.state._fastcodec", ["hotswap/state/_fastcodec.c"], extra_compile_args=["-O2"])],
)
