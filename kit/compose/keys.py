"""Every Compose key sorted in three: honoured, only tuning operations (warned), changing isolation (refused).

A key the kit honours has its Compose meaning (:mod:`kit.compose.file` reads it). A key that only
tunes operations (logging, a terminal, a soft memory reservation) cannot change what a service can
reach or do, so a file using one still runs, with one warning line listing them. A key that would
weaken isolation or security (``privileged``, ``devices``, ``pid: host``...) is refused in one line
naming the key, the service and the line, before anything starts. ``strict=True`` refuses both.
"""

from __future__ import annotations

#: Service keys the kit honours, and its own extensions.
SERVICE = ("image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes",
           "depends_on", "healthcheck", "working_dir", "mem_limit", "deploy", "user", "cap_add", "cap_drop",
           "sysctls", "tmpfs", "init", "stop_signal", "stop_grace_period", "labels", "restart", "secrets",
           "configs", "container_name", "hostname", "read_only", "networks", "network_mode", "platform",
           "profiles", "extends", "cpus", "pid", "ipc",
           "x-kit-runtime", "x-kit-packages", "x-kit-colocate", "x-kit-image")

#: Service keys that only tune operations: accepted, listed in one warning line.
OPS = ("logging", "stdin_open", "tty", "mem_reservation", "mem_swappiness", "memswap_limit", "oom_score_adj",
       "oom_kill_disable", "shm_size", "ulimits", "dns", "dns_search", "dns_opt", "extra_hosts", "domainname",
       "mac_address", "pull_policy", "links", "external_links", "scale", "cpu_shares", "cpu_quota", "cpu_period",
       "cpuset", "cpu_count", "cpu_percent", "cpu_rt_runtime", "cpu_rt_period", "pids_limit", "blkio_config",
       "annotations", "attach", "develop", "storage_opt", "label_file", "post_start", "pre_stop")

#: Service keys that would change isolation or security: refused.
ISOLATION = {
    "privileged": "gives the service every capability and every host device",
    "devices": "hands host devices to the service",
    "device_cgroup_rules": "opens host devices to the service",
    "userns_mode": "changes the user namespace the service runs in",
    "uts": "shares the host's hostname namespace",
    "cgroup": "shares the host's cgroup namespace",
    "cgroup_parent": "moves the service out of the kit's cgroup",
    "security_opt": "changes the service's seccomp/AppArmor/SELinux confinement",
    "volumes_from": "shares another container's mounts",
    "gpus": "hands host GPUs to the service",
    "runtime": "picks another OCI runtime behind the kit (use x-kit-runtime)",
    "isolation": "is a Windows container setting",
    "group_add": "adds host groups to the service's credentials",
    "use_api_socket": "hands the Docker socket (root on the host) to the service",
    "credential_spec": "is a Windows container setting",
}

#: Values of ``pid``/``ipc``/``network_mode`` that share a namespace with the host or another container.
SHARED_NAMESPACE = ("host", "container:", "service:", "shareable")

#: Top-level keys.
TOP = ("services", "volumes", "networks", "secrets", "configs", "name", "version")
#: Keys of a top-level network: what the kit does with each is shown in ``plan`` (it does not apply them).
NETWORK = ("driver", "driver_opts", "ipam", "internal", "attachable", "labels", "external", "name", "enable_ipv6",
           "enable_ipv4")
#: Keys of a top-level volume.
VOLUME = ("external", "name", "driver", "driver_opts", "labels")
#: Keys of a top-level secret or config.
SECRET = ("file", "environment", "content", "name", "external", "labels", "template_driver")
#: Keys of ``build``: honoured, then only tuning (warned).
BUILD = ("context", "dockerfile", "target", "args", "labels")
BUILD_OPS = ("cache_from", "cache_to", "network", "shm_size", "extra_hosts", "platforms", "tags", "no_cache", "pull",
             "ssh", "secrets", "isolation", "additional_contexts", "dockerfile_inline", "ulimits")
#: Keys of ``healthcheck``.
HEALTH = ("test", "interval", "timeout", "retries", "disable", "start_period", "start_interval")
#: Keys of ``deploy``: the honoured paths, and what only tunes a swarm (warned).
DEPLOY = ("resources.limits.memory", "resources.limits.cpus", "restart_policy.condition",
          "restart_policy.max_attempts")
#: ``depends_on`` conditions.
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
#: ``restart`` policies.
RESTART = ("no", "always", "on-failure", "unless-stopped")
