"""Images: named, content-addressed root filesystems that every runtime can run.

>>> import kit
>>> kit.images.get("busybox")          # built from the host's static busybox
<Image busybox ...>

Build or bring more with :func:`debian`, :func:`import_dir`, :func:`import_tar`,
:func:`import_archive` (OCI / ``docker save``), :func:`import_docker` and :func:`pull`.
"""

from __future__ import annotations

from . import builtin  # noqa: F401  (registers the built-in images)
from .store import Image, exists, get, list_images, normalize, remove
from .store import list_images as list  # noqa: A001  (kit.images.list())
from .archive import import_archive, import_dir, import_tar
from .debian import debian
from .engine import import_docker, pull

__all__ = ["Image", "get", "exists", "list", "list_images", "remove", "normalize", "table",
           "import_dir", "import_tar", "import_archive", "import_docker", "pull", "debian"]


def table():
    """A DataFrame of the stored images: name, id, size, layers, source, created."""
    import pandas as pd

    get("busybox")  # the built-in is always listed
    rows = [
        {"name": i.name, "id": i.short_id, "size_mb": round(i.size / 1e6, 2), "layers": len(i.layers),
         "source": i.source, "created": i.created}
        for i in list_images()
    ]
    return pd.DataFrame(rows, columns=["name", "id", "size_mb", "layers", "source", "created"])
