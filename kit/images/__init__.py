"""Images: named, content-addressed root filesystems that every runtime can run.

>>> import kit
>>> kit.images.get("busybox")          # built from the host's static busybox
<Image busybox ...>

Build or bring more with :func:`debian`, :func:`build` (a Dockerfile), :func:`pull`
(a registry), :func:`import_dir`, :func:`import_tar`, :func:`import_archive`
(OCI / ``docker save``) and :func:`import_docker`; :mod:`.registry` serves a
private registry on loopback, :func:`push` fills it.
"""

from __future__ import annotations

from . import builtin  # noqa: F401  (registers the built-in images)
from . import registry  # noqa: F401  (kit.images.registry.serve())
from .store import Image, exists, get, list_images, normalize, remove
from .store import list_images as list  # noqa: A001  (kit.images.list())
from .archive import command_for, import_archive, import_dir, import_tar
from .build import build
from .debian import debian
from .engine import import_docker
from .pull import obtain, pull, push

__all__ = ["Image", "get", "exists", "list", "list_images", "remove", "normalize", "table", "layers",
           "import_dir", "import_tar", "import_archive", "import_docker", "pull", "push", "obtain", "build", "command_for",
           "debian", "registry"]


def table():
    """A DataFrame of the stored images: name, id, size (MiB, as every figure of the kit), layers, source, created."""
    import pandas as pd

    get("busybox")  # the built-in is always listed
    rows = [
        {"name": i.name, "id": i.short_id, "size_mib": round(i.size / 2**20, 2), "layers": len(i.layers),
         "source": i.source, "created": i.created}
        for i in list_images()
    ]
    return pd.DataFrame(rows, columns=["name", "id", "size_mib", "layers", "source", "created"])


def layers(name: str):
    """A DataFrame of image ``name``'s layers, bottom first: digest, size (KiB, as stored or sent), source."""
    import pandas as pd

    img = get(name)
    rows = [{"layer": i, "digest": (lay.get("digest") or "")[:19], "size_kib": round((lay.get("size") or 0) / 1024, 1),
             "source": lay.get("source", "")} for i, lay in enumerate(img.layers)]
    return pd.DataFrame(rows, columns=["layer", "digest", "size_kib", "source"])
