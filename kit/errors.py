"""Every error the kit raises on purpose.

One base class, so a caller can catch everything the kit means to say::

    KitError
    ├── InvalidSpec          a malformed option: memory, cpus, port, env, name
    │   └── ComposeFileError a compose file the kit cannot honour (names key, service, line)
    ├── ImageNotFound        no image of that name in the store
    ├── ImageError           an image could not be built, imported or pulled
    ├── RuntimeUnavailable   unknown runtime, or one that cannot run here (with why)
    │   └── DaemonUnavailable the runtime's daemon (dockerd) does not answer at its socket
    ├── CommandNotFound      the command does not exist inside the image
    ├── NameInUse            an instance of that name already exists
    ├── InstanceNotFound     no instance of that name
    ├── NetworkNotFound      no kit network of that name
    ├── KitTimeout           a deadline passed (the instance was killed)
    ├── StartFailed          the runtime refused to start the instance
    │   └── ServiceFailed    a compose service did not start or become healthy (with its last log lines)
    ├── VolumeNotFound       no named volume of that name
    ├── VolumeInUse          a named volume a live instance uses cannot be removed
    ├── StorageError         a write under $KIT_HOME failed (names the path and KIT_HOME)
    │   ├── NoSpace          its filesystem is full (with the free and the needed space)
    │   └── ReadOnlyStorage  its filesystem is read-only, or this user may not write there
    └── ExitError            a run exited non-zero and the caller asked to check

Each message says what was wrong and what to do about it, on one line.
"""

from __future__ import annotations


class KitError(Exception):
    """Base class of every error the kit raises on purpose."""


class InvalidSpec(KitError, ValueError):
    """A run option is malformed (memory, cpus, port, env, name, ...)."""


class ImageNotFound(KitError, LookupError):
    """No image of that name is in the store."""


class ImageError(KitError):
    """An image could not be built, imported or pulled."""


class RuntimeUnavailable(KitError):
    """The runtime is unknown or cannot run on this host; the message says why."""


class CommandNotFound(KitError):
    """The command does not exist inside the image."""


class NameInUse(KitError):
    """An instance of that name already exists."""


class InstanceNotFound(KitError, LookupError):
    """No instance of that name exists."""


class NetworkNotFound(KitError, LookupError):
    """No kit network of that name exists."""


class KitTimeout(KitError, TimeoutError):
    """A deadline passed; whatever was waited on has been killed."""


class StartFailed(KitError):
    """The runtime refused to start the instance."""


class LimitsUnavailable(InvalidSpec):
    """A memory/CPU limit was asked for that this user cannot have enforced here (Runtime.check_limits)."""


class ComposeFileError(InvalidSpec):
    """A compose file uses a key or value the kit does not honour; nothing was started."""


class ServiceFailed(StartFailed):
    """A compose service failed to start or become healthy; the project was removed again."""

    def __init__(self, message: str, service: str = "", logs: str = ""):
        super().__init__(message)
        self.service, self.logs = service, logs


class DaemonUnavailable(RuntimeUnavailable):
    """The runtime's daemon (dockerd) does not answer at its socket; instances of other runtimes are unaffected."""


class StorageError(KitError):
    """A write under ``$KIT_HOME`` failed: the message names the path, what was written and ``KIT_HOME``;
    ``errno`` is the system's (ENOSPC, EROFS, ...)."""

    def __init__(self, message: str, errno: int | None = None, path: str = ""):
        super().__init__(message)
        self.errno, self.path = errno, path


class NoSpace(StorageError):
    """The filesystem holding a path under ``$KIT_HOME`` is full (the message says free and needed space);
    ``needed`` is the bytes the failed step needed, when known."""

    needed: int | None = None


class ReadOnlyStorage(StorageError):
    """A path under ``$KIT_HOME`` cannot be written: its filesystem is read-only, or permission is denied."""


class VolumeNotFound(KitError, LookupError):
    """No named volume of that name exists."""


class VolumeInUse(KitError):
    """A named volume cannot be removed while a live instance uses it."""


class ExitError(KitError):
    """A run exited with a non-zero code and the caller asked to check it."""

    def __init__(self, result):
        self.result = result
        tail = (result.stderr or "").strip().splitlines()[-1:] or [""]
        cmd = " ".join(result.command)
        cmd = cmd if len(cmd) <= 80 else cmd[:80] + "..."  # the message stays one short line
        super().__init__(
            f"{result.runtime}: {cmd!r} in {result.image!r} "
            f"exited with {result.exit_code}" + (f": {tail[0][:200]}" if tail[0] else "")
        )
