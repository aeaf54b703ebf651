"""What a kit VM is made of: guest kernel, initramfs, disk, accelerator, QMP.

The :class:`~kit.runtimes.qemu.QemuRuntime` assembles these pieces::

    kernel.py     the guest kernel: the kit's own (default once built), Debian's cloud kernel and its
                  modules (cached), or the user's
    kbuild.py     building the kit's own kernel from linux-source with kernel.config (cached)
    qemubin.py    the QEMU binary's version (what its command line may ask of it)
    initramfs.py  a newc cpio: static busybox, virtio modules (if any), the kit init (init.sh)
    disk.py       the image's read-only ext4 base disk (mkfs.ext4 -d), cached per image
    accel.py      KVM proven by a bounded probe boot, else TCG, with the reason
    machine.py    the qemu-system-x86_64 command line (microvm or q35)
    channel.py    host end of the guest's serial ports: console, control, exec
    qmp.py        graceful power-off and quit over QMP with deadlines

Fetch and build the kernels ahead of time with ``python -m kit.vm.kernel fetch`` and
``python -m kit.vm.kernel build`` (``make setup`` does both).
"""
