/* vm.h - the vm driver's (vmm/vm.c) constants and its one piece of global
 * configuration, the accelerator.  The gateway uses vmm/driver.h otherwise. */
#ifndef SBX_VMM_VM_H
#define SBX_VMM_VM_H

#include "../common/err.h"
#include "driver.h"

/* The guest: files of the build's vm/ directory (next to sbx-agent). */
#define VM_KERNEL "vmlinuz"
#define VM_KERNEL_RAW "vmlinux" /* decompressed, when the build could make it */
#define VM_INITRD "initrd.img"
#define VM_QEMU "qemu-system-x86_64"

/* Names inside <data_dir>/sandboxes/<id>/ (besides ns.h's pid and cgroups). */
#define VM_DISK "disk.ext4"
#define VM_AGENT_SOCK "agent.sock"
#define VM_CTL_SOCK "ctl.sock"
#define VM_CONSOLE "console.log"
#define VM_QEMU_LOG "qemu.log"
#define VM_QEMU_PID "qemu.pid"
#define VM_CONSOLE_MAX (4 << 20) /* rotated at a boot beyond this (console.log.1) */

/* What the agent prints on the console once it serves its port. */
#define VM_READY_MARK "serving port"

#define VM_MEM_DEFAULT_MIB 256   /* guest RAM without limits.memory_mib */
#define VM_DISK_DEFAULT_MIB 2048 /* writable disk without limits.disk_mib (sparse) */
#define VM_QEMU_OVERHEAD_MIB 256 /* QEMU's own memory on top of the guest's */
#define VM_QEMU_PIDS 256         /* QEMU's threads */
#define VM_BOOT_TIMEOUT_TCG_MS 90000
#define VM_BOOT_TIMEOUT_KVM_MS 20000
#define VM_STOP_GRACE_MS 10000
#define VM_UID_BASE 300000u /* QEMU runs as VM_UID_BASE + hash(id) % VM_UID_COUNT */
#define VM_UID_COUNT 65536u


/* The guest kernel or initramfs (VM_KERNEL, VM_INITRD): in $SBX_VM_DIR, else
 * in vm/ next to sbx-agent (the build puts them in build/vm/).  Fails with a
 * message naming the path and `make` when it is missing. */
int vmm_vm_guest_file(const char *agent_path, const char *name, char *out, size_t n,
                      sbx_err *err);

/* The guest kernel to boot: vmlinux when the build made it, else vmlinuz. */
int vmm_vm_kernel(const char *agent_path, char *out, size_t n, sbx_err *err);

/* Choose the accelerator once, before any thread starts: "kvm", "tcg", or
 * "auto" (KVM when it boots our guest, see vm_probe.c; TCG otherwise).
 * agent_path locates the guest (vmm_vm_guest_file). */
int vmm_vm_setup(const char *want, const char *agent_path, sbx_err *err);
/* "kvm" or "tcg". */
const char *vmm_vm_accel(void);
/* The host CPU's clock in kHz (0 if unknown): the TCG guest's TSC. */
long vmm_vm_tsc_khz(void);

#endif
