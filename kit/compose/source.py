"""From compose files on disk to one resolved tree, every mapping remembering its file and lines.

What ``docker compose -f a.yml -f b.yml`` does before it looks at any key: read the project's
``.env``, substitute ``${VAR}`` in every value (the shell's variables over ``.env``'s), merge the
files in order (the Compose specification's merge rules), resolve ``extends`` (in the same file or
another, a cycle refused), and drop the services of profiles that are not active.

>>> tree = resolve(["compose.yml", "compose.override.yml"], environ=os.environ)
>>> tree["services"]["web"].where_of("image")      # 'compose.override.yml:4'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ComposeFileError

#: Lists replaced, not appended, when a later file (or an extending service) sets them.
REPLACED = ("command", "entrypoint", "test", "profiles")
#: Keys whose list form (``K=V`` items, names) becomes a mapping before merging.
AS_MAPPING = ("environment", "labels", "depends_on", "networks", "sysctls", "args", "annotations", "extra_hosts")


class LineDict(dict):
    """A YAML mapping that knows its file and the line of each key (for one-line errors)."""

    where: str = "<text>"
    line: int = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lines: dict = {}

    def where_of(self, key=None) -> str:
        """``FILE:LINE`` of ``key`` (of the mapping itself if it has no such key)."""
        return f"{self.where}:{self.lines.get(key, self.line)}"

    def like(self, other: "LineDict") -> "LineDict":
        """Take ``other``'s file and lines (a copy made by a merge keeps where its keys came from)."""
        self.where, self.line = other.where, other.line
        self.lines.update(other.lines)
        return self


def fail(d, key, text: str):
    """Raise the one-line error for ``key`` of mapping ``d``."""
    where = d.where_of(key) if isinstance(d, LineDict) else "<file>"
    raise ComposeFileError(f"{where}: {text}")


class _Loader(yaml.SafeLoader):
    where = "<text>"


def _mapping(loader: _Loader, node) -> LineDict:
    loader.flatten_mapping(node)
    d = LineDict()
    d.where, d.line = loader.where, node.start_mark.line + 1
    for k, v in node.value:
        key = loader.construct_object(k, deep=True)
        if not isinstance(key, (str, int, float)) or isinstance(key, bool):
            raise ComposeFileError(f"{loader.where}:{k.start_mark.line + 1}: key {key!r} must be a string")
        d[str(key) if not isinstance(key, str) else key] = loader.construct_object(v, deep=True)
        d.lines[str(key)] = k.start_mark.line + 1
    return d


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str, where: str) -> LineDict:
    """Parse one file's text; the root must be a mapping."""
    loader = _Loader(text)
    loader.where = where
    try:
        root = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ComposeFileError(f"{where}: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    finally:
        loader.dispose()
    if not isinstance(root, LineDict):
        raise ComposeFileError(f"{where}: a compose file is a mapping with a 'services:' section")
    return root


@dataclass
class File:
    """One compose file: where it is, its directory and its text."""

    where: str
    directory: Path
    text: str


def open_file(source) -> File:
    """A path (str or Path) or YAML text (a str with a newline) as a :class:`File`."""
    if isinstance(source, Path) or "\n" not in str(source):
        path = Path(source)
        try:
            return File(str(path), path.resolve().parent, path.read_text())
        except OSError as e:
            raise ComposeFileError(f"cannot read compose file {str(path)!r}: {e.strerror}") from None
    return File("<text>", Path.cwd(), str(source))


# ---- .env and variables ---------------------------------------------------------------------

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=\s*(?P<value>.*))?$")


