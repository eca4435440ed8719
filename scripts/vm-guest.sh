#!/bin/sh
# vm-guest.sh OUTDIR AGENT_BIN - build the microVM driver's guest:
#
#   OUTDIR/vmlinuz      Debian 12's cloud kernel, unpacked from its .deb (the
#                       package is downloaded with apt-get, never installed on
#                       the host: the host runs its own kernel)
#   OUTDIR/vmlinux      the same kernel decompressed (ELF with a PVH note):
#                       QEMU boots it directly, faster; only when CONFIG_PVH=y
#                       and the payload's decompressor (lz4 for Debian 12's
#                       kernel) is installed: otherwise use vmlinuz
#   OUTDIR/initrd.img   gzip newc cpio: /bin/busybox (busybox-static) and the
#                       applet links vm/init uses, /init (vm/init), the virtio
#                       modules in load order (/lib/modules/*.ko, listed by
#                       /lib/modules/load), /sbin/sbx-agent (AGENT_BIN)
#   OUTDIR/guest.info   which kernel package and version they came from
#   OUTDIR/dl/          the download cache (.deb, unpacked tree with modules.dep)
#
# Idempotent: the kernel is fetched once per kernel package (its ABI name, e.g.
# linux-image-6.1.0-57-cloud-amd64) and the initrd is rebuilt only when one of
# its inputs changed (a stamp of their checksums), so a `make` with nothing to
# do costs a few checksums (0.1 s).
#
# Environment: SBX_VM_KERNEL_PKG pins the kernel package instead of asking
# apt-cache what linux-image-cloud-amd64 depends on; BUSYBOX names a static
# busybox other than /bin/busybox.
set -eu

die() {
  echo "vm-guest: $*" >&2
  exit 1
}

[ $# -eq 2 ] || die "usage: $0 OUTDIR AGENT_BIN"
out=$1
agent=$2
src=$(cd "$(dirname "$0")/.." && pwd)
init_src=$src/vm/init
busybox=${BUSYBOX:-/bin/busybox}
# the guest needs these and their dependencies (ext4 is built in)
want_modules="virtio_mmio virtio_blk virtio_console overlay"
# applets vm/init and a debugging shell use: links to /bin/busybox in the
# initramfs (the agent never uses them: it chroots into the image first)
applets="sh ash cat echo ls mkdir mount umount insmod poweroff reboot sleep usleep
readlink hostname dmesg grep sed stty setsid ps"

[ -f "$agent" ] || die "agent binary $agent not found (build it first: make build/sbx-agent)"
[ -f "$init_src" ] || die "$init_src not found"
if [ -z "${BUSYBOX:-}" ] &&
  ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  die "busybox-static is not installed: apt-get install busybox-static"
fi
[ -x "$busybox" ] || die "$busybox not found: apt-get install busybox-static"
for t in apt-cache apt-get dpkg-deb gzip sha256sum; do
  command -v "$t" >/dev/null 2>&1 || die "$t not found (this script needs a Debian host)"
done

mkdir -p "$out/dl"
out=$(cd "$out" && pwd)
dl=$out/dl

# ---- which kernel ----
# linux-image-cloud-amd64 is the metapackage that follows Debian's current
# cloud kernel; it depends on exactly one linux-image-<abi>-cloud-amd64.
# apt-cache takes half a second here (no pkgcache.bin), so its answer is
# kept in dl/resolved and asked again only when the apt lists change (apt-get
# update renames files into /var/lib/apt/lists, which moves its mtime).
pkg=${SBX_VM_KERNEL_PKG:-}
if [ -z "$pkg" ]; then
  lists=$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo none)
  read -r r_lists r_pkg 2>/dev/null <"$dl/resolved" || true
  if [ "${r_lists:-}" = "$lists" ] && [ -n "${r_pkg:-}" ]; then
    pkg=$r_pkg
  else
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1)
    [ -z "$pkg" ] || echo "$lists $pkg" >"$dl/resolved"
  fi
fi
if [ -z "$pkg" ]; then
  # no apt lists (apt-get update never ran): an earlier download still works
  cached=$(ls -t "$dl"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n 1)
  [ -n "$cached" ] ||
    die "apt-cache cannot resolve linux-image-cloud-amd64 (run apt-get update; is this Debian 12?)"
  pkg=$(basename "$cached" | sed 's/_.*//')
  echo "vm-guest: apt-cache cannot resolve linux-image-cloud-amd64, using cached $pkg" >&2
