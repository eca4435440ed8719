#include "routes.h"

const route routes_table[] = {
    {"GET", "/v1/health", route_health, false},
    {"GET", "/v1/version", route_version, false},
    {"GET", "/openapi.json", route_openapi_json, false},
    {"GET", "/openapi.yaml", route_openapi_yaml, false},
    {"GET", "/v1/sandboxes", route_sandbox_list, false},
    {"POST", "/v1/sandboxes", route_sandbox_create, true},
    {"GET", "/v1/sandboxes/{}", route_sandbox_get, false},
    {"DELETE", "/v1/sandboxes/{}", route_sandbox_delete, false},
    {"POST", "/v1/sandboxes/{}/stop", route_sandbox_stop, false},
    {"POST", "/v1/sandboxes/{}/start", route_sandbox_start, false},
    {"POST", "/v1/sandboxes/{}/exec", route_exec, true},
    {"POST", "/v1/sandboxes/{}/shell", route_shell, true},
    {"GET", "/v1/sandboxes/{}/execs", route_exec_list, false},
    {"GET", "/v1/execs/{}", route_exec_get, false},
};
const size_t routes_count = sizeof routes_table / sizeof routes_table[0];
