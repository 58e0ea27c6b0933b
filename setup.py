"""The wheel's packages: the repository's folders installed under one namespace, ``attnbench``.

``harness/`` imports as ``attnbench.harness``, ``variants/`` as ``attnbench.variants`` and ``conf/`` (yaml as package
data) as ``attnbench.conf``, so attnbench claims no generic top-level name. This file exists because pyproject.toml
can't map found packages under a prefix, and a list kept by hand would miss new subpackages.
"""

from setuptools import find_packages, setup

ROOTS = ("harness", "variants", "conf")

setup(packages=[f"attnbench.{name}" for name in find_packages(include=[f"{root}*" for root in ROOTS])],
      package_dir={f"attnbench.{root}": root for root in ROOTS})