fi
case $pkg in
linux-image-*-cloud-amd64) ;;
*) die "unexpected kernel package name '$pkg'" ;;
esac
kver=${pkg#linux-image-}

# ---- download (once per kernel package) ----
deb=$(ls -t "$dl/${pkg}"_*_amd64.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
  echo "vm-guest: downloading $pkg" >&2
  # apt-get download as root drops to the _apt user for the transfer; give
  # it a directory it can reach and write (OUTDIR may sit under a 0700
  # home), so the download stays sandboxed
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/sbx-vm-guest.XXXXXX")
  if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
    chown _apt "$tmp"
  fi
  if ! (cd "$tmp" && apt-get download -q "$pkg" >&2); then
    rm -rf "$tmp"
    die "apt-get download $pkg failed (network? run apt-get update)"
  fi
  f=$(ls "$tmp"/*.deb 2>/dev/null | head -n 1)
  [ -n "$f" ] || {
    rm -rf "$tmp"
    die "apt-get download $pkg produced no .deb"
  }
  chown 0:0 "$f" 2>/dev/null || true
  deb=$dl/$(basename "$f")
  # OUTDIR is usually on another filesystem than /tmp: copy, then rename,
  # so an interrupted build never leaves a truncated .deb in the cache
  mv "$f" "$deb.part"
  mv "$deb.part" "$deb"
  rm -rf "$tmp"
fi

# ---- unpack + depmod (once per .deb) ----
tree=$dl/$pkg
moddir=$tree/lib/modules/$kver
if [ "$(cat "$tree/.unpacked" 2>/dev/null || true)" != "$(basename "$deb")" ]; then
  echo "vm-guest: unpacking $(basename "$deb")" >&2
  rm -rf "$tree" "$tree.tmp"
  mkdir -p "$tree.tmp"
  dpkg-deb -x "$deb" "$tree.tmp" || die "dpkg-deb -x $deb failed (corrupt download? remove it)"
  [ -f "$tree.tmp/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"
  # Debian generates modules.dep in the package's postinst, so the .deb has
  # none; busybox's depmod writes one for the unpacked tree
  "$busybox" depmod -b "$tree.tmp" "$kver" || die "depmod of $kver failed"
  basename "$deb" >"$tree.tmp/.unpacked"
  mv "$tree.tmp" "$tree"
  # an older kernel's download and tree are 130 MB nobody uses any more
  for old in "$dl"/linux-image-*; do
    case $old in "$deb" | "$tree") ;; *) rm -rf "$old" ;; esac
  done
fi
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing (remove $tree and retry)"

# ---- module load order ----
# Depth-first over modules.dep: a module's dependencies come before it.
order=""
resolve() {
  case " $order " in *" $1 "*) return 0 ;; esac
  grep -q "^$1:" "$moddir/modules.dep" || die "module $1 not in modules.dep"
  _deps=$(sed -n "s|^$1:||p" "$moddir/modules.dep")
  for _d in $_deps; do resolve "$_d"; done
  order="$order $1"
}
for m in $want_modules; do
  path=$(grep -E "^([^:]*/)?$m\.ko:" "$moddir/modules.dep" | head -n 1 | cut -d: -f1)
  [ -n "$path" ] || die "module $m not found in $pkg"
  resolve "$path"
done

# ---- vmlinux: the same kernel uncompressed, for PVH direct boot ----
# QEMU boots an ELF vmlinux with a PVH note straight into the kernel (no
# real-mode setup, no in-guest decompression: 0.3-0.5 s less under TCG).
# The bzImage header says where its compressed payload is: protected-mode
# code at (setup_sects+1)*512, payload_offset (0x248) and payload_length
# (0x24c) within it; the payload's last 4 bytes are the decompressed size.
pvh=
grep -q '^CONFIG_PVH=y' "$tree/boot/config-$kver" 2>/dev/null && pvh=1
le() { od -An -tu"$2" -j "$1" -N"$2" "$3" | tr -d ' '; }
extract_vmlinux() {
  _ss=$(le $((0x1f1)) 1 "$1")
  [ "$_ss" -ne 0 ] || _ss=4
  _start=$(((_ss + 1) * 512 + $(le $((0x248)) 4 "$1")))
  _len=$(le $((0x24c)) 4 "$1")
  _magic=$(tail -c +$((_start + 1)) "$1" | head -c 4 | od -An -tx1 | tr -d ' ')
  case $_magic in
  02214c18) _dec="lz4 -dc" ;;
  1f8b*) _dec="gzip -dc" ;;
  fd377a58) _dec="xz -dc" ;;
  28b52ffd) _dec="zstd -dc" ;;
  *) die "vmlinuz payload compressed with an unknown format (magic $_magic)" ;;
  esac
  # without the tool there is no vmlinux (vmlinuz still boots, slower)
  if ! command -v "${_dec%% *}" >/dev/null 2>&1; then
    echo "vm-guest: ${_dec%% *} not installed, no vmlinux for PVH boot (apt-get install ${_dec%% *})" >&2
    return 1
  fi
  tail -c +$((_start + 1)) "$1" | head -c $((_len - 4)) | $_dec >"$2" 2>/dev/null ||
    die "unpacking vmlinux from $1 ($_dec) failed"
  _want=$(tail -c +$((_start + _len - 3)) "$1" | head -c 4 | od -An -tu4 | tr -d ' ')
  [ "$(wc -c <"$2")" -eq "$_want" ] || die "vmlinux is $(wc -c <"$2") bytes, the bzImage says $_want"
  [ "$(head -c 4 "$2" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || die "unpacked vmlinux is not ELF"
}

