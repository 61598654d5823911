"""Packaging: everything is in pyproject.toml except one thing it cannot say.

The shipped configs (``config/*.yaml``) and the systemd files (``systemd/``) travel in the wheel as the
data-only package ``voxd_data`` (``voxd_data/config/``, ``voxd_data/systemd/``; read by ``voxd config``,
voxd/commands/configs.py) while staying where they are in the repository, where tests, docs and
``make install`` use them. That takes a package whose directory is not its name (``package_dir``), and
``[tool.setuptools.packages.find]`` cannot add one to the packages it finds: so it is added here, after
pyproject.toml is read. Works for a wheel (files copied) and for ``pip install -e .`` (setuptools'
editable finder maps ``voxd_data.config`` to ``config/`` in the checkout, so edits show at once).
"""

from __future__ import annotations

from typing import Any

from setuptools import setup
from setuptools.dist import Distribution

#: package -> (its directory in the repository, the files it ships, the files it leaves out)
DATA_PACKAGES: dict[str, tuple[str, list[str], list[str]]] = {
    # demo.yaml replays demo/respeaker4-kitchen.flac, which is in the repository only (config/examples/ too,
    # and they are not collected by this pattern)
    "voxd_data.config": ("config", ["*.yaml"], ["demo.yaml"]),
    "voxd_data.systemd": ("systemd", ["voxd.service", "voxd.sysusers.conf"], []),
}


class VoxdDistribution(Distribution):
    """The distribution of pyproject.toml plus :data:`DATA_PACKAGES`."""

    def parse_config_files(self, *args: Any, **kwargs: Any) -> None:
        super().parse_config_files(*args, **kwargs)
        self.packages = list(self.packages or [])
        self.package_dir = dict(self.package_dir or {})
        self.package_data = dict(self.package_data or {})
        for package, (directory, files, excluded) in DATA_PACKAGES.items():
            if package not in self.packages:
                self.packages.append(package)
            self.package_dir[package] = directory
            self.package_data[package] = files
            if excluded:
                self.exclude_package_data = {**(self.exclude_package_data or {}), package: excluded}


setup(distclass=VoxdDistribution)
