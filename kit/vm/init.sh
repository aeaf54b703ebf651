#!/.kit/busybox sh
# The kit's guest init: PID 1 of every kit VM (run from the initramfs as /init).
#
# Stage 1 (in the initramfs): mount /proc /sys /dev, load the virtio modules, read
# the run spec the host sends on the control port, mount the image's read-only
# ext4 disk under a writable tmpfs overlay and switch_root into it (or, when the
# image came inside the initramfs, stay where it is).
# Stage 2 (in the image's root): hostname, network, run the command with its
# stdout and stderr on their own serial ports, report its exit code on the
# control port, serve exec requests, power off.
#
# Channels (virtio-serial ports, by name): kit.ctl (records both ways; held open
# here, so a second opener - the command - gets EBUSY and cannot forge them),
# kit.out, kit.err (raw bytes of the command), kit.exec (exec requests).
# The console (ttyS0) carries only the kernel's errors and the "kit:init" mark.

export PATH=/.kit/bin
K=/.kit

die() {
    echo "kit: $*"
    [ -e /proc/self/fd/3 ] && echo "error $*" >&3
    sync
    reboot -f
    sleep 60
}

port() {  # the /dev node of the virtio-serial port called $1, waiting for it to appear
    i=0
    while [ $i -lt 500 ]; do
        for d in /sys/class/virtio-ports/*; do
            [ -e "$d/name" ] && [ "$(cat "$d/name")" = "$1" ] && [ -e "/dev/${d##*/}" ] && {
                echo "/dev/${d##*/}"
                return 0
            }
        done
        usleep 10000
        i=$((i + 1))
    done
    return 1
}

load() {  # insmod the modules named in $K/modules.$1, in order
    [ -f "$K/modules.$1" ] || return 0
    for m in $(cat "$K/modules.$1"); do
        insmod "$K/$m" || die "could not load module $m"
    done
}

stage1() {
    echo kit:init
    mount -t proc proc /proc
    mount -t sysfs sys /sys
    mount -t devtmpfs dev /dev
    load base
    ctl=$(port kit.ctl) || die "no control port (kit.ctl): is virtio_console loaded?"
    exec 3<>"$ctl"
    read -r n <&3 || die "no run spec from the host"
    head -c "$n" <&3 >"$K/spec.sh"
    . "$K/spec.sh"
    echo spec >&3
    [ -n "$KIT_NET" ] && load net
    if [ "$KIT_MODE" = initramfs ]; then
        exec "$K/busybox" sh "$K/init" stage2
    fi
    load disk
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do usleep 10000; i=$((i + 1)); done
    [ -b /dev/vda ] || die "no disk /dev/vda: is virtio_blk loaded?"
    mkdir -p /mnt/lower /mnt/rw /newroot
    mount -t ext4 -o ro,noload /dev/vda /mnt/lower || die "could not mount the image disk"
    mount -t tmpfs -o mode=0755 rw /mnt/rw
    # A thin layer on top of the image holds the kit's own files and mount points,
    # so the image's disk itself is never written.
    top=/mnt/rw/kit
    mkdir -p "$top$K/run" /mnt/rw/upper /mnt/rw/work
    for d in dev proc sys tmp run; do mkdir -p "$top/$d"; done
    chmod 1777 "$top/tmp"
    cp -a "$K/busybox" "$K/init" "$K/spec.sh" "$K/bin" "$top$K/"
    if [ -n "$KIT_RO" ]; then
        mount -t overlay -o "ro,lowerdir=$top:/mnt/lower" root /newroot
    else
        mount -t overlay -o "lowerdir=$top:/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work" root /newroot
    fi
    [ $? -eq 0 ] || die "could not mount the overlay root"
    for d in dev proc sys; do mount --move "/$d" "/newroot/$d"; done
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

stage2() {
    . "$K/spec.sh"
    mkdir -p "$K/run" /dev/pts /dev/shm 2>/dev/null
    mount -t tmpfs -o mode=0700 run "$K/run"
    mount -t devpts devpts /dev/pts 2>/dev/null
    mount -t tmpfs shm /dev/shm 2>/dev/null
    hostname "$KIT_HOSTNAME"
    ip link set lo up
    if [ -n "$KIT_NET" ]; then
        # QEMU user networking: the guest is 10.0.2.15, the gateway 10.0.2.2 (guest side only).
        ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
            die "could not configure eth0: is virtio_net loaded?"
    fi
    out=$(port kit.out) && err=$(port kit.err) || die "no output ports (kit.out, kit.err)"
    # Every port is opened here, before the command starts: a port has one opener at a
    # time, so the command cannot take one over and speak for the kit.
    if xport=$(port kit.exec); then
        exec 4<>"$xport"
        agent 3>&- &
    fi
    cd "$KIT_WORKDIR" 2>/dev/null || die "working directory $KIT_WORKDIR does not exist in the image"
    echo command >&3
    kit_cmd </dev/null >"$out" 2>"$err" 3>&- 4>&- &
    pid=$!
    # Host requests while the command runs: term/kill it (graceful stop).
    (while read -r msg <&3; do
        case "$msg" in
        term) kill -TERM "$pid" ;;
        kill) kill -KILL "$pid" ;;
        esac
    done) &
    wait "$pid"
    code=$?
    echo "exited $code" >&3
    sync
    reboot -f
    sleep 60
}

if [ "$1" = stage2 ]; then
    stage2
else
    stage1
fi
