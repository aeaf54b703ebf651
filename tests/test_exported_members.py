"""The public API is what kit.__all__ says (as httpx keeps its list honest)."""

import kit


def test_all_exported_members_exist():
    for name in kit.__all__:
        assert hasattr(kit, name), name


def test_public_names_are_listed():
    public = {n for n in dir(kit) if not n.startswith("_")}
    modules = {"api", "errors", "images", "runtimes", "result", "spec", "config", "cgroups", "magics", "exec_",
               "bench", "vm", "cli", "demo", "portfwd", "report", "verify", "lifetime"}
    assert public - modules - {"annotations"} <= set(kit.__all__)
