"""Every notebook in notebooks/ runs top to bottom, with small parameters, in a real ipykernel.

Each is executed by :func:`kit.report.make_report` (papermill into a temporary reports root),
so CI exercises exactly what ``kit report`` and ``make demo`` do. Any cell error fails the test.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

import kit
from kit import report
from kit.bench import Study
from kit.bench.envinfo import vm_accel

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

#: Small parameters for CI, one entry per notebook (a test below keeps the list complete); the docs
#: site's executed copies are run with the same (scripts/render_notebooks.py).
SMALL = yaml.safe_load((NOTEBOOKS / "quick-parameters.yml").read_text())


def _vm_boot_bytes(image: str) -> int:
    """Bytes allocated to the files a QEMU VM of ``image`` boots from (``-kernel``, ``-initrd``, every
    ``-drive file=``), each inode once: read from QEMU's own /proc cmdline and os.stat, independently
    of kit.bench.disk."""
    name = f"tnb-boot-{os.getpid()}"
    vm = kit.start(image, ["sleep", "600"], runtime="qemu", name=name)
    try:
        qemu = [p for p in vm.pids() if "qemu" in Path(f"/proc/{p}/comm").read_text()]
        assert len(qemu) == 1, qemu
        argv = [a.decode() for a in Path(f"/proc/{qemu[0]}/cmdline").read_bytes().split(b"\0") if a]
    finally:
        vm.rm(force=True)
    files = [argv[i + 1] for i, a in enumerate(argv) if a in ("-kernel", "-initrd")]
    files += [o[len("file="):].replace(",,", ",") for i, a in enumerate(argv) if a == "-drive"
              for o in argv[i + 1].split(",") if o.startswith("file=")]
    assert any(f.endswith(("vmlinuz", "vmlinux")) for f in files), argv  # the kit kernel: its vmlinux (PVH)
    blocks = {}
    for f in files:
        st = os.stat(f)
        blocks[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(blocks.values())


def test_every_notebook_is_listed_and_has_parameters():
    found = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(SMALL), "add the new notebook to SMALL with small parameters"
    for stem in found:
        nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{stem}: exactly one cell tagged 'parameters'"
        declared = report.declared_parameters(NOTEBOOKS / f"{stem}.ipynb")
        assert report.DATA_PARAM in declared, f"{stem}: declare data_dir = None to receive the data directory"
        assert set(SMALL[stem]) <= set(declared), f"{stem}: SMALL names a parameter it does not declare"
        # The notebooks are stored without outputs: results come from a run, never from the file.
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{stem}: clear outputs"


#: The longest function or class a notebook cell may define, its def line included: a helper worth
#: more belongs in kit/, with a test (a notebook is a report, not a library).
HELPER_LINES = 8


def test_no_notebook_cell_defines_a_long_helper():
    import ast

    long = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type != "code" or cell.source.lstrip().startswith("%%"):
                continue  # a cell magic's body is its own language (%%container: a shell script)
            # IPython's line magics and shell escapes are not Python: each stands as a plain statement
            code = "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line
                             for line in cell.source.splitlines())
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    size = node.end_lineno - node.lineno + 1
                    if size > HELPER_LINES:
                        long.append(f"{path.stem} cell {i}: {node.name} ({size} lines)")
    assert not long, long


#: The longest code cell a notebook may have (issue 28: no walls of code): more is code to move into kit/,
#: with a test, leaving the cell a short call to the public API. The parameters cell is exempt: papermill
#: replaces it whole, and each parameter is one line with its comment.
CELL_LINES = 15


def test_no_notebook_code_cell_is_a_wall_of_code():
    long = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):  # the file as stored, no kernel
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if cell["cell_type"] == "code" and "parameters" not in cell.get("metadata", {}).get("tags", []):
                if len(source.splitlines()) > CELL_LINES:
                    long.append(f"{path.stem} cell {i}: {len(source.splitlines())} lines")
    assert not long, long


def test_the_committed_runs_name_no_path_of_the_machine_they_were_made_on():
    """The docs site shows notebooks/executed/ (make render-notebooks): papermill's record of the run
    and every cell's code and outputs name the report, the kit and its caches, not where they were."""
    for path in sorted((NOTEBOOKS / "executed").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        pm = nb.metadata["papermill"]
        assert pm["input_path"] == f"<kit>/notebooks/{path.name}" and pm["output_path"] == f"<report>/{path.name}"
        text = path.read_text()
        assert not re.search(r"[\w/]/\.cache/kit/", text), path.name  # written $KIT_HOME/..., never /home/x/.cache/kit
        assert str(NOTEBOOKS.parent) not in text and "/reports/20" not in text, path.name


def test_machine_paths_are_redacted_in_code_outputs_and_papermills_record():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "open('/srv/r/x/data/a.csv'); dd of=/root/blob",
        outputs=[nbformat.v4.new_output("stream", text=f"{kit.config.home()}/run/abc\n")])])
    nb.metadata["papermill"] = {"input_path": "/srv/r/n.ipynb", "output_path": "/srv/r/x/n.ipynb",
                                "parameters": {"data_dir": "/srv/r/x/data", "repeat": 3}}
    report.redact_notebook(nb, {**report.machine_paths(Path("/srv/r/x"), Path("/srv/r/x/data")), "/srv/r": "<kit>"})
    cell = nb.cells[0]
    assert cell.source == "open('<data_dir>/a.csv'); dd of=/root/blob"  # a path inside an instance stays
    assert cell.outputs[0].text == "$KIT_HOME/run/abc\n"
    assert nb.metadata.papermill == {"input_path": "<kit>/n.ipynb", "output_path": "<report>/n.ipynb",
                                     "parameters": {"data_dir": "<data_dir>", "repeat": 3}}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("stem", sorted(SMALL))
