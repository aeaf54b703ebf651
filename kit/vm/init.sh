#!/.kit/busybox sh
# The kit's guest init: PID 1 of every kit VM (run from the initramfs as /init).
#
# Stage 1 (in the initramfs): mount /proc /sys /dev, load the virtio modules of
# this machine's bus, find the kit's ports, read the run spec the host sends on
# the control port, then either stay where it is (the image came inside the
# initramfs) or mount the image's read-only ext4 disk under a writable tmpfs
# overlay and switch_root into it.
# Stage 2 (in the image's root): hostname, network, run the command with its
# stdout and stderr on their own serial ports, report its exit code on the
# control port, serve exec requests, power off.
#
# Channels (virtio-serial ports, by name): kit.ctl (records both ways; held open
# here, so a second opener - the command - gets EBUSY and cannot forge them),
# kit.out, kit.err (raw bytes of the command), kit.exec (exec requests).
# The console (ttyS0) carries only the kernel's errors and the "kit:init" mark.
#
# Speed: under TCG every fork+exec costs the guest about 5 ms, which is most of
# what the kit adds to a boot. So this script uses shell builtins wherever it can
# (read instead of cat, writes to /proc and /sys instead of hostname and ip),
# forks the helpers (exec agent, stop listener) only after the command started,
# brings the loopback up while the host answers "ready" (its ~20 ms of guest CPU
# overlap the round trip), and powers off through /proc/sysrq-trigger (a write,
# not the exec of reboot).
#
# The kernel hands init the unknown name=value words of its command line as
# environment: kit_bus (pci | mmio) says which virtio transport to load, and
# kit_spec (optional) is the run spec in base64, read instead of the control port.

# The mark first, before the shell parses the rest of this script (20-35 ms under TCG): it
# stamps the guest's init starting, which is where the kernel's boot ends.
[ "$1" = stage2 ] || echo kit:init
export PATH=/.kit/bin
K=/.kit

die() {
    echo "kit: $*"
    [ -e /proc/self/fd/3 ] && echo "error $*" >&3
    exec reboot -f
}

kit_which() {  # kit_which CMD PATH: set kit_found to where CMD resolves on PATH, as a container's execvp would
    # (builtins only). Without it, this busybox (PREFER_APPLETS) would run its own applet for a bare
    # name such as dd even where the image has the real program in /usr/bin.
    kit_found=$1
    case "$1" in */*) return 0 ;; esac
    set -f
    old_ifs=$IFS
    IFS=:
    for d in $2; do
        [ -f "${d:-.}/$1" ] && [ -x "${d:-.}/$1" ] && { kit_found="${d:-.}/$1"; break; }
    done
    IFS=$old_ifs
    set +f
}

kit_file() {  # kit_file SOURCE TARGET: a file mount (kit_volumes in the spec), 9p's share of its directory
    # bound onto TARGET; in stage 1 (top: the thin layer over the image disk) only its mount point is
    # made, so that a read-only root has one.
    if [ -n "${top:-}" ]; then
        mkdir -p "$top${2%/*}" 2>/dev/null
        [ -e "$top$2" ] || : >"$top$2"
    else
        { [ -e "$2" ] || { mkdir -p "${2%/*}" 2>/dev/null; : >"$2"; }; } && mount --bind "$1" "$2" ||
            die "could not bind $1 at $2"
    fi
}

load() {  # insmod the modules named in $K/modules.$1, in order
    [ -f "$K/modules.$1" ] || return 0
    while read -r m; do
        [ -n "$m" ] && { insmod "$K/$m" || die "could not load module $m"; }
    done <"$K/modules.$1"
}

find_ports() {  # set P_ctl P_out P_err P_exec to the /dev nodes of the kit's ports (waits up to 5 s)
    i=0
    while [ $i -lt 2500 ]; do
        for d in /sys/class/virtio-ports/*; do
            # A port's name file appears once the host named it; its /dev node with it.
            [ -e "$d/name" ] && [ -e "/dev/${d##*/}" ] && read -r n <"$d/name" || continue
            case "$n" in
            kit.ctl) P_ctl=/dev/${d##*/} ;;
            kit.out) P_out=/dev/${d##*/} ;;
            kit.err) P_err=/dev/${d##*/} ;;
            kit.exec) P_exec=/dev/${d##*/} ;;
            esac
        done
        [ -n "$P_ctl" ] && [ -n "$P_out" ] && [ -n "$P_err" ] && [ -n "$P_exec" ] && return 0
        usleep 2000
        i=$((i + 1))
    done
    # kit.exec is optional; the others are not.
    [ -n "$P_ctl" ] || die "no control port (kit.ctl): is virtio_console loaded?"
    [ -n "$P_out" ] && [ -n "$P_err" ] || die "no output ports (kit.out, kit.err)"
}

