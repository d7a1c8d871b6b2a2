"""Builds the cffi extension kvm._kvm_cffi against the system's <linux/kvm.h> (cffi API mode)."""

from setuptools import setup

setup(cffi_modules=["kvm/_build.py:ffibuilder"])
