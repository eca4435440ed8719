#include "routes.h"

const route routes_table[] = {
    {"GET", "/v1/health", route_health, BODY_NONE, SCOPE_NONE},
    {"GET", "/v1/version", route_version, BODY_NONE, SCOPE_NONE},
    {"GET", "/openapi.json", route_openapi_json, BODY_NONE, SCOPE_NONE},
    {"GET", "/openapi.yaml", route_openapi_yaml, BODY_NONE, SCOPE_NONE},
    {"GET", "/", route_web_index, BODY_NONE, SCOPE_NONE},
    {"GET", "/web/{}", route_web_file, BODY_NONE, SCOPE_NONE},
    {"GET", "/v1/sandboxes", route_sandbox_list, BODY_NONE, SCOPE_READ},
    {"POST", "/v1/sandboxes", route_sandbox_create, BODY_JSON, SCOPE_ADMIN},
    {"GET", "/v1/sandboxes/{}", route_sandbox_get, BODY_NONE, SCOPE_READ},
    {"DELETE", "/v1/sandboxes/{}", route_sandbox_delete, BODY_NONE, SCOPE_ADMIN},
    {"GET", "/v1/sandboxes/{}/logs", route_sandbox_logs, BODY_NONE, SCOPE_READ},
    {"POST", "/v1/sandboxes/{}/stop", route_sandbox_stop, BODY_NONE, SCOPE_ADMIN},
    {"POST", "/v1/sandboxes/{}/start", route_sandbox_start, BODY_NONE, SCOPE_ADMIN},
    {"POST", "/v1/sandboxes/{}/exec", route_exec, BODY_JSON, SCOPE_EXEC},
    {"POST", "/v1/sandboxes/{}/shell", route_shell, BODY_JSON, SCOPE_EXEC},
    {"GET", "/v1/sandboxes/{}/execs", route_exec_list, BODY_NONE, SCOPE_READ},
    {"GET", "/v1/execs/{}", route_exec_get, BODY_NONE, SCOPE_READ},
    {"GET", "/v1/execs/{}/wait", route_exec_wait, BODY_NONE, SCOPE_READ},
    {"POST", "/v1/execs/{}/signal", route_exec_signal, BODY_JSON, SCOPE_EXEC},
    {"POST", "/v1/execs/{}/kill", route_exec_kill, BODY_NONE, SCOPE_EXEC},
    {"POST", "/v1/execs/{}/stdin", route_exec_stdin, BODY_RAW, SCOPE_EXEC},
    {"POST", "/v1/execs/{}/resize", route_exec_resize, BODY_JSON, SCOPE_EXEC},
    {"GET", "/v1/execs/{}/output", route_exec_output, BODY_NONE, SCOPE_READ},
};
const size_t routes_count = sizeof routes_table / sizeof routes_table[0];
