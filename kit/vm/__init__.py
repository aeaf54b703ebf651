"""What a kit VM is made of: guest kernel, initramfs, disk, accelerator, QMP.

The :class:`~kit.runtimes.qemu.QemuRuntime` assembles these pieces::

    kernel.py     the guest kernel and its modules (Debian cloud kernel, cached)
    initramfs.py  a newc cpio: static busybox, virtio modules, the kit init (init.sh)
    disk.py       the image's read-only ext4 base disk (mkfs.ext4 -d), cached per image
    accel.py      KVM proven by a bounded probe boot, else TCG, with the reason
    machine.py    the qemu-system-x86_64 command line (microvm or q35)
    channel.py    host end of the guest's serial ports: console, control, exec
    qmp.py        graceful power-off and quit over QMP with deadlines

Fetch the kernel ahead of time with ``python -m kit.vm.kernel fetch``.
"""
