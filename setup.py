"""rktlet's package: the ``rktlet`` library, its twistd plugin and its command."""

from setuptools import find_packages, setup

setup(
    # twisted/plugins is a namespace shared with Twisted: it must be listed
    # here and must never get an __init__.py.
    packages=find_packages(include=["rktlet", "rktlet.*"]) + ["twisted.plugins", "rktlet.packaging", "rktlet.packaging.cni"],
    # packaging/ ships inside the package too: the daemon reads the default
    # CNI network from it (rktlet/packaged.py).
    package_dir={"rktlet.packaging": "packaging"},
    package_data={"rktlet": ["py.typed"], "rktlet.packaging": ["*.toml", "*.service", "*.sh", "cni/*.conflist"]},
)
