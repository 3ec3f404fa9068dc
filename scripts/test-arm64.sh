#!/usr/bin/env bash
# The agent's test suites on an emulated Raspberry Pi: a Debian bookworm chroot (the base of
# Raspberry Pi OS Bookworm) for arm64 (default) or armhf, run under qemu-user.
#
#   sudo scripts/test-arm64.sh                      # arm64: runtime unit daemon telemetry ota quality (not its wired e2e)
#   sudo scripts/test-arm64.sh tests/runtime -x     # other pytest arguments
#   sudo ARCH=armhf scripts/test-arm64.sh           # the 32-bit path (tflite-runtime, numpy < 2)
#
# Needs root (debootstrap, chroot, mounts, binfmt_misc) and qemu-user-static + debootstrap from
# Debian. The chroot and the pip caches stay in $EDGEFLEET_ARM_CACHE (default
# /var/cache/edgefleet-arm) and are reused; every mount and binfmt registration this script
# makes is undone when it exits, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
arch="${ARCH:-arm64}"
cache="${EDGEFLEET_ARM_CACHE:-/var/cache/edgefleet-arm}"
root="$cache/bookworm-$arch"
case "$arch" in
  arm64) qemu=aarch64; cpu="${QEMU_CPU:-cortex-a76}"; extras="${EXTRAS:-agent,server,test}"; venv_flags=""; include=""
         # tests/quality/test_wired.py (6 of the 14.5 emulated minutes) runs the update server's shadow and drift
         # gates end to end; its agent side (drift statistics, shadow runner, the daemon's taps) is in the other
         # quality tests, which run here, and the whole loop in the main suite
         suites=(tests/runtime tests/unit tests/daemon tests/telemetry tests/ota tests/quality
                 --ignore=tests/quality/test_wired.py) ;;
  armhf) qemu=arm; cpu="${QEMU_CPU:-cortex-a7}"; extras="${EXTRAS:-device,tflite,test}"
         # PyPI has no armv7l numpy, psutil, PyYAML: Debian's, through the venv; bsdiff4 builds from source
         venv_flags="--system-site-packages"; include=",python3-numpy,python3-psutil,python3-yaml,python3-dev,gcc,libffi-dev"
         suites=(tests/runtime tests/unit) ;;
  *) echo "test-arm64.sh: ARCH must be arm64 or armhf, not $arch" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "test-arm64.sh: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
for tool in debootstrap "qemu-$qemu-static"; do
  command -v "$tool" >/dev/null || { echo "test-arm64.sh: $tool missing: apt-get install qemu-user-static debootstrap" >&2; exit 2; }
done
started=$(date +%s)
say() { echo "== [$(( $(date +%s) - started ))s] $*"; }