stage1() {
    mount -a -T "$K/fstab.1"  # /proc /sys /dev: one process for three mounts
    # /dev/pts and /dev/shm here, before the template point (see below), not in stage 2: a restored
    # guest's first forks are its slowest (under TCG its translation cache starts empty). They
    # move along with /dev into the image's root.
    mkdir -p /dev/pts /dev/shm "$K/run"
    mount -a -T "$K/fstab.2"
    load "${kit_bus:-pci}"
    find_ports
    export P_ctl P_out P_err P_exec
    exec 3<>"$P_ctl"
    if [ -n "$kit_spec" ]; then
        # A spec on the kernel command line (base64, for a hand-written QEMU command
        # whose ports are plain files): nothing to read from the host.
        base64 -d >"$K/spec.sh" <<EOF || die "could not decode kit_spec from the kernel command line"
$kit_spec
EOF
    else
        # "ready": a VM template (kit/vm/templates.py) is saved here, blocked in the read below;
        # each restore of it resumes in that read and gets its own spec.
        echo ready >&3
        lo_up  # while the host answers
        # The spec ends at a NUL byte, which no shell word can contain.
        IFS= read -r -d '' spec <&3 || die "no run spec from the host"
        printf '%s' "$spec" >"$K/spec.sh"
    fi
    . "$K/spec.sh"
    [ -n "$kit_spec" ] && lo_up
    echo spec >&3
    if [ -n "$KIT_RESTORED" ]; then
        # Restored from a template: its clock stopped when the template was saved, and its random
        # state is every sibling's. The host sends "clock SECONDS SEED" after the spec once the guest
        # runs again (host time, rounded; 64 random hex digits): set the wall clock, mix the seed
        # into the kernel's pool.
        read -r _ sec seed <&3 || die "no clock from the host"
        date -s "@$sec" >/dev/null || die "could not set the clock"
        printf '%s' "$seed" >/dev/urandom
    fi
    [ -n "$KIT_NET" ] && load net
    [ -n "$KIT_9P" ] && load 9p
    if [ "$KIT_MODE" = initramfs ]; then
        stage2 sourced
    fi
    load disk
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do usleep 10000; i=$((i + 1)); done
    [ -b /dev/vda ] || die "no disk /dev/vda: is virtio_blk loaded?"
    mkdir -p /mnt/lower /mnt/rw /newroot
    # The image's disk read-only and a tmpfs for what is written: one mount process for both.
    mount -a -T "$K/fstab.disk" || die "could not mount the image disk"
    # A thin layer on top of the image holds the kit's own files and mount points,
    # so the image's disk itself is never written.
    top=/mnt/rw/kit
    mkdir -p "$top$K/run" "$top/dev" "$top/proc" "$top/sys" "$top/run" /mnt/rw/upper /mnt/rw/work
    mkdir -m 1777 "$top/tmp"
    cp -a "$K/busybox" "$K/init" "$K/spec.sh" "$K/fstab.2" "$K/bin" "$top$K/"
    # Volumes' mount points, in the thin layer: they exist even when the root is read-only.
    kit_mount() { mkdir -p "$top$2"; }
    kit_volumes
    if [ -n "$KIT_RO" ]; then
        opts="ro,lowerdir=$top:/mnt/lower"
    else
        opts="lowerdir=$top:/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"
    fi
    # The overlay root, then /dev /proc /sys moved into it: one mount process for four mounts
    # (under TCG each process costs the guest ~25 ms).
    printf 'root /newroot overlay %s 0 0\n/dev /newroot/dev none move 0 0\n/proc /newroot/proc none move 0 0\n/sys /newroot/sys none move 0 0\n' \
        "$opts" >"$K/fstab.root"
    mount -a -T "$K/fstab.root" || die "could not mount the overlay root"
    exec switch_root /newroot "$K/busybox" sh "$K/init" stage2
}

agent() {  # exec requests on fd 4: "<length>\n<script>" in, "out N\n<bytes>err N\n<bytes>exit C\n" out
    while read -r n <&4; do
        head -c "$n" <&4 >"$K/run/req.sh"
        (. "$K/run/req.sh") </dev/null >"$K/run/out" 2>"$K/run/err" 3>&- 4>&-
        code=$?
        echo "out $(wc -c <"$K/run/out")" >&4
        cat "$K/run/out" >&4
        echo "err $(wc -c <"$K/run/err")" >&4
        cat "$K/run/err" >&4
        echo "exit $code" >&4
    done
}

