#include "server.h"

#include <jansson.h>

sbx_server *g_server;

void server_sandbox_spec(json_t *sb, sbx_sandbox_spec *spec) {
  json_t *limits = json_object_get(sb, "limits");
  const char *name = json_string_value(json_object_get(sb, "name"));
  *spec = (sbx_sandbox_spec){
      .id = json_string_value(json_object_get(sb, "id")),
      .hostname = name ? name : json_string_value(json_object_get(sb, "id")),
      .image = json_string_value(json_object_get(sb, "image")),
      .data_dir = g_server->cfg.data_dir,
      .images_dir = g_server->cfg.images_dir,
      .agent_path = g_server->cfg.agent_path,
      .memory_mib = json_integer_value(json_object_get(limits, "memory_mib")),
      .cpus = json_number_value(json_object_get(limits, "cpus")),
      .pids = json_integer_value(json_object_get(limits, "pids")),
      .disk_mib = json_integer_value(json_object_get(limits, "disk_mib")),
      .network = json_string_value(json_object_get(sb, "network")),
  };
}

const sbx_driver *server_driver(json_t *sb) {
  const sbx_driver *d = vmm_driver_by_name(json_string_value(json_object_get(sb, "driver")));
  return d ? d : g_server->driver;
}
