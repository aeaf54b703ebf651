"""Images from a Dockerfile, built by the local Docker daemon's builder.

>>> import kit
>>> kit.images.build("app/", tag="myapp:1")                       # app/Dockerfile
>>> kit.images.build("app/", tag="myapp:1", dockerfile="Dockerfile.dev")
>>> kit.run("myapp:1", runtime="runc")                             # its CMD, as docker run

The build log streams as it comes (to ``stream``, or stdout). The result is
brought into the kit's store (``docker save``, layers and config kept), so
every runtime and the VM run the same bytes. ``FROM`` a name the kit stores
(``FROM busybox``, ``FROM debian-redis``) works offline: when the daemon has no
image of that name, the kit hands it its own first. The daemon is never asked
to pull (``FROM`` an image neither has fails with a one-line error).
"""

from __future__ import annotations

import collections
import os
import re
import sys
from pathlib import Path
from typing import Callable

from ..errors import ImageError, ImageNotFound
from . import engine, store
from .pull import parse

#: The Docker API version the kit builds with: Debian's dockerd 20.10 speaks 1.41, and newer
#: daemons accept it (the machine's newer docker CLI would ask for more than the daemon has).
API_VERSION = "1.41"
BUILD_TIMEOUT = 3600
#: Lines of the build log an error message quotes.
TAIL = 3
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(?P<image>\S+)(?:\s+AS\s+(?P<alias>\S+))?", re.IGNORECASE | re.MULTILINE)


def _client():
    return engine.connect(timeout=BUILD_TIMEOUT, error=ImageError, version=API_VERSION)


def base_images(dockerfile_text: str) -> list[str]:
    """The images a Dockerfile starts ``FROM`` (not its own stages, ``scratch`` or ``$ARG`` names)."""
    out, aliases = [], set()
    for m in _FROM.finditer(dockerfile_text):
        image, alias = m.group("image"), m.group("alias")
        if image.lower() not in aliases and image != "scratch" and "$" not in image and image not in out:
            out.append(image)
        if alias:
            aliases.add(alias.lower())
    return out


def _provide_bases(client, names: list[str]) -> None:
    """Give the daemon each kit image a ``FROM`` names that the daemon lacks (tagged by that name)."""
    import docker

    for ref in names:
        try:
            client.api.inspect_image(ref)
            continue
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError:
            continue
        try:
            image = store.get(ref)
        except ImageNotFound:
            continue  # the daemon's error names it
        tagged = engine.ensure_in_docker(client, image)
        repo, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        client.api.tag(tagged, repo, tag or "latest")


def build(context: str | os.PathLike, tag: str, dockerfile: str | None = None, buildargs: dict | None = None,
          stream: Callable[[str], None] | None = None, target: str | None = None) -> store.Image:
    """Build ``context`` with the daemon's builder, tag it ``tag`` there and store it as ``tag``.

    Args:
        context: the build context directory.
        tag: the image's name, in the daemon and in the kit's store (e.g. ``myapp:1``).
        dockerfile: the Dockerfile, relative to ``context`` (default ``Dockerfile``) or absolute.
        buildargs: ``ARG`` values.
        target: the stage of a multi-stage Dockerfile to build (default its last).
        stream: receives each line of the build log as it comes (default: print it).

    Raises:
        ImageError: no context or Dockerfile, no daemon, or a failed step: one line naming the
            step and quoting the last lines of its log.
    """
    import docker

    ctx = Path(context)
    if not ctx.is_dir():
        raise ImageError(f"build context {str(context)!r} is not a directory: give the folder holding the Dockerfile")
    df = Path(dockerfile) if dockerfile else ctx / "Dockerfile"
    df = df if df.is_absolute() or df.exists() else ctx / df
    if not df.is_file():
        raise ImageError(f"no Dockerfile at {str(df)!r}: write one, or name it with dockerfile=")
    parse(tag)  # a name the daemon can tag (lower-case, NAME[:TAG]); raises a one-line ImageError
    say = stream or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    client = _client()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL)
    step, image_id, pending = "", None, ""
    try:
        _provide_bases(client, base_images(df.read_text(errors="replace")))
        for chunk in client.api.build(path=str(ctx.resolve()), dockerfile=str(df.resolve()), tag=tag, rm=True,
                                  forcerm=True, pull=False, buildargs=buildargs or {}, decode=True,
                                  target=target):
            if chunk.get("error"):
                detail = " | ".join(list(tail) + [chunk["error"].strip()])
                raise ImageError(f"build of {tag!r} failed at {step or 'its start'}: {' '.join(detail.split())[:400]}")
            if (chunk.get("aux") or {}).get("ID"):
                image_id = chunk["aux"]["ID"]
            text = pending + (chunk.get("stream") or "")
            lines = text.split("\n")
            pending = lines.pop()  # a line goes out when it ends
            for line in lines:
                if line.startswith("Step "):
                    step = line.strip()
                if line.strip() and not line.startswith(" ---> "):
                    tail.append(line.strip())
                say(line)
    except docker.errors.APIError as e:
        raise ImageError(f"build of {tag!r}: the Docker daemon refused: {' '.join(str(e.explanation or e).split())[:300]}") from None
    except docker.errors.DockerException as e:
        raise ImageError(f"build of {tag!r}: {engine.daemon_unreachable()} ({e})") from None
    finally:
        client.close()
    if pending:
        say(pending)
    if not image_id:
        raise ImageError(f"build of {tag!r} ended without an image: {' | '.join(tail)[:300]}")
    return engine.import_docker(tag, image_id, source=f"build:{ctx.resolve()} ({df.name})")
