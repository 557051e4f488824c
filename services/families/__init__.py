"""The served families. Every module of this package is imported here, and a family module registers its family
where it defines it (`register_family` in base.py): no list to edit to add one."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