def test_notebook_runs(stem, tmp_path):
    out = report.make_report(NOTEBOOKS / f"{stem}.ipynb", SMALL[stem], out_root=tmp_path, cell_timeout=600)
    executed = nbformat.read(out / f"{stem}.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert (out / f"{stem}.html").stat().st_size > 10_000
    assert json.loads((out / stem / "environment.json").read_text())["host"]
    # A notebook that measures saves what it measured.
    assert [p for p in (out / stem / "data").rglob("*") if p.suffix in (".csv", ".json")], "no raw data saved"
    if stem != "01-quickstart":
        assert list((out / stem / "figures").glob("*.png")), "no figure drawn"
    html = (out / f"{stem}.html").read_text()
    if stem == "01-quickstart":  # the study note's claims mapped to the notebooks; Docker's -p told apart
        assert "What the study note says" in html and "binds every address" in html and "Assertion" not in html
    if stem == "07-many-machines":
        assert "Optional on a single machine" in html and "What this means" in html
    if stem == "03-images-and-layers":  # the guest's own view says where a VM's writes went
        html = (out / f"{stem}.html").read_text()
        assert "Inside the <strong>qemu</strong> VM" in html and "writable layer is guest memory" in html
        # overlayfs named and shown: an image file changed in no byte is copied up whole
        assert "<strong>overlayfs</strong>" in html and "changed no byte of the file" in html
        assert "What this means" in html and "a sha256 over its whole tree" in html
        # a VM's shared bytes are the files its QEMU boots, counted here from a VM's own /proc cmdline
        sharing = pd.read_csv(out / stem / "data" / "sharing.csv").set_index("runtime")
        assert sharing.loc["qemu", "shared_mib"] * 2**20 == pytest.approx(_vm_boot_bytes("busybox"), abs=1)
        assert not re.search(r"\d (?:MB|KB)\b", html) and "MiB</strong>" in html  # MiB throughout (issue 28)
    if stem == "02-containers-vs-vms":
        html = (out / f"{stem}.html").read_text()
        accel, _ = vm_accel()  # what this host gives VMs decides which explanation the reader must see
        assert "accelerator" in html
        assert ("Under <strong>TCG</strong>" in html) == (accel != "kvm") and ("VMs run with <strong>KVM</strong>" in html) == (accel == "kvm")
        # a figure from elsewhere is shown as a reference with its source, apart from what was measured
        assert "For reference, not measured here." in html and "firecracker-microvm/firecracker" in html
        assert "TCG inflates" not in html and "the gap would be far smaller" not in html
        assert "Isolation, measured" in html and "own pid namespace" in html  # the matrix is shown
        # the memory comparison says what it counts on both sides, and gives the ratio both ways
        assert "plus its per-instance helper" in html and "%</strong> of the qemu VM" in html
        assert "counted once for all its" in html  # Docker's daemons, named once
        assert "the guest kernel booting" in html and "<strong>microvm</strong>" in html  # the VM's start, explained
        # the kit's kernel against the distribution's in the same run (issue 23), or why they were not compared
        from kit.vm.kernel import kit_kernel
        assert ("guest kernel&#x27;s configuration" in html or "guest kernel's configuration" in html) \
            if kit_kernel()[0] is not None else "Not compared:" in html
        assert "not the same program" in html  # what the bare-process baseline runs
        assert "n/a (own kernel)" in html and "root inside is uid 0 on the host" in html
        assert "Assertion" not in html and "What this means" in html  # QEMU's raw failure stays in the record
        assert "lxc-execute" in html and "between <code>created</code> and <code>started</code>" in html
    html = (out / f"{stem}.html").read_text()  # a report names no path of the machine it was made on
    assert str(tmp_path) not in html and str(kit.config.home()) not in html and str(NOTEBOOKS.parent) not in html
    if stem == "05-backend-stack":  # the stack's memory says what it counts, and a VM's guest RAM beside QEMU's
        html = (out / f"{stem}.html").read_text()
        assert "Counting each instance's own processes and its helper" in html and "of guest RAM" in html
        assert "on an empty volume" in html and "images took" in html and "What this means" in html
    if stem == "06-performance-under-load":
        assert "What this means" in html and "reference findings, this run gave" in html
    if stem == "04-services":  # the volumes sentence follows the runtimes, never a fixed "not yet"
        html = (out / f"{stem}.html").read_text()
        assert "does not offer volumes" not in html and "ran without a volume" in html
        # stop keeps a container's writable layer on disk, rm removes it, a VM loses its writes, a volume keeps them
        assert "After <code>stop</code>, the file was still on the host" in html and "powering it off loses" in html
        assert "<strong>kept</strong>." in html and "Counting its own host processes only" in html
        assert "Assertion" not in html  # QEMU's raw failure stays in the environment record
    if stem == "08-warm-starts":
        html = (out / f"{stem}.html").read_text()
        assert "For reference, not measured here:" in html and "snapshot-support.md" in html
        assert "order of milliseconds to tens of" not in html and "What this means" in html and "its cold start (" in html
        assert "Assertion" not in html  # the accelerator's reason as a sentence, QEMU's own in the record
    if stem == "06-performance-under-load":
        html = (out / f"{stem}.html").read_text()
        # the findings are computed from the run: without a VM or Docker those two are "not measured"
        assert "VM accelerator" in html and "Felter" in html and "not measured" in html


#: A Dask address as an example gives it (``tcp://lab1:8786``, ``tls://[::1]:8786``).
_DASK_ADDRESS = re.compile(r"\b(?:tcp|tls|ws|wss)://(?:\[[0-9a-fA-F:]+\]|[\w.-]+):\d+")


def test_example_scheduler_addresses_are_not_plaintext_off_this_machine():
    """The fleet refuses a plaintext scheduler off this machine unless insecure=True: an example that
    gives one (a notebook's parameters, its text, the README) would be refused as written."""
    from kit.bench import fleettls

    texts = {p.name: "\n".join(c.source for c in nbformat.read(p, as_version=4).cells)
             for p in NOTEBOOKS.glob("*.ipynb")}
    texts["README.md"] = (NOTEBOOKS.parent / "README.md").read_text()
    found = {(name, a) for name, text in texts.items() for line in text.splitlines()
             for a in _DASK_ADDRESS.findall(line) if "insecure" not in line}
    assert not [(name, a) for name, a in found if fleettls.plaintext_remote(a)]
    assert ("07-many-machines.ipynb", "tls://lab1:8786") in found  # the regex finds what the notebook gives


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_many_machines_notebook_reaches_a_tls_scheduler(tmp_path):
    """Notebook 07 given a running TLS scheduler and its certificates as files, as its parameters
    cell says (``tls://``, ``tls_ca_file``, ``tls_cert``, ``tls_key``), measures on its workers."""
    from kit.bench import fleet

    with fleet.cluster(n_local=2) as client:  # a TLS scheduler with credentials made for it
        sec, addr = client.security, client.scheduler.address
        assert addr.startswith("tls://127.0.0.1:")
        files = {}
        for name, pem in (("ca.pem", sec.tls_ca_file), ("me.pem", sec.tls_client_cert), ("me.key", sec.tls_client_key)):
            files[name] = tmp_path / name
            files[name].write_text(pem)
        params = {"scheduler": addr, "tls_ca_file": str(files["ca.pem"]), "tls_cert": str(files["me.pem"]),
                  "tls_key": str(files["me.key"]), "runtimes": "process", "repeat": 2, "warmup": 0}
        out = report.make_report(NOTEBOOKS / "07-many-machines.ipynb", params, out_root=tmp_path / "r",
                                 cell_timeout=300)
    executed = nbformat.read(out / "07-many-machines.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    html = (out / "07-many-machines.html").read_text()
    assert f"Scheduler <code>{addr}</code>: TLS." in html
    saved = next((out / "07-many-machines" / "data").rglob("study.json")).parent
    status = Study.read(saved).status()
    assert sorted(status["state"]) == ["ok", "ok"], status.to_string()  # both workers measured, over TLS