# --- undo on exit -------------------------------------------------------------------------------
mounted=()          # mount points, unmounted in reverse order
binfmt_mounted=0
binfmt_registered=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # processes still running inside the chroot (a broker or agent a failed test left behind)
  for link in /proc/[0-9]*/root; do
    [ "$(readlink "$link" 2>/dev/null)" = "$root" ] || continue
    pid="${link#/proc/}"; pid="${pid%/root}"
    kill -KILL "$pid" 2>/dev/null || true
  done
  for (( i=${#mounted[@]}-1; i>=0; i-- )); do
    umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || \
      echo "test-arm64.sh: could not unmount ${mounted[$i]}" >&2
  done
  if [ -n "$binfmt_registered" ] && [ -e "/proc/sys/fs/binfmt_misc/$binfmt_registered" ]; then
    echo -1 > "/proc/sys/fs/binfmt_misc/$binfmt_registered" || echo "test-arm64.sh: binfmt $binfmt_registered left registered" >&2
  fi
  if [ "$binfmt_mounted" = 1 ]; then umount /proc/sys/fs/binfmt_misc || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bind() {  # bind SRC DEST [ro]
  mount --bind "$1" "$2"; mounted+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

# --- binfmt_misc: run foreign binaries with qemu --------------------------------------------------
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; binfmt_mounted=1
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ]; then
  # the F flag opens the interpreter now, so it works inside the chroot without a copy there
  cat "/usr/lib/binfmt.d/qemu-$qemu.conf" > /proc/sys/fs/binfmt_misc/register
  binfmt_registered="qemu-$qemu"
fi

# --- the chroot, built once ----------------------------------------------------------------------
if [ ! -f "$root/.edgefleet-ready" ]; then
  mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  mirror="${MIRROR:-${mirror:-http://deb.debian.org/debian}}"
  say "debootstrap bookworm $arch from $mirror into $root"
  rm -rf "$root.tmp"; mkdir -p "$cache"
  debootstrap --arch="$arch" --variant=minbase \
    --include="python3,python3-venv,ca-certificates,libgomp1,libstdc++6,mosquitto,mosquitto-clients$include" \
    bookworm "$root.tmp" "$mirror" > "$cache/debootstrap-$arch.log" 2>&1 \
    || { tail -20 "$cache/debootstrap-$arch.log" >&2; exit 1; }
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' > "$root.tmp/etc/hosts"  # debootstrap writes none
  touch "$root.tmp/.edgefleet-ready"
  mv "$root.tmp" "$root"
fi
if [ -n "$include" ]; then  # a chroot built before the package list grew
  missing=$(chroot "$root" /usr/bin/dpkg-query -W -f='${Package} ${Status}\n' ${include//,/ } 2>&1 | grep -vc "ok installed" || true)
  [ "$missing" = 0 ] || { say "adding ${include//,/ } to the chroot"; chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${include//,/ } > "$cache/apt-$arch.log" 2>&1; }
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# --- mounts --------------------------------------------------------------------------------------
mount -t proc proc "$root/proc"; mounted+=("$root/proc")
mount -t sysfs sysfs "$root/sys"; mounted+=("$root/sys")
# The chroot's own device nodes, not a bind of the host's /dev: a mount under a bind of a shared
# /dev would propagate to the host's.
while read -r name kind major minor; do
  [ -c "$root/dev/$name" ] || { rm -f "$root/dev/$name"; mknod -m 666 "$root/dev/$name" "$kind" "$major" "$minor"; }
done <<'NODES'
null c 1 3
zero c 1 5
full c 1 7
random c 1 8
urandom c 1 9
tty c 5 0
NODES
mkdir -p "$root/dev/shm"
mount -t tmpfs tmpfs "$root/dev/shm"; mounted+=("$root/dev/shm")
mount -t tmpfs -o size=4g tmpfs "$root/tmp"; mounted+=("$root/tmp")
# The board the runtimes see: a Raspberry Pi 5's cpuinfo (onnxruntime crashes at import on the host's
# x86 cpuinfo) and device-tree model.
fake="$cache/fake-$arch"; mkdir -p "$fake/firmware/devicetree/base"
if [ "$arch" = arm64 ]; then
  for n in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$n"
  done > "$fake/cpuinfo"
  printf 'Raspberry Pi 5 Model B Rev 1.0\0' > "$fake/firmware/devicetree/base/model"
else
  for n in 0 1 2 3; do
    printf 'processor\t: %d\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU part\t: 0xd03\n\n' "$n"
  done > "$fake/cpuinfo"
  printf 'Raspberry Pi 3 Model B Plus Rev 1.3\0' > "$fake/firmware/devicetree/base/model"
fi
bind "$fake/cpuinfo" "$root/proc/cpuinfo" ro
bind "$fake/firmware" "$root/sys/firmware" ro

# --- the source tree and the venv ----------------------------------------------------------------
rm -rf "$root/src"; mkdir -p "$root/src"
tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude=./.arm64 --exclude=./build --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache -cf - . \
  | tar -C "$root/src" -xf -
in_root() {  # a clean environment: none of the host's PIP_* or PYTHON* variables leak in
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TMPDIR=/tmp QEMU_CPU="$cpu" \
    TEST_TIME_SCALE="${TEST_TIME_SCALE:-10}" \
    PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 "$@"
}
want="$(sha256sum pyproject.toml | cut -c1-16) $extras"
if [ "$(cat "$root/opt/venv/.edgefleet-installed" 2>/dev/null)" != "$want" ]; then
  say "installing .[$extras] into /opt/venv (pip cache: $root/root/.cache/pip)"
  [ -x "$root/opt/venv/bin/python" ] || in_root python3 -m venv $venv_flags /opt/venv
  in_root /opt/venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  in_root /bin/sh -c "cd /src && /opt/venv/bin/python -m pip install -q --no-compile --prefer-binary -e '.[$extras]'"
  echo "$want" > "$root/opt/venv/.edgefleet-installed"
else
  in_root /bin/sh -c "cd /src && /opt/venv/bin/python -m pip install -q --no-deps --no-build-isolation -e ."
fi
in_root /opt/venv/bin/python -c "import platform, sys; print('python', sys.version.split()[0], platform.machine())"

# --- the suites ----------------------------------------------------------------------------------
args=("$@"); [ ${#args[@]} -gt 0 ] || args=("${suites[@]}")
say "pytest ${args[*]} (QEMU_CPU=$cpu)"
in_root /bin/sh -c "cd /src && exec python -m pytest -q -p no:cacheprovider --timeout=900 $(printf '%q ' "${args[@]}")"
say "done"
