/* vm_probe.c - choosing the vm driver's accelerator (vm.h).
 *
 * /dev/kvm existing does not mean KVM works: on nested hosts the device opens
 * and then guests hang, or QEMU aborts setting up the vCPU (seen here:
 * "kvm_buf_set_msrs: Assertion ... failed" for any -cpu).  So "auto" takes
 * KVM only after two checks, each in a child that is killed at a deadline:
 *   1. a tiny guest run by hand - real-mode code that writes one byte to a
 *      port and halts - must give exactly that (an IO exit, then HLT);
 *   2. QEMU must boot our own guest with KVM far enough for its /init to
 *      print its first line on the serial console.
 * Anything else means TCG. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/kvm.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/util.h"
#include "vm.h"

#define PROBE_TIMEOUT_MS 1000
#define PROBE_BOOT_TIMEOUT_MS 5000
#define PROBE_PORT 0x3f8
#define PROBE_BYTE 'K'

/* In the child: 0 if the guest ran as expected, else a step number. */
static int probe_child(void) {
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0)
    return 1;
  if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
    return 2;
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0)
    return 3;
  uint8_t *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED)
    return 4;
  /* mov dx, 0x3f8; mov al, 'K'; out dx, al; hlt */
  static const uint8_t code[] = {0xba, 0xf8, 0x03, 0xb0, PROBE_BYTE, 0xee, 0xf4};
  memcpy(mem, code, sizeof code);
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0x1000, .memory_size = 0x1000, .userspace_addr = (uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
    return 5;
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0)
    return 6;
  int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (runsz <= 0)
    return 7;
  struct kvm_run *run = mmap(NULL, (size_t)runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED)
    return 8;
  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
    return 9;
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
    return 10;
  struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2};
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
    return 11;
  bool saw_io = false;
  for (int i = 0; i < 4; i++) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0)
      return 12;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
      if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != PROBE_PORT || run->io.size != 1 ||
          *((uint8_t *)run + run->io.data_offset) != PROBE_BYTE)
        return 13;
      saw_io = true;
      break;
    case KVM_EXIT_HLT:
      return saw_io ? 0 : 14;
    default:
      return 15;
    }
  }
  return 16;
}

/* Run the probe in a child; true if KVM ran it within the deadline. */
static bool kvm_works(char *why, size_t n) {
  if (access("/dev/kvm", R_OK | W_OK) < 0) {
    snprintf(why, n, "/dev/kvm: %s", strerror(errno));
    return false;
  }
  pid_t pid = fork(); /* before any thread exists (vmm_vm_setup runs first) */
  if (pid < 0) {
    snprintf(why, n, "fork: %s", strerror(errno));
    return false;
  }
  if (pid == 0)
    _exit(probe_child());
  int status = 0;
  int64_t deadline = sbx_mono_ms() + PROBE_TIMEOUT_MS;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (sbx_mono_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      snprintf(why, n, "a test guest did not halt within %d ms", PROBE_TIMEOUT_MS);
      return false;
    }
    sbx_sleep_ms(2);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return true;
  snprintf(why, n, "a test guest failed at step %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return false;
}

static const char *accel = "tcg"; /* set once, before any thread */
static long tsc_khz;

const char *vmm_vm_accel(void) { return accel; }

long vmm_vm_tsc_khz(void) { return tsc_khz; }

/* The host's CPU clock from /proc/cpuinfo, 0 if unknown.  A TCG guest without
 * a calibrated TSC can spend its whole boot failing to calibrate it against
 * the emulated PIT (seen here: no console output for minutes), so the vm
 * driver hands it this value (tsc_early_khz=). */
static long host_cpu_khz(void) {
  FILE *f = fopen("/proc/cpuinfo", "re");
  if (!f)
    return 0;
  char line[256];
  double mhz = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "cpu MHz : %lf", &mhz) == 1)
      break;
  fclose(f);
  return mhz > 0 ? (long)(mhz * 1000) : 0;
}

/* Check 2: boot the real guest under KVM until "sbx-init: started". */
static bool qemu_kvm_boots(const char *agent_path, char *why, size_t n) {
  char kernel[PATH_MAX], initrd[PATH_MAX];
  sbx_err err;
  if (vmm_vm_kernel(agent_path, kernel, sizeof kernel, &err) < 0 ||
      vmm_vm_guest_file(agent_path, VM_INITRD, initrd, sizeof initrd, &err) < 0) {
    snprintf(why, n, "%.150s", err.msg);
    return false;
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    snprintf(why, n, "pipe: %s", strerror(errno));
    return false;
  }
  pid_t pid = fork(); /* single-threaded still */
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    snprintf(why, n, "fork: %s", strerror(errno));
    return false;
  }
  if (pid == 0) {
    int nul = open("/dev/null", O_RDWR);
    dup2(nul, 0);
    dup2(p[1], 1);
    dup2(p[1], 2);
    setpgid(0, 0);
    execlp(VM_QEMU, VM_QEMU, "-M", "microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=on", "-accel",
           "kvm", "-cpu", "host", "-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config",
           "-display", "none", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append",
           "console=ttyS0 quiet panic=-1 reboot=t", "-serial", "stdio",
           (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  char buf[4096];
  size_t have = 0;
  bool ok = false;
  int64_t deadline = sbx_mono_ms() + PROBE_BOOT_TIMEOUT_MS;
  for (;;) {
    int64_t left = deadline - sbx_mono_ms();
    struct pollfd pfd = {p[0], POLLIN, 0};
    if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
      snprintf(why, n, "QEMU did not boot a guest under KVM within %d ms", PROBE_BOOT_TIMEOUT_MS);
      break;
    }
    ssize_t k = read(p[0], buf + have, sizeof buf - 1 - have);
    if (k <= 0) {
      buf[have] = '\0';
      char *nl = strrchr(buf, '\n');
      if (nl && nl[1] == '\0') {
        *nl = '\0';
        nl = strrchr(buf, '\n');
      }
      snprintf(why, n, "QEMU with KVM exited: %.120s", nl ? nl + 1 : buf);
      break;
    }
    have += (size_t)k;
    buf[have] = '\0';
    if (strstr(buf, "sbx-init: started")) {
      ok = true;
      break;
    }
    if (have > sizeof buf / 2) { /* keep the tail */
      memmove(buf, buf + have - sizeof buf / 4, sizeof buf / 4);
      have = sizeof buf / 4;
    }
  }
  close(p[0]);
  kill(-pid, SIGKILL);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return ok;
}

static bool kvm_usable(const char *agent_path, char *why, size_t n) {
  return kvm_works(why, n) && qemu_kvm_boots(agent_path, why, n);
}

int vmm_vm_setup(const char *want, const char *agent_path, sbx_err *err) {
  char why[160] = "";
  tsc_khz = host_cpu_khz();
  if (strcmp(want, "tcg") == 0) {
    accel = "tcg";
  } else if (strcmp(want, "kvm") == 0) {
    if (!kvm_usable(agent_path, why, sizeof why))
      return sbx_fail(err, SBX_E_INVALID_REQUEST, 0, "--vm-accel kvm: KVM does not work here (%s)",
                      why);
    accel = "kvm";
  } else if (strcmp(want, "auto") == 0) {
    accel = kvm_usable(agent_path, why, sizeof why) ? "kvm" : "tcg";
  } else {
    return sbx_fail(err, SBX_E_INVALID_REQUEST, 0, "--vm-accel must be auto, kvm or tcg");
  }
  if (why[0])
    log_info("vm: using %s: %s", accel, why);
  else
    log_info("vm: using %s", accel);
  return 0;
}
