"""Import every module of the installed gwserver, as a worker would over its life (some are
imported only when first needed): a missing dependency fails here, by name, not in every
worker. Run with the venv's python and -I, so the installed package is what is imported,
not a source tree in the current directory:  .venv/bin/python -I scripts/check-imports.py"""
import importlib
import pkgutil

import gwserver

for module in pkgutil.walk_packages(gwserver.__path__, "gwserver."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
