"""The SDK models' first-time set-up is raced by the reference read's threads (issue 14: a pass
failed with `galleryImageVersions: AttributeError: 'dict' object has no attribute 'os_disk_image'`
on a valid page). gc_daemon/sources/sdk_models.py serializes that set-up.

Each check runs in fresh interpreters, where no model class is set up yet: 8 threads released at
once by a barrier deserialize the same pages (VMs and gallery image versions, as the compute
source does) and read the nested fields, with the interpreter's switch interval at its smallest so
that threads interleave as much as they can. Without the guard this failed in 8 of 60 runs on this
machine (a race: it cannot be made to fail every time); with it, every run must read every field.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import sys, threading
    from typing import List
    sys.path.insert(0, sys.argv[1])
    sys.setswitchinterval(1e-6)
    from gc_daemon.sources.sdk_models import guard_model_setup
    assert guard_model_setup() == ["azure.mgmt.compute._utils.model_base",
                                   "azure.mgmt.resource.resources._utils.model_base",
                                   "azure.mgmt.storage._utils.model_base"]
    from azure.mgmt.compute import models as m
    from azure.mgmt.compute._utils.model_base import _deserialize
    uri = "https://acct1.blob.core.windows.net/vhds/{}.vhd"
    version = {"id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0",
               "name": "1.0.0", "location": "westeurope", "properties": {"provisioningState": "Succeeded",
               "storageProfile": {"osDiskImage": {"hostCaching": "ReadWrite", "source": {"uri": uri.format("os")}},
                                  "dataDiskImages": [{"lun": 0, "source": {"uri": uri.format("d0")}}]}}}
    vm = {"id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v", "name": "v",
          "location": "westeurope", "properties": {"storageProfile": {
              "osDisk": {"createOption": "FromImage", "vhd": {"uri": uri.format("vm-os")}}, "dataDisks": []}}}
    barrier = threading.Barrier(8)
    errors = []
    def work(i):
        barrier.wait()
        try:
            if i % 2:
                for v in _deserialize(List[m.GalleryImageVersion], [version] * 3):
                    assert v.storage_profile.os_disk_image.source.uri == uri.format("os")
                    assert v.storage_profile.data_disk_images[0].source.uri == uri.format("d0")
            else:
                for v in _deserialize(List[m.VirtualMachine], [vm] * 3):
                    assert v.storage_profile.os_disk.vhd.uri == uri.format("vm-os")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("; ".join(errors) or "ok")
''')


def test_concurrent_first_use_of_the_sdk_models_reads_every_field():
    runs = [subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=300)
            for _ in range(8)]
    outcomes = [(r.returncode, r.stdout.strip() or r.stderr.strip()[-300:]) for r in runs]
    assert outcomes == [(0, "ok")] * 8


def test_the_guard_is_taken_once_and_lets_set_up_classes_through():
    from azure.mgmt.compute import models as m
    from azure.mgmt.compute._utils.model_base import Model

    from gc_daemon.sources.sdk_models import guard_model_setup

    first = guard_model_setup()
    assert guard_model_setup() == first  # idempotent: no second wrapper
    assert getattr(Model.__dict__["__new__"].__func__, "vhdgc_guarded", False)
    disk = m.Disk({"id": "/d", "location": "w", "properties": {"creationData": {"createOption": "Import",
                                                                                "sourceUri": "https://a.blob.core.windows.net/v/x.vhd"}}})
    assert disk.creation_data.source_uri == "https://a.blob.core.windows.net/v/x.vhd"
