/* system.c - health, version and the OpenAPI document. */
#include <jansson.h>

#include "../agent/proto.h"
#include "../server/server.h"
#include "../vmm/vm.h"
#include "routes.h"

extern const unsigned char sbx_openapi_yaml[], sbx_openapi_json[];
extern const unsigned long sbx_openapi_yaml_len, sbx_openapi_json_len;

enum MHD_Result route_health(http_req *r, json_t *body) {
  return http_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

enum MHD_Result route_version(http_req *r, json_t *body) {
  return http_reply_json(r, 200,
                         json_pack("{s:s, s:s, s:i, s:s, s:[s,s], s:s}", "version", SBX_VERSION,
                                   "api", "v1", "agent_protocol", SBX_PROTO_VERSION,
                                   "default_driver", g_server->driver->name, "drivers", "ns", "vm",
                                   "vm_accelerator", vmm_vm_accel()));
}

enum MHD_Result route_openapi_json(http_req *r, json_t *body) {
  return http_reply_bytes(r, 200, "application/json", sbx_openapi_json, sbx_openapi_json_len);
}

enum MHD_Result route_openapi_yaml(http_req *r, json_t *body) {
  return http_reply_bytes(r, 200, "application/yaml", sbx_openapi_yaml, sbx_openapi_yaml_len);
}