def read_env_file(path: Path, where: str = "") -> dict[str, str]:
    """A ``.env``/``env_file``: ``KEY=VALUE`` lines, ``#`` comments, optional quotes and ``export``.

    A ``KEY`` alone (no ``=``) is left out, as Compose leaves it unset.
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise ComposeFileError(f"{where or path}: cannot read env file {str(path)!r}: {e.strerror}") from None
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if not m:
            raise ComposeFileError(f"{path}:{n}: not a KEY=VALUE line")
        if m.group("value") is None:
            continue
        out[m.group("key")] = _unquote(m.group("value"))
    return out


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] == "'":
        return v[1:-1]
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1].replace("\\n", "\n").replace('\\"', '"')
    return re.sub(r"\s+#.*$", "", v)  # an unquoted value ends at a comment


_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, environ):
    """Compose's substitution in a string: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR:+alt}``; ``$$`` is a literal ``$``. An unset variable without a default
    is an error (Compose warns and substitutes nothing, which hides typos)."""
    if isinstance(value, LineDict):
        return LineDict({k: interpolate(v, environ) for k, v in value.items()}).like(value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str) or "$" not in value:
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("braced") or m.group("plain"), m.group("op"), m.group("arg")
        val = environ.get(name)
        unset = val is None or (val == "" and op is not None and op.startswith(":"))
        if op and op.endswith("+"):
            return "" if unset else arg
        if not unset:
            return val
        if op and op.endswith("?"):
            raise ValueError(f"variable {name!r} is required: {arg or 'set it'}")
        if op and op.endswith("-"):
            return arg
        raise ValueError(f"variable {name!r} is not set: set it (or in the project's .env), or write "
                         f"${{{name}:-default}}")

    return _VAR.sub(sub, value)


def interpolate_tree(d: LineDict, environ) -> LineDict:
    """Substitute in every value of the tree; an error names the line of the key whose value it is."""
    out = LineDict().like(d)
    for k, v in d.items():
        if isinstance(v, LineDict):
            out[k] = interpolate_tree(v, environ)
            continue
        try:
            out[k] = interpolate(v, environ)
        except ValueError as e:
            fail(d, k, str(e))
    return out


# ---- merging ----------------------------------------------------------------------------------

def as_mapping(v, key: str):
    """The mapping form of a list-or-mapping key (``[K=V]`` -> ``{K: V}``, ``[name]`` -> ``{name: None}``)."""
    if not isinstance(v, list):
        return v
    out = LineDict()
    for item in v:
        if isinstance(item, dict):
            out.update(item)
            continue
        text = str(item)
        sep = "=" if key in ("environment", "labels", "sysctls", "args", "annotations") else \
            ":" if key == "extra_hosts" else None
        if sep and sep in text:
            k, _, val = text.partition(sep)
            out[k] = val
        else:
            out[text] = None
    return out


def normalise(service: LineDict) -> LineDict:
    """A service with its list-or-mapping keys as mappings (as merging and ``config`` want them)."""
    for key in AS_MAPPING:
        if key in service:
            m = as_mapping(service[key], key)
            if isinstance(m, LineDict) and isinstance(service, LineDict):
                m.where, m.line = service.where, service.lines.get(key, service.line)
            service[key] = m
    if isinstance(service.get("build"), dict) and "args" in service["build"]:
        service["build"]["args"] = as_mapping(service["build"]["args"], "args")
    return service


def merge(a, b, key: str = ""):
    """``b`` over ``a`` by the Compose merge rules: mappings merged key by key, lists appended (``command``,
    ``entrypoint``, a healthcheck's ``test`` replaced; ``volumes`` by target, ``ports`` kept unique)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = LineDict(a)
        if isinstance(a, LineDict):
            out.like(a)
        for k, v in b.items():
            out[k] = merge(out[k], v, k) if k in out else v
            if isinstance(b, LineDict) and k in b.lines:
                out.lines[k] = b.lines[k]
        if isinstance(b, LineDict) and not isinstance(a, LineDict):
            out.like(b)
        return out
    if isinstance(a, list) and isinstance(b, list) and key not in REPLACED:
        if key in ("volumes", "secrets", "configs"):
            keyed = {_target(x): x for x in a}
            keyed.update({_target(x): x for x in b})
            return list(keyed.values())
        return a + [x for x in b if x not in a]
    return b


def _target(item) -> str:
    if isinstance(item, dict):
        return str(item.get("target") or item.get("source"))
    parts = str(item).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


# ---- extends and profiles ------------------------------------------------------------------------

def extend(services: LineDict, name: str, load, chain=()) -> LineDict:
    """``services[name]`` with its ``extends`` resolved (recursively); ``load(file)`` gives another
    file's services, already interpolated. A cycle is refused naming it."""
    s = services[name]
    ext = s.get("extends") if isinstance(s, dict) else None
    if ext is None:
        return s
    if isinstance(ext, str):
        ext = {"service": ext}
    if not isinstance(ext, dict) or not ext.get("service"):
        fail(s, "extends", f"extends of service {name!r} needs 'service:' (and optionally 'file:')")
    here = (s.where, name)
    if here in chain:
        cycle = " -> ".join(n for _, n in chain + (here,))
        fail(s, "extends", f"extends forms a cycle: {cycle}; remove one of these extends")
    pool, base_dir = services, None
    if ext.get("file"):
        pool, base_dir = load(ext["file"], s)
    base_name = str(ext["service"])
    if base_name not in pool:
        fail(s, "extends", f"service {name!r} extends {base_name!r}, which is not a service of "
                           f"{ext.get('file') or 'this file'}")
    base = extend(pool, base_name, load, chain + (here,))
    base = LineDict(base).like(base) if isinstance(base, LineDict) else LineDict(base)
    if base_dir is not None:
        rebase(base, base_dir)
    base.pop("extends", None)
    own = LineDict(s).like(s)
    own.pop("extends")
    return merge(normalise(base), normalise(own))


def rebase(service: dict, directory: Path) -> None:
    """Make a service's relative paths (build context, env_file, bind sources) absolute from ``directory``
    (a service taken from another file keeps its own file's paths)."""
    def absolute(p):
        return str((directory / os.path.expanduser(str(p))).resolve()) if str(p).startswith(".") else p

    b = service.get("build")
    if isinstance(b, str):
        service["build"] = absolute(b)
    elif isinstance(b, dict) and "context" in b:
        b["context"] = absolute(b["context"])
    if "env_file" in service:
        ef = service["env_file"]
        service["env_file"] = [absolute(x) if isinstance(x, str) else {**x, "path": absolute(x.get("path", ""))}
                               for x in (ef if isinstance(ef, list) else [ef])]
    vols = service.get("volumes")
    if isinstance(vols, list):
        service["volumes"] = [(":".join([absolute(str(v).split(":")[0])] + str(v).split(":")[1:])
                               if isinstance(v, str) else v) for v in vols]


def active(service: dict, profiles) -> bool:
    """Whether a service runs with ``profiles`` active (one without ``profiles:`` always does)."""
    own = service.get("profiles") if isinstance(service, dict) else None
    return not own or bool(set(map(str, own)) & set(profiles)) or "*" in profiles


# ---- the whole pipeline ---------------------------------------------------------------------------

@dataclass
class Resolved:
    """The merged tree of a project's files, its directory, its variables and active profiles."""

    tree: LineDict
    directory: Path
    variables: dict
    profiles: tuple
    files: list


def resolve(sources, environ, profiles=None) -> Resolved:
    """Read, substitute, merge and extend ``sources`` (paths or texts, in order); drop inactive profiles.

    ``environ`` (the shell's variables) wins over the project directory's ``.env``, as in Compose.
    """
    files = [open_file(s) for s in (sources if isinstance(sources, (list, tuple)) else [sources])]
    if not files:
        raise ComposeFileError("no compose file given: give a path (or several, merged in order)")
    directory = files[0].directory
    dotenv = directory / ".env"
    variables = {**(read_env_file(dotenv) if dotenv.is_file() and files[0].where != "<text>" else {}),
                 **environ}
    merged = None
    for f in files:
        tree = interpolate_tree(load_yaml(f.text, f.where), variables)
        services = tree.get("services")
        if isinstance(services, dict):
            for name, s in services.items():
                if isinstance(s, dict):
                    services[name] = normalise(s)
        merged = tree if merged is None else merge(merged, tree)
    cache: dict = {}

    def load(file, s):
        path = (Path(s.where).resolve().parent if s.where != "<text>" else directory) / str(file)
        if path not in cache:
            f = open_file(path)
            tree = interpolate_tree(load_yaml(f.text, f.where), variables)
            svcs = tree.get("services")
            if not isinstance(svcs, dict):
                fail(s, "extends", f"{file} has no 'services:' to extend from")
            cache[path] = (svcs, f.directory)
        return cache[path]

    services = merged.get("services")
    if isinstance(services, dict):
        for name in list(services):
            services[name] = extend(services, name, load)
    if profiles is None:
        profiles = [p for p in variables.get("COMPOSE_PROFILES", "").split(",") if p]
    return Resolved(merged, directory, variables, tuple(profiles), [f.where for f in files])
