/* drivers.c - the registry of sandbox drivers (vmm/driver.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* `make asan` overrides CFLAGS, dropping -D_GNU_SOURCE */
#endif
#include <string.h>

#include "driver.h"

static const sbx_driver *const drivers[] = {&vmm_ns_driver, &vmm_vm_driver};

const sbx_driver *vmm_driver_by_name(const char *name) {
  if (!name)
    return NULL;
  for (size_t i = 0; i < sizeof drivers / sizeof drivers[0]; i++)
    if (strcmp(drivers[i]->name, name) == 0)
      return drivers[i];
  return NULL;
}