# ---- up to date? ----
stamp=$(
  {
    echo "$pkg $(basename "$deb") $want_modules $applets"
    # contents only: the same inputs named by other paths are up to date
    sha256sum "$0" "$init_src" "$agent" "$busybox" "$tree/boot/vmlinuz-$kver" | cut -d' ' -f1
    for p in $order; do echo "$p $(sha256sum <"$moddir/$p" | cut -d' ' -f1)"; done
  } | sha256sum | cut -d' ' -f1
)
if [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ] &&
  { [ -z "$pvh" ] || [ -f "$out/vmlinux" ] || ! command -v lz4 >/dev/null 2>&1; } &&
  [ "$(cat "$out/.stamp" 2>/dev/null || true)" = "$stamp" ]; then
  # inputs unchanged (e.g. the agent was relinked to the same bytes): make
  # still wants the targets newer than their prerequisites
  touch "$out/initrd.img" "$out/vmlinuz"
  [ ! -f "$out/vmlinux" ] || touch "$out/vmlinux"
  exit 0
fi

# ---- initramfs ----
stage=$out/.stage
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/sbin" "$stage/lib/modules" "$stage/dev" "$stage/proc" \
  "$stage/sys" "$stage/lower" "$stage/rw" "$stage/newroot" "$stage/etc" "$stage/tmp"
cp "$busybox" "$stage/bin/busybox"
for a in $applets; do ln -s busybox "$stage/bin/$a"; done
cp "$init_src" "$stage/init"
chmod 0755 "$stage/init"
cp "$agent" "$stage/sbin/sbx-agent"
# debug info is most of the agent's size, and every byte of the initrd is
# decompressed by the guest at boot (slowly under TCG)
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug "$stage/sbin/sbx-agent" 2>/dev/null || cp "$agent" "$stage/sbin/sbx-agent"
fi
chmod 0755 "$stage/sbin/sbx-agent"
: >"$stage/lib/modules/load"
for p in $order; do
  cp "$moddir/$p" "$stage/lib/modules/"
  basename "$p" >>"$stage/lib/modules/load"
done
echo "$kver" >"$stage/etc/sbx-kernel"
# fixed times and owners: the same inputs give the same initrd bytes
find "$stage" -exec touch -h -d @0 {} +
rm -f "$out/initrd.cpio"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
  "$busybox" cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes -F "$out/initrd.cpio" 2>/dev/null) ||
  die "building the initramfs (cpio) failed"
# The kernel opens /dev/console on the initramfs before it runs /init: with
# the node there, /init starts with the serial console as stdin/out/err
# (without it the kernel warns, and init reopens the console itself once
# devtmpfs is up).  busybox cpio --ignore-devno would zero the node's device
# number and mknod needs root, so the node is a second archive, written
# here (newc: "070701", 13 hex fields, the name, NUL padding to 4 bytes);
# the kernel unpacks concatenated archives.
newc() { # NAME INO MODE NLINK RDEVMAJOR RDEVMINOR
  _pad=$(((4 - (110 + ${#1} + 1) % 4) % 4))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
    "$2" "$3" 0 0 "$4" 0 0 0 0 "$5" "$6" $((${#1} + 1)) 0 "$1"
  [ "$_pad" -eq 0 ] || head -c "$_pad" /dev/zero
}
{
  newc dev/console 1 $((0020600)) 1 5 1
  newc 'TRAILER!!!' 0 0 1 0 0
} >>"$out/initrd.cpio"
gzip -n -6 -c "$out/initrd.cpio" >"$out/initrd.img.tmp" || die "gzip of the initramfs failed"
rm -f "$out/initrd.cpio"
mv "$out/initrd.img.tmp" "$out/initrd.img"
cp "$tree/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
rm -f "$out/vmlinux"
if [ -n "$pvh" ] && extract_vmlinux "$out/vmlinuz" "$out/vmlinux.tmp"; then
  mv "$out/vmlinux.tmp" "$out/vmlinux"
else
  rm -f "$out/vmlinux.tmp"
  pvh=
fi
rm -rf "$stage"
{
  echo "kernel_package=$pkg"
  echo "kernel_deb=$(basename "$deb")"
  echo "kernel_release=$kver"
  echo "pvh=${pvh:-0}"
  echo "modules=$(for p in $order; do basename "$p" .ko; done | tr '\n' ' ' | sed 's/ $//')"
} >"$out/guest.info"
echo "$stamp" >"$out/.stamp"
echo "vm-guest: $out/vmlinuz ($kver), $out/initrd.img ($(wc -c <"$out/initrd.img") bytes)" >&2
