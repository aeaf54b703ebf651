"""``kit compose config``: the resolved model, as ``docker compose config`` prints it.

Variables substituted, files merged, ``extends`` and profiles applied, defaults filled (a service's
``depends_on`` condition, a port's published side, a volume's mode), paths absolute; secrets' values
never appear (only where they come from). Checked against Debian's ``docker-compose`` 1.29 in
tests/test_compose_corpus.py: the same services, images, commands, environment, ports and volumes.

>>> print(kit.compose.config_text("docker-compose.yml"))
"""

from __future__ import annotations

import yaml

from .file import Project, Service, read


def config(source, project: str | None = None, environ: dict | None = None, *, profiles=None) -> dict:
    """The resolved model of compose files (a path, text, or a list merged in order) as a mapping."""
    p = source if isinstance(source, Project) else read(source, project, environ, profiles=profiles)
    out: dict = {"name": p.name, "services": {name: _service(s) for name, s in p.services.items()}}
    for key, table in (("networks", p.networks), ("volumes", p.volumes)):
        if table:
            out[key] = {n: dict(v) for n, v in table.items()}
    for key, table in (("secrets", p.secrets), ("configs", p.configs)):
        if table:
            out[key] = {n: ({"file": s.file} if s.file else {"environment": s.environment} if s.environment
                            else {"content": "(given)"}) for n, s in table.items()}
    return _plain(out)


def _plain(v):
    """Plain dicts and lists (the reader's mappings remember lines; YAML and JSON want neither)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def config_text(source, project: str | None = None, environ: dict | None = None, *, profiles=None) -> str:
    """:func:`config` as YAML text (what ``kit compose config FILE`` prints)."""
    return yaml.safe_dump(config(source, project, environ, profiles=profiles), sort_keys=True,
                          default_flow_style=False)


def _service(s: Service) -> dict:
    d: dict = {}
    if s.image:
        d["image"] = s.image
    if s.build:
        d["build"] = {k: v for k, v in s.build.items() if v}
    for key in ("command", "entrypoint", "working_dir", "container_name", "hostname", "platform", "network_mode"):
        if getattr(s, key) is not None:
            d[key] = getattr(s, key)
    if s.environment:
        d["environment"] = dict(s.environment)
    if s.ports:
        d["ports"] = [{"published": int(h), "target": int(c)} for h, c in (p.split(":") for p in s.ports)]
    if s.expose:
        d["expose"] = list(s.expose)
    if s.volumes:
        d["volumes"] = [_volume(v) for v in s.volumes]
    if s.depends_on:
        d["depends_on"] = {dep: {"condition": cond} for dep, cond in s.depends_on.items()}
    if s.networks:
        d["networks"] = {n: None for n in s.networks}
    if s.restart != "no":
        d["restart"] = s.restart + (f":{s.restart_max}" if s.restart_max is not None else "")
    for key in ("secrets", "configs"):
        if getattr(s, key):
            d[key] = [{"source": src, "target": target, **_access(s.access.get(target))}
                      for src, target in getattr(s, key)]
    if s.healthcheck:
        h = s.healthcheck
        d["healthcheck"] = {"test": ["CMD"] + h.test, "interval": f"{h.interval:g}s", "timeout": f"{h.timeout:g}s",
                            "retries": h.retries, "start_period": f"{h.start_period:g}s"}
    if s.memory:
        d["mem_limit"] = s.memory
    if s.cpus:
        d["cpus"] = s.cpus
    if s.read_only:
        d["read_only"] = True
    d.update({k: (v if not isinstance(v, list) else [str(x) for x in v]) for k, v in s.options.items()})
    return d


def _access(given) -> dict:
    """A long syntax's mode (octal text, as Compose writes it), uid and gid, where given."""
    mode, uid, gid = given or (None, None, None)
    return {k: v for k, v in (("mode", None if mode is None else f"0{mode:o}"), ("uid", uid), ("gid", gid))
            if v is not None}


def _volume(v) -> str:
    src, dest, ro, kind = v
    if kind in ("anonymous", "tmpfs"):
        return dest
    return f"{src}:{dest}:{'ro' if ro else 'rw'}"
