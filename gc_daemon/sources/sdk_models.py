"""A guard for a race in the Azure SDKs' generated models (azure-mgmt-compute 39, azure-mgmt-storage,
azure-mgmt-resource 26's resource groups).

Their models set themselves up lazily: the first construction of each model class computes, in
``Model.__new__``, the class's field table and each field's deserializer, with no lock. When two
threads construct the same class for the first time at once (the reference read lists sources on
a pool of threads), one of them can store a nested model as its raw JSON ``dict``: the pass then
failed with ``galleryImageVersions: AttributeError: 'dict' object has no attribute
'os_disk_image'`` (or ``storage_profile``, ``uri``) on a perfectly valid page. Reproduced on this
machine in 8 of 60 fresh interpreters, 8 threads each (tests/test_sdk_models.py); none in 80 with
this guard.

The guard serializes that first-time set-up, and only it: a class already set up (the SDK's own
``_calculated`` set says so) is constructed without taking the lock. It wraps ``Model.__new__``
of each SDK's ``_utils.model_base`` once per process; an SDK whose models do not look like that
is left alone (the reference read still fails closed on any error, as before).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

MODEL_BASES = (
    "azure.mgmt.compute._utils.model_base",
    "azure.mgmt.storage._utils.model_base",
    "azure.mgmt.resource.resources._utils.model_base",  # azure-mgmt-resource-locks 1.0 is msrest: no set-up race
)
_lock = threading.RLock()  # one for every SDK: a set-up can construct models of another class
_guarded: set[str] = set()


def guard_model_setup() -> list[str]:
    """Make the first-time set-up of the SDKs' model classes thread-safe. Idempotent; returns the
    model bases guarded so far."""
    with _lock:
        for name in MODEL_BASES:
            if name in _guarded:
                continue
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            model = getattr(module, "Model", None)
            calculated = getattr(model, "_calculated", None)
            if model is None or not isinstance(calculated, set) or "__new__" not in model.__dict__:
                continue
            model.__new__ = _guarded_new(model.__new__, calculated)
            _guarded.add(name)
        return sorted(_guarded)


def _guarded_new(original: Any, calculated: set[str]) -> Any:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - it replaces __new__
        if f"{cls.__module__}.{cls.__qualname__}" in calculated:
            return original(cls, *args, **kwargs)
        with _lock:
            return original(cls, *args, **kwargs)

    __new__.vhdgc_guarded = True  # type: ignore[attr-defined]
    return staticmethod(__new__)