lo_up() {  # the loopback up ("ip link set lo up" without a fork): IFF_LOOPBACK|IFF_UP
    echo 9 >/sys/class/net/lo/flags
}

stage2() {  # stage2 [sourced]: "sourced" when stage 1 has read the spec into this same shell
    [ "$1" = sourced ] || . "$K/spec.sh"
    # /dev/pts /dev/shm are mounted in stage 1 (builtins only here when they are).
    [ -d "$K/run" ] && [ -e /dev/pts/ptmx ] || { mkdir -p "$K/run" /dev/pts /dev/shm; mount -a -T "$K/fstab.2"; } 2>/dev/null
    # Volumes (QEMU's 9p exports, tags kit0, kit1...), before a read-only root is made so; a
    # read-only one is refused by QEMU too (readonly=on).
    kit_mount() {
        mkdir -p "$2" 2>/dev/null
        mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144${3:+,ro}" "$1" "$2" ||
            die "could not mount volume $1 at $2"
    }
    kit_volumes
    # A read-only root needs a writable place for the exec agent's files.
    if [ -n "$KIT_RO" ]; then
        mount -t tmpfs -o mode=0700 run "$K/run"
        # From the disk the overlay is already read-only; booted from the initramfs, the root
        # is the initramfs itself, writable until remounted (a container's asked-for read-only
        # root is read-only throughout, /tmp included: so is this one).
        [ "$KIT_MODE" = initramfs ] && { mount -o remount,ro / || die "could not make the root read-only"; }
    fi
    echo "$KIT_HOSTNAME" >/proc/sys/kernel/hostname
    if [ -n "$KIT_HOSTS" ]; then
        # A kit network member: its names (the others at QEMU's gateway 10.0.2.2). Kept in $K/run,
        # writable even on a read-only root, so the host can rewrite it as members come and go.
        printf '%s' "$KIT_HOSTS" >"$K/run/hosts"
        { [ -e /etc/hosts ] || : >/etc/hosts; } 2>/dev/null && mount -o bind "$K/run/hosts" /etc/hosts
    fi
    if [ -n "$KIT_NET" ]; then
        # QEMU user networking: the guest is 10.0.2.15, the gateway 10.0.2.2 (guest side only).
        ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
            die "could not configure eth0: is virtio_net loaded?"
    fi
    # Every port is opened here, before the command starts: a port has one opener at a
    # time, so the command cannot take one over and speak for the kit.
    [ -n "$P_exec" ] && exec 4<>"$P_exec"
    cd "$KIT_WORKDIR" 2>/dev/null || die "working directory $KIT_WORKDIR does not exist in the image"
    echo command >&3
    kit_cmd </dev/null >"$P_out" 2>"$P_err" 3>&- 4>&- &
    pid=$!
    if [ -n "$P_exec" ]; then
        agent 3>&- &
    fi
    # Host requests while the command runs: term/kill it (graceful stop).
    (while read -r msg <&3; do
        case "$msg" in
        term) kill -TERM "$pid" ;;
        kill) kill -KILL "$pid" ;;
        esac
    done) 4>&- &
    wait "$pid"
    code=$?
    # The guest kernel's OOM kills (a builtin loop: no fork), reported before the exit code,
    # so that the host knows them when it learns that the command ended.
    while read -r key kills; do [ "$key" = oom_kill ] && break; done </proc/vmstat
    [ "$key" = oom_kill ] && [ "$kills" != 0 ] && echo "oom $kills" >&3
    echo "exited $code" >&3
    # Writes to a port are queued for QEMU, not waited for. Opening and closing a port
    # sends control messages that the driver does wait for, and QEMU takes them only after
    # what was queued before (the command's output, the exit record): so nothing is lost
    # when the power goes. (A leftover child of the command holding kit.out makes the open
    # fail; then there is no such guarantee.)
    { : >"$P_out"; } 2>/dev/null
    # Nothing to sync: the image disk is read-only, every write went to guest memory, and a
    # volume's (9p) went to the host as it was made. sysrq's "b" resets at once, as reboot -f -n
    # would after its exec and the kernel's device shutdown (reboot=t: QEMU exits).
    echo b >/proc/sysrq-trigger
    exec reboot -f -n  # a kernel without sysrq
}

if [ "$1" = stage2 ]; then
    stage2
else
    stage1
fi
