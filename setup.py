"""The packages of the wheel: the code's, found by name, plus ``conf/`` shipped as ``attnbench_conf``.

Everything else is in pyproject.toml. This file exists because pyproject.toml's ``packages.find`` can't
map a folder to another package name, and a package list kept by hand would miss new subpackages.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["variants*", "harness*"]), "attnbench_conf"],
      package_dir={"attnbench_conf": "conf"})
