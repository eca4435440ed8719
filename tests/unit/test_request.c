/* test_request.c - request validation, the agent EXEC spec, signal names,
 * base64 and the streaming ExecOutput renderer. */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "routes/request.h"

#define SBX_ID "sbx_0123456789abcdef"

/* JSON text -> value; NUL in strings allowed so the parsers' own check runs. */
static json_t *J(const char *text) {
  json_error_t je;
  json_t *v = json_loads(text, JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
  ck_assert_msg(v != NULL, "bad test JSON %s: %s", text, je.text);
  return v;
}

static json_t *sb_ok(const char *text, bool *replace) {
  json_t *body = J(text);
  sbx_err err = {0};
  json_t *sb = sandbox_request_parse(body, SBX_ID, 1700000000123LL, replace, &err);
  ck_assert_msg(sb != NULL, "%s rejected: %s (%s)", text, err.msg, err.field);
  json_decref(body);
  return sb;
}

static void sb_bad(const char *text, const char *field) {
  json_t *body = J(text);
  sbx_err err = {0};
  bool replace = false;
  json_t *sb = sandbox_request_parse(body, SBX_ID, 0, &replace, &err);
  ck_assert_msg(sb == NULL, "%s accepted", text);
  ck_assert_int_eq(err.kind, SBX_E_INVALID_REQUEST);
  ck_assert_msg(strcmp(err.field, field) == 0, "%s: field '%s', want '%s' (%s)", text, err.field,
                field, err.msg);
  ck_assert_msg(err.msg[0] != '\0', "%s: empty message", text);
  json_decref(body);
}

static void ex_ok_mode(const char *text, bool shell, bool ws, exec_request *r) {
  json_t *body = J(text);
  sbx_err err = {0};
  int rc = exec_request_parse(body, shell, "/bin/bash", ws, r, &err);
  ck_assert_msg(rc == 0, "%s rejected: %s (%s)", text, err.msg, err.field);
  json_decref(body);
}

static void ex_ok(const char *text, exec_request *r) { ex_ok_mode(text, false, false, r); }

static void ex_bad_mode(const char *text, bool shell, bool ws, const char *field) {
  json_t *body = J(text);
  sbx_err err = {0};
  exec_request r;
  memset(&r, 0xAB, sizeof r); /* must not be touched on failure */
  int rc = exec_request_parse(body, shell, "/bin/sh", ws, &r, &err);
  ck_assert_msg(rc < 0, "%s accepted", text);
  if (rc == 0)
    exec_request_clear(&r);
  ck_assert_int_eq(err.kind, SBX_E_INVALID_REQUEST);
  ck_assert_msg(strcmp(err.field, field) == 0, "%s: field '%s', want '%s' (%s)", text, err.field,
                field, err.msg);
  json_decref(body);
}

static void ex_bad(const char *text, const char *field) { ex_bad_mode(text, false, false, field); }

static const char *sget(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  ck_assert_msg(json_is_string(v), "%s is not a string", k);
  return json_string_value(v);
}

static json_int_t iget(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  ck_assert_msg(json_is_integer(v), "%s is not an integer", k);
  return json_integer_value(v);
}

/* ---------------- sandboxes ---------------- */

START_TEST(sandbox_defaults) {
  bool replace = true;
  json_t *sb = sb_ok("{}", &replace);
  ck_assert(!replace);
  ck_assert_str_eq(sget(sb, "id"), SBX_ID);
  ck_assert_str_eq(sget(sb, "name"), SBX_ID);
  ck_assert_str_eq(sget(sb, "state"), "creating");
  ck_assert_str_eq(sget(sb, "image"), "host");
  ck_assert(json_is_object(json_object_get(sb, "env")));
  ck_assert_int_eq(json_object_size(json_object_get(sb, "env")), 0);
  ck_assert_str_eq(sget(sb, "workdir"), "/");
  ck_assert_str_eq(sget(sb, "shell"), "/bin/sh");
  json_t *lim = json_object_get(sb, "limits");
  ck_assert_int_eq(iget(lim, "memory_mib"), 512);
  ck_assert(json_is_real(json_object_get(lim, "cpus")));
  ck_assert(json_real_value(json_object_get(lim, "cpus")) == 1.0);
  ck_assert_int_eq(iget(lim, "pids"), 256);
  ck_assert_int_eq(iget(lim, "disk_mib"), 1024);
  ck_assert_str_eq(sget(sb, "network"), "none");
  ck_assert_int_eq(json_object_size(json_object_get(sb, "labels")), 0);
  ck_assert_int_eq(iget(sb, "idle_timeout_s"), 0);
  ck_assert_int_eq(iget(sb, "max_duration_s"), 0);
  ck_assert_str_eq(sget(sb, "driver"), "ns");
  ck_assert_str_eq(sget(sb, "created_at"), "2023-11-14T22:13:20.123Z");
  ck_assert(json_is_null(json_object_get(sb, "started_at")));
  ck_assert(json_is_null(json_object_get(sb, "stopped_at")));
  ck_assert_int_eq(json_object_size(sb), 17);
  json_decref(sb);
}
END_TEST

START_TEST(sandbox_full) {
  bool replace = false;
  json_t *sb = sb_ok("{\"name\":\"web-1.a_b\",\"image\":\"debian.12\",\"env\":{\"K\":\"V\",\"E\":\"\"},"
                     "\"workdir\":\"/work\",\"shell\":\"/bin/bash\","
                     "\"limits\":{\"memory_mib\":16,\"cpus\":2,\"pids\":1,\"disk_mib\":1},"
                     "\"network\":\"none\",\"labels\":{\"team\":\"a\"},\"idle_timeout_s\":60,"
                     "\"max_duration_s\":3600,\"driver\":\"ns\",\"replace\":true}",
                     &replace);
  ck_assert(replace);
  ck_assert_str_eq(sget(sb, "name"), "web-1.a_b");
  ck_assert_str_eq(sget(sb, "image"), "debian.12");
  ck_assert_str_eq(sget(json_object_get(sb, "env"), "K"), "V");
  ck_assert_str_eq(sget(json_object_get(sb, "env"), "E"), "");
  ck_assert_str_eq(sget(sb, "workdir"), "/work");
  ck_assert_str_eq(sget(sb, "shell"), "/bin/bash");
  json_t *lim = json_object_get(sb, "limits");
  ck_assert_int_eq(iget(lim, "memory_mib"), 16);
  ck_assert(json_real_value(json_object_get(lim, "cpus")) == 2.0);
  ck_assert_int_eq(iget(lim, "pids"), 1);
  ck_assert_int_eq(iget(lim, "disk_mib"), 1);
  ck_assert_str_eq(sget(json_object_get(sb, "labels"), "team"), "a");
  ck_assert_int_eq(iget(sb, "idle_timeout_s"), 60);
  ck_assert_int_eq(iget(sb, "max_duration_s"), 3600);
  ck_assert_int_eq(json_object_size(sb), 17); /* "replace" is not part of the object */
  json_decref(sb);

  /* partial limits keep the other defaults; fractional cpus; null = absent */
  sb = sb_ok("{\"limits\":{\"cpus\":0.5},\"name\":null,\"env\":null}", NULL);
  lim = json_object_get(sb, "limits");
  ck_assert(json_real_value(json_object_get(lim, "cpus")) == 0.5);
  ck_assert_int_eq(iget(lim, "memory_mib"), 512);
  ck_assert_str_eq(sget(sb, "name"), SBX_ID);
  json_decref(sb);

  /* 64 labels is the most allowed */
  char buf[4096] = "{\"labels\":{";
  for (int i = 0; i < 64; i++)
    snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s\"k%d\":\"v\"", i ? "," : "", i);
  strcat(buf, "}}");
  sb = sb_ok(buf, NULL);
  json_decref(sb);
}
END_TEST

START_TEST(sandbox_errors) {
  static const struct {
    const char *body, *field;
  } cases[] = {
      {"[]", ""},
      {"\"x\"", ""},
      {"{\"nmae\":\"x\"}", "nmae"},
      {"{\"name\":5}", "name"},
      {"{\"name\":\"\"}", "name"},
      {"{\"name\":\"-x\"}", "name"},
      {"{\"name\":\"a b\"}", "name"},
      {"{\"name\":\"a/b\"}", "name"},
      {"{\"name\":\"a\\u0000b\"}", "name"},
      {"{\"name\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", "name"},
      {"{\"name\":\"sbx_aaaaaaaaaaaaaaaa\"}", "name"},
      {"{\"image\":\"../etc\"}", "image"},
      {"{\"image\":\"a/b\"}", "image"},
      {"{\"image\":\"a..b\"}", "image"},
      {"{\"image\":\"\"}", "image"},
      {"{\"image\":true}", "image"},
      {"{\"env\":[]}", "env"},
      {"{\"env\":{\"K\":1}}", "env.K"},
      {"{\"env\":{\"\":\"v\"}}", "env"},
      {"{\"env\":{\"A=B\":\"v\"}}", "env.A=B"},
      {"{\"env\":{\"K\":\"a\\u0000\"}}", "env.K"},
      {"{\"workdir\":\"rel\"}", "workdir"},
      {"{\"workdir\":1}", "workdir"},
      {"{\"workdir\":\"/a\\u0000\"}", "workdir"},
      {"{\"shell\":\"sh\"}", "shell"},
      {"{\"limits\":1}", "limits"},
      {"{\"limits\":{\"memory\":1}}", "limits.memory"},
      {"{\"limits\":{\"memory_mib\":15}}", "limits.memory_mib"},
      {"{\"limits\":{\"memory_mib\":1048577}}", "limits.memory_mib"},
      {"{\"limits\":{\"memory_mib\":512.0}}", "limits.memory_mib"},
      {"{\"limits\":{\"memory_mib\":\"512\"}}", "limits.memory_mib"},
      {"{\"limits\":{\"cpus\":0}}", "limits.cpus"},
      {"{\"limits\":{\"cpus\":-1}}", "limits.cpus"},
      {"{\"limits\":{\"cpus\":1024.5}}", "limits.cpus"},
      {"{\"limits\":{\"cpus\":\"1\"}}", "limits.cpus"},
      {"{\"limits\":{\"pids\":0}}", "limits.pids"},
      {"{\"limits\":{\"pids\":4194305}}", "limits.pids"},
      {"{\"limits\":{\"disk_mib\":0}}", "limits.disk_mib"},
      {"{\"network\":\"host\"}", "network"},
      {"{\"network\":1}", "network"},
      {"{\"labels\":[]}", "labels"},
      {"{\"labels\":{\"a b\":\"x\"}}", "labels.a b"},
      {"{\"labels\":{\"k\":1}}", "labels.k"},
      {"{\"idle_timeout_s\":-1}", "idle_timeout_s"},
      {"{\"idle_timeout_s\":1.5}", "idle_timeout_s"},
      {"{\"max_duration_s\":-5}", "max_duration_s"},
      {"{\"max_duration_s\":\"5\"}", "max_duration_s"},
      {"{\"driver\":\"firecracker\"}", "driver"},
      {"{\"replace\":\"yes\"}", "replace"},
      {"{\"replace\":1}", "replace"},
  };
  for (size_t i = 0; i < SBX_ARRAY_LEN(cases); i++)
    sb_bad(cases[i].body, cases[i].field);

  /* the network message says what is supported */
  json_t *body = J("{\"network\":\"bridge\"}");
  sbx_err err = {0};
  ck_assert_ptr_null(sandbox_request_parse(body, SBX_ID, 0, NULL, &err));
  ck_assert_ptr_nonnull(strstr(err.msg, "only \"none\""));
  json_decref(body);

  /* 65 labels is too many */
  char buf[4096] = "{\"labels\":{";
  for (int i = 0; i < 65; i++)
    snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s\"k%d\":\"v\"", i ? "," : "", i);
  strcat(buf, "}}");
  sb_bad(buf, "labels");
}
END_TEST

/* ---------------- exec requests ---------------- */

START_TEST(exec_defaults) {
  exec_request r;
  ex_ok("{\"cmd\":\"true\"}", &r);
  ck_assert_str_eq(r.cmd, "true");
  ck_assert(json_is_array(r.args) && json_array_size(r.args) == 0);
  ck_assert_ptr_null(r.cwd);
  ck_assert(json_is_object(r.env) && json_object_size(r.env) == 0);
  ck_assert_ptr_null(r.user);
  ck_assert_int_eq(r.timeout_ms, 0);
  ck_assert(!r.has_stdin);
  ck_assert_ptr_null(r.stdin_data);
  ck_assert_int_eq(r.encoding, SBX_ENC_UTF8);
  ck_assert_uint_eq(r.max_output_bytes, SBX_MAX_OUTPUT_DEFAULT);
  ck_assert(!r.tty && !r.background && !r.detach);
  ck_assert_int_eq(r.rows, 24);
  ck_assert_int_eq(r.cols, 80);
  exec_request_clear(&r);
  exec_request_clear(&r); /* idempotent */
}
END_TEST

START_TEST(exec_full) {
  exec_request r;
  ex_ok("{\"cmd\":\"python3\",\"args\":[\"-c\",\"print(1+1)\",\"\"],\"cwd\":\"/tmp\","
        "\"env\":{\"K\":\"V\"},\"user\":\"nobody\",\"timeout_ms\":30000,\"stdin\":\"text\","
        "\"encoding\":\"base64\",\"max_output_bytes\":1073741824,\"tty\":true,\"rows\":1,"
        "\"cols\":1000,\"background\":true}",
        &r);
  ck_assert_str_eq(r.cmd, "python3");
  ck_assert_int_eq(json_array_size(r.args), 3);
  ck_assert_str_eq(json_string_value(json_array_get(r.args, 1)), "print(1+1)");
  ck_assert_str_eq(r.cwd, "/tmp");
  ck_assert_str_eq(sget(r.env, "K"), "V");
  ck_assert_str_eq(r.user, "nobody");
  ck_assert_int_eq(r.timeout_ms, 30000);
  ck_assert(r.has_stdin);
  ck_assert_uint_eq(r.stdin_len, 4);
  ck_assert(memcmp(r.stdin_data, "text", 4) == 0);
  ck_assert_int_eq(r.encoding, SBX_ENC_BASE64);
  ck_assert_uint_eq(r.max_output_bytes, SBX_MAX_OUTPUT_CAP);
  ck_assert(r.tty && r.background);
  ck_assert_int_eq(r.rows, 1);
  ck_assert_int_eq(r.cols, 1000);
  exec_request_clear(&r);

  /* user as an integer becomes its decimal string; uid string kept */
  ex_ok("{\"cmd\":\"id\",\"user\":1000}", &r);
  ck_assert_str_eq(r.user, "1000");
  exec_request_clear(&r);
  ex_ok("{\"cmd\":\"id\",\"user\":0}", &r);
  ck_assert_str_eq(r.user, "0");
  exec_request_clear(&r);
  ex_ok("{\"cmd\":\"id\",\"user\":\"65534\",\"timeout_ms\":0,\"max_output_bytes\":0}", &r);
  ck_assert_str_eq(r.user, "65534");
  ck_assert_uint_eq(r.max_output_bytes, 0);
  exec_request_clear(&r);

  /* SBX_MAX_ARGS args are fine */
  size_t cap = 16 + SBX_MAX_ARGS * 4;
  char *buf = malloc(cap);
  strcpy(buf, "{\"cmd\":\"echo\",\"args\":[");
  for (int i = 0; i < SBX_MAX_ARGS; i++)
    strcat(buf, i ? ",\"\"" : "\"\"");
  strcat(buf, "]}");
  ex_ok(buf, &r);
  ck_assert_int_eq(json_array_size(r.args), SBX_MAX_ARGS);
  exec_request_clear(&r);
  /* one more is too many */
  buf[strlen(buf) - 2] = '\0';
  strcat(buf, ",\"\"]}");
  ex_bad(buf, "args");
  free(buf);
}
END_TEST

START_TEST(exec_errors) {
  static const struct {
    const char *body, *field;
  } cases[] = {
      {"[]", ""},
      {"null", ""},
      {"{}", "cmd"},
      {"{\"cmd\":\"\"}", "cmd"},
      {"{\"cmd\":5}", "cmd"},
      {"{\"cmd\":[\"ls\"]}", "cmd"},
      {"{\"cmd\":\"ls\",\"timeout\":5}", "timeout"},
      {"{\"cmd\":\"ls\",\"command\":\"ls\"}", "command"},
      {"{\"cmd\":\"ls\",\"type\":\"start\"}", "type"},
      {"{\"cmd\":\"ls\",\"detach\":true}", "detach"},
      {"{\"cmd\":\"ls\",\"shell\":\"ls\"}", "shell"},
      {"{\"cmd\":\"ls\",\"args\":\"-l\"}", "args"},
      {"{\"cmd\":\"ls\",\"args\":[\"-l\",1]}", "args[1]"},
      {"{\"cmd\":\"ls\",\"args\":[\"-l\",\"/\",null]}", "args[2]"},
      {"{\"cmd\":\"ls\",\"cwd\":\"tmp\"}", "cwd"},
      {"{\"cmd\":\"ls\",\"cwd\":\"\"}", "cwd"},
      {"{\"cmd\":\"ls\",\"cwd\":7}", "cwd"},
      {"{\"cmd\":\"ls\",\"env\":\"K=V\"}", "env"},
      {"{\"cmd\":\"ls\",\"env\":{\"K\":null}}", "env.K"},
      {"{\"cmd\":\"ls\",\"env\":{\"K=\":\"v\"}}", "env.K="},
      {"{\"cmd\":\"ls\",\"user\":\"\"}", "user"},
      {"{\"cmd\":\"ls\",\"user\":-1}", "user"},
      {"{\"cmd\":\"ls\",\"user\":4294967295}", "user"},
      {"{\"cmd\":\"ls\",\"user\":\"99999999999\"}", "user"},
      {"{\"cmd\":\"ls\",\"user\":\"a:b\"}", "user"},
      {"{\"cmd\":\"ls\",\"user\":1.5}", "user"},
      {"{\"cmd\":\"ls\",\"user\":true}", "user"},
      {"{\"cmd\":\"ls\",\"timeout_ms\":-1}", "timeout_ms"},
      {"{\"cmd\":\"ls\",\"timeout_ms\":604800001}", "timeout_ms"},
      {"{\"cmd\":\"ls\",\"timeout_ms\":1.5}", "timeout_ms"},
      {"{\"cmd\":\"ls\",\"timeout_ms\":\"100\"}", "timeout_ms"},
      {"{\"cmd\":\"ls\",\"stdin\":5}", "stdin"},
      {"{\"cmd\":\"ls\",\"stdin_b64\":5}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin_b64\":\"!!!!\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin_b64\":\"QUJD\\n\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin_b64\":\"Q\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin_b64\":\"QQ=\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin_b64\":\"Q===\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin_b64\":\"QQ==QQ==\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin\":\"a\",\"stdin_b64\":\"YQ==\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"stdin\":\"\",\"stdin_b64\":\"\"}", "stdin_b64"},
      {"{\"cmd\":\"ls\",\"encoding\":\"utf-16\"}", "encoding"},
      {"{\"cmd\":\"ls\",\"encoding\":1}", "encoding"},
      {"{\"cmd\":\"ls\",\"max_output_bytes\":-1}", "max_output_bytes"},
      {"{\"cmd\":\"ls\",\"max_output_bytes\":1073741825}", "max_output_bytes"},
      {"{\"cmd\":\"ls\",\"tty\":1}", "tty"},
      {"{\"cmd\":\"ls\",\"rows\":0}", "rows"},
      {"{\"cmd\":\"ls\",\"rows\":1001}", "rows"},
      {"{\"cmd\":\"ls\",\"cols\":0}", "cols"},
      {"{\"cmd\":\"ls\",\"cols\":\"80\"}", "cols"},
      {"{\"cmd\":\"ls\",\"background\":\"true\"}", "background"},
      /* NUL inside strings that end up as C strings */
      {"{\"cmd\":\"l\\u0000s\"}", "cmd"},
      {"{\"cmd\":\"ls\",\"args\":[\"a\",\"b\\u0000c\"]}", "args[1]"},
      {"{\"cmd\":\"ls\",\"env\":{\"K\":\"v\\u0000w\"}}", "env.K"},
      {"{\"cmd\":\"ls\",\"cwd\":\"/tmp\\u0000x\"}", "cwd"},
      {"{\"cmd\":\"ls\",\"user\":\"root\\u0000\"}", "user"},
  };
  for (size_t i = 0; i < SBX_ARRAY_LEN(cases); i++)
    ex_bad(cases[i].body, cases[i].field);

  /* jansson's parser refuses NUL in keys, but a json_t built in code may
   * carry one: the env check must not trust the key to end at its NUL */
  json_t *body = J("{\"cmd\":\"ls\",\"env\":{}}");
  json_object_setn_new(json_object_get(body, "env"), "K\0X", 3, json_string("v"));
  exec_request r;
  sbx_err err = {0};
  ck_assert_int_eq(exec_request_parse(body, false, NULL, false, &r, &err), -1);
  ck_assert_str_eq(err.field, "env.K");
  json_decref(body);
}
END_TEST

START_TEST(exec_stdin) {
  exec_request r;
  /* stdin text keeps every byte, NUL included (it is data, not a C string) */
  ex_ok("{\"cmd\":\"cat\",\"stdin\":\"a\\u0000b\\u00e9\"}", &r);
  ck_assert(r.has_stdin);
  ck_assert_uint_eq(r.stdin_len, 5);
  ck_assert(memcmp(r.stdin_data, "a\0b\xc3\xa9", 5) == 0);
  exec_request_clear(&r);

  ex_ok("{\"cmd\":\"cat\",\"stdin_b64\":\"AP8Q\"}", &r);
  ck_assert(r.has_stdin);
  ck_assert_uint_eq(r.stdin_len, 3);
  ck_assert(memcmp(r.stdin_data, "\x00\xff\x10", 3) == 0);
  exec_request_clear(&r);

  /* unpadded base64 is accepted too */
  ex_ok("{\"cmd\":\"cat\",\"stdin_b64\":\"YWI\"}", &r);
  ck_assert_uint_eq(r.stdin_len, 2);
  ck_assert(memcmp(r.stdin_data, "ab", 2) == 0);
  exec_request_clear(&r);

  /* empty stdin still counts as given */
  ex_ok("{\"cmd\":\"cat\",\"stdin\":\"\"}", &r);
  ck_assert(r.has_stdin);
  ck_assert_uint_eq(r.stdin_len, 0);
  exec_request_clear(&r);
  ex_ok("{\"cmd\":\"cat\",\"stdin_b64\":\"\"}", &r);
  ck_assert(r.has_stdin);
  ck_assert_uint_eq(r.stdin_len, 0);
  exec_request_clear(&r);

  /* null for one of them is "absent" */
  ex_ok("{\"cmd\":\"cat\",\"stdin\":null,\"stdin_b64\":\"eA==\"}", &r);
  ck_assert_uint_eq(r.stdin_len, 1);
  exec_request_clear(&r);

  /* over SBX_MAX_STDIN */
  size_t n = SBX_MAX_STDIN + 1;
  char *big = malloc(n + 64);
  strcpy(big, "{\"cmd\":\"cat\",\"stdin\":\"");
  size_t l = strlen(big);
  memset(big + l, 'x', n);
  strcpy(big + l + n, "\"}");
  ex_bad(big, "stdin");
  free(big);
}
END_TEST

START_TEST(exec_shell_mode) {
  exec_request r;
  ex_ok_mode("{\"command\":\"echo hi >&2; exit 3\",\"env\":{\"A\":\"b\"}}", true, false, &r);
  ck_assert_str_eq(r.cmd, "/bin/bash");
  ck_assert_int_eq(json_array_size(r.args), 2);
  ck_assert_str_eq(json_string_value(json_array_get(r.args, 0)), "-c");
  ck_assert_str_eq(json_string_value(json_array_get(r.args, 1)), "echo hi >&2; exit 3");
  ck_assert_str_eq(sget(r.env, "A"), "b");
  exec_request_clear(&r);

  /* without a sandbox shell: /bin/sh */
  json_t *body = J("{\"command\":\"true\"}");
  sbx_err err = {0};
  ck_assert_int_eq(exec_request_parse(body, true, NULL, false, &r, &err), 0);
  ck_assert_str_eq(r.cmd, "/bin/sh");
  exec_request_clear(&r);
  json_decref(body);

  ex_bad_mode("{}", true, false, "command");
  ex_bad_mode("{\"command\":\"\"}", true, false, "command");
  ex_bad_mode("{\"command\":[\"ls\"]}", true, false, "command");
  ex_bad_mode("{\"command\":\"ls\\u0000\"}", true, false, "command");
  ex_bad_mode("{\"command\":\"ls\",\"cmd\":\"ls\"}", true, false, "cmd");
  ex_bad_mode("{\"command\":\"ls\",\"args\":[]}", true, false, "args");
  ex_bad_mode("{\"cmd\":\"ls\"}", true, false, "cmd");
  ex_bad_mode("{\"command\":\"ls\",\"shell\":\"ls\"}", true, false, "shell");
  ex_bad_mode("{\"command\":\"ls\",\"rows\":0}", true, false, "rows");
}
END_TEST

START_TEST(exec_ws_fields) {
  exec_request r;
  ex_ok_mode("{\"type\":\"start\",\"cmd\":\"top\",\"tty\":true,\"detach\":true}", false, true, &r);
  ck_assert_str_eq(r.cmd, "top");
  ck_assert(r.detach && r.tty);
  exec_request_clear(&r);

  ex_ok_mode("{\"type\":\"start\",\"shell\":\"ls | wc -l\"}", false, true, &r);
  ck_assert_str_eq(r.cmd, "/bin/bash");
  ck_assert_str_eq(json_string_value(json_array_get(r.args, 0)), "-c");
  ck_assert_str_eq(json_string_value(json_array_get(r.args, 1)), "ls | wc -l");
  ck_assert(!r.detach);
  exec_request_clear(&r);

  /* "type" may be left out */
  ex_ok_mode("{\"cmd\":\"ls\"}", false, true, &r);
  exec_request_clear(&r);

  ex_bad_mode("{\"type\":\"stdin\",\"cmd\":\"ls\"}", false, true, "type");
  ex_bad_mode("{\"type\":5,\"cmd\":\"ls\"}", false, true, "type");
  ex_bad_mode("{\"type\":\"start\",\"cmd\":\"ls\",\"detach\":\"yes\"}", false, true, "detach");
  ex_bad_mode("{\"type\":\"start\",\"shell\":5}", false, true, "shell");
  ex_bad_mode("{\"type\":\"start\",\"shell\":\"\"}", false, true, "shell");
  ex_bad_mode("{\"type\":\"start\",\"shell\":\"ls\",\"cmd\":\"ls\"}", false, true, "cmd");
  ex_bad_mode("{\"type\":\"start\",\"shell\":\"ls\",\"args\":[\"x\"]}", false, true, "args");
  ex_bad_mode("{\"type\":\"start\",\"command\":\"ls\"}", false, true, "command");
  ex_bad_mode("{\"type\":\"start\"}", false, true, "cmd");
}
END_TEST

START_TEST(agent_spec) {
  exec_request r;
  ex_ok("{\"cmd\":\"env\",\"args\":[\"-0\"],\"env\":{\"B\":\"req\",\"PATH\":\"/req\"},"
        "\"stdin_b64\":\"AP8=\",\"timeout_ms\":1500,\"tty\":true,\"rows\":40,\"cols\":120}",
        &r);
  json_t *sb = sb_ok("{\"env\":{\"A\":\"sb\",\"B\":\"sb\",\"HOME\":\"/home/x\"},\"workdir\":\"/srv\"}",
                     NULL);
  json_t *spec = exec_request_agent_spec(&r, sb, "ex_0123456789abcdef");
  ck_assert_ptr_nonnull(spec);
  ck_assert_str_eq(sget(spec, "exec_id"), "ex_0123456789abcdef");
  ck_assert_str_eq(sget(spec, "cmd"), "env");
  ck_assert_str_eq(json_string_value(json_array_get(json_object_get(spec, "args"), 0)), "-0");
  ck_assert_str_eq(sget(spec, "cwd"), "/srv");
  json_t *env = json_object_get(spec, "env");
  ck_assert_int_eq(json_object_size(env), 4);
  ck_assert_str_eq(sget(env, "PATH"), "/req");    /* request over base */
  ck_assert_str_eq(sget(env, "HOME"), "/home/x"); /* sandbox over base */
  ck_assert_str_eq(sget(env, "A"), "sb");
  ck_assert_str_eq(sget(env, "B"), "req"); /* request over sandbox */
  ck_assert_ptr_null(json_object_get(spec, "user"));
  ck_assert_int_eq(iget(spec, "timeout_ms"), 1500);
  ck_assert_str_eq(sget(spec, "stdin_b64"), "AP8=");
  ck_assert(json_is_false(json_object_get(spec, "stdin_pipe")));
  ck_assert(json_is_true(json_object_get(spec, "tty")));
  ck_assert_int_eq(iget(spec, "rows"), 40);
  ck_assert_int_eq(iget(spec, "cols"), 120);
  ck_assert_int_eq(iget(spec, "credit_stdout"), 262144);
  ck_assert_int_eq(iget(spec, "credit_stderr"), 262144);
  ck_assert_int_eq(iget(spec, "grace_ms"), 200);
  ck_assert(json_is_true(json_object_get(spec, "kill_on_disconnect")));
  json_decref(spec);
  exec_request_clear(&r);

  /* defaults: base env only, sandbox workdir, no stdin; background keeps running */
  ex_ok("{\"cmd\":\"sleep\",\"user\":7,\"cwd\":\"/tmp\",\"background\":true}", &r);
  json_t *plain = sb_ok("{}", NULL);
  spec = exec_request_agent_spec(&r, plain, "ex_1");
  env = json_object_get(spec, "env");
  ck_assert_int_eq(json_object_size(env), 2);
  ck_assert_str_eq(sget(env, "PATH"), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  ck_assert_str_eq(sget(env, "HOME"), "/root");
  ck_assert_str_eq(sget(spec, "cwd"), "/tmp");
  ck_assert_str_eq(sget(spec, "user"), "7");
  ck_assert_ptr_null(json_object_get(spec, "stdin_b64"));
  ck_assert(json_is_false(json_object_get(spec, "tty")));
  ck_assert(json_is_false(json_object_get(spec, "kill_on_disconnect")));
  ck_assert_int_eq(iget(spec, "timeout_ms"), 0);
  json_decref(spec);
  exec_request_clear(&r);

  /* detach also keeps it running; empty stdin is sent as "" */
  ex_ok_mode("{\"cmd\":\"x\",\"detach\":true,\"stdin\":\"\"}", false, true, &r);
  spec = exec_request_agent_spec(&r, plain, "ex_2");
  ck_assert(json_is_false(json_object_get(spec, "kill_on_disconnect")));
  ck_assert_str_eq(sget(spec, "stdin_b64"), "");
  ck_assert_str_eq(sget(spec, "cwd"), "/");
  json_decref(spec);
  exec_request_clear(&r);

  json_decref(plain);
  json_decref(sb);
}
END_TEST

/* ---------------- signals ---------------- */

static int sigp(const char *json) {
  json_t *v = J(json);
  int n = sbx_signal_parse(v);
  json_decref(v);
  return n;
}

START_TEST(signals) {
  ck_assert_int_eq(sigp("\"SIGTERM\""), SIGTERM);
  ck_assert_int_eq(sigp("\"TERM\""), SIGTERM);
  ck_assert_int_eq(sigp("\"sigterm\""), SIGTERM);
  ck_assert_int_eq(sigp("\"SigKill\""), SIGKILL);
  ck_assert_int_eq(sigp("\"int\""), SIGINT);
  ck_assert_int_eq(sigp("15"), 15);
  ck_assert_int_eq(sigp("\"9\""), 9);
  ck_assert_int_eq(sigp("1"), 1);
  ck_assert_int_eq(sigp("64"), 64);
  ck_assert_int_eq(sigp("\"64\""), 64);
  static const struct {
    const char *name;
    int num;
  } all[] = {{"HUP", SIGHUP},   {"INT", SIGINT},         {"QUIT", SIGQUIT},   {"ILL", SIGILL},
             {"TRAP", SIGTRAP}, {"ABRT", SIGABRT},       {"BUS", SIGBUS},     {"FPE", SIGFPE},
             {"KILL", SIGKILL}, {"USR1", SIGUSR1},       {"SEGV", SIGSEGV},   {"USR2", SIGUSR2},
             {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},       {"TERM", SIGTERM},   {"STKFLT", SIGSTKFLT},
             {"CHLD", SIGCHLD}, {"CONT", SIGCONT},       {"STOP", SIGSTOP},   {"TSTP", SIGTSTP},
             {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU},       {"URG", SIGURG},     {"XCPU", SIGXCPU},
             {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM},   {"PROF", SIGPROF},   {"WINCH", SIGWINCH},
             {"IO", SIGIO},     {"POLL", SIGPOLL},       {"PWR", SIGPWR},     {"SYS", SIGSYS}};
  for (size_t i = 0; i < SBX_ARRAY_LEN(all); i++) {
    char buf[32];
    snprintf(buf, sizeof buf, "\"SIG%s\"", all[i].name);
    ck_assert_int_eq(sigp(buf), all[i].num);
    snprintf(buf, sizeof buf, "\"%s\"", all[i].name);
    ck_assert_int_eq(sigp(buf), all[i].num);
  }
  ck_assert_int_eq(sigp("\"SIGRTMIN\""), SIGRTMIN);
  ck_assert_int_eq(sigp("\"SIGRTMIN+3\""), SIGRTMIN + 3);
  ck_assert_int_eq(sigp("\"rtmin+1\""), SIGRTMIN + 1);
  ck_assert_int_eq(sigp("\"SIGRTMAX\""), SIGRTMAX);
  ck_assert_int_eq(sigp("\"SIGRTMAX-2\""), SIGRTMAX - 2);
  char buf[32];
  snprintf(buf, sizeof buf, "\"SIGRTMIN+%d\"", SIGRTMAX - SIGRTMIN);
  ck_assert_int_eq(sigp(buf), SIGRTMAX);
  snprintf(buf, sizeof buf, "\"SIGRTMIN+%d\"", SIGRTMAX - SIGRTMIN + 1);
  ck_assert_int_eq(sigp(buf), -1);

  const char *bad[] = {"0",         "65",          "-9",         "\"0\"",        "\"65\"",
                       "\"-9\"",    "\"+9\"",      "\" 9\"",     "\"9 \"",       "\"\"",
                       "\"SIG\"",   "\"SIGFOO\"",  "\"TERMX\"",  "\"SIGRTMIN-1\"", "\"RTMAX+1\"",
                       "\"RTMIN+\"", "\"RTMIN+x\"", "9.0",       "true",         "null",
                       "[9]",       "\"SIGTERM\\u0000\"", "\"SIGSIGTERM\""};
  for (size_t i = 0; i < SBX_ARRAY_LEN(bad); i++)
    ck_assert_msg(sigp(bad[i]) == -1, "%s accepted", bad[i]);
  ck_assert_int_eq(sbx_signal_parse(NULL), -1);
}
END_TEST

/* ---------------- base64 ---------------- */

START_TEST(base64_vectors) {
  static const char *vec[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                 {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                                 {"foobar", "Zm9vYmFy"}};
  for (size_t i = 0; i < SBX_ARRAY_LEN(vec); i++) {
    size_t n;
    char *e = sbx_b64_encode((const uint8_t *)vec[i][0], strlen(vec[i][0]), &n);
    ck_assert_str_eq(e, vec[i][1]);
    ck_assert_uint_eq(n, strlen(vec[i][1]));
    uint8_t *d = sbx_b64_decode(e, n, &n);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq(n, strlen(vec[i][0]));
    ck_assert(memcmp(d, vec[i][0], n) == 0);
    free(d);
    free(e);
  }
  uint8_t all[256];
  for (int i = 0; i < 256; i++)
    all[i] = (uint8_t)i;
  size_t n, m;
  char *e = sbx_b64_encode(all, 256, &n);
  uint8_t *d = sbx_b64_decode(e, n, &m);
  ck_assert_uint_eq(m, 256);
  ck_assert(memcmp(d, all, 256) == 0);
  ck_assert_ptr_null(sbx_b64_decode("Zm9v YmFy", 9, &m));
  ck_assert_ptr_null(sbx_b64_decode("Zm9v-mFy", 8, &m));
  ck_assert_ptr_null(sbx_b64_decode("Z", 1, &m));
  ck_assert_ptr_null(sbx_b64_decode("Zg=a", 4, &m));
  free(d);
  free(e);
}
END_TEST

/* ---------------- rendering ---------------- */

/* Render everything with pieces of at most max bytes; NUL-terminated. */
static char *render_all(const exec_output *o, size_t max, size_t *len) {
  exec_render *r = exec_render_new(o);
  ck_assert_ptr_nonnull(r);
  size_t cap = 1024, n = 0;
  char *out = malloc(cap);
  char *piece = malloc(max);
  size_t got;
  while ((got = exec_render_next(r, piece, max)) > 0) {
    ck_assert_uint_le(got, max);
    if (n + got + 1 > cap) {
      while (n + got + 1 > cap)
        cap *= 2;
      out = realloc(out, cap);
    }
    memcpy(out + n, piece, got);
    n += got;
  }
  ck_assert_uint_eq(exec_render_next(r, piece, max), 0); /* stays done */
  out[n] = '\0';
  free(piece);
  exec_render_free(r);
  if (len)
    *len = n;
  return out;
}

static json_t *render_json(const exec_output *o, size_t max) {
  size_t n;
  char *text = render_all(o, max, &n);
  json_error_t je;
  json_t *v = json_loadb(text, n, JSON_ALLOW_NUL, &je); /* jansson rejects invalid UTF-8 */
  ck_assert_msg(v != NULL, "render is not valid JSON: %s", je.text);
  free(text);
  return v;
}

static exec_output mkout(const sbx_chunks *out, const sbx_chunks *err, sbx_encoding enc) {
  exec_output o = {.exit_code = 0, .signal = 0, .duration_ms = 42, .encoding = enc, .out = out,
                   .err = err};
  snprintf(o.exec_id, sizeof o.exec_id, "ex_0123456789abcdef");
  return o;
}

/* Render stdout = in (utf8) and compare the decoded string with want. */
static void check_utf8(const sbx_chunks *in, const char *want, size_t want_len) {
  sbx_chunks empty = {0};
  exec_output o = mkout(in, &empty, SBX_ENC_UTF8);
  size_t sizes[] = {1, 2, 3, 7, 65536};
  for (size_t i = 0; i < SBX_ARRAY_LEN(sizes); i++) {
    json_t *v = render_json(&o, sizes[i]);
    json_t *s = json_object_get(v, "stdout");
    ck_assert(json_is_string(s));
    ck_assert_uint_eq(json_string_length(s), want_len);
    ck_assert_msg(memcmp(json_string_value(s), want, want_len) == 0, "stdout differs (max %zu)",
                  sizes[i]);
    json_decref(v);
  }
}

static void check_utf8_bytes(const char *in, size_t n, const char *want) {
  sbx_chunks c = {0};
  /* one byte per append: every chunk list shape is the same here, but it
   * exercises the append path like a trickling program would */
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(sbx_chunks_append(&c, in + i, 1), 0);
  check_utf8(&c, want, strlen(want));
  sbx_chunks_free(&c);
}

#define FFFD "\xEF\xBF\xBD"

START_TEST(render_shape_success) {
  sbx_chunks out = {0}, err = {0};
  sbx_chunks_append(&out, "2\n", 2);
  exec_output o = mkout(&out, &err, SBX_ENC_UTF8);
  size_t n;
  char *text = render_all(&o, 65536, &n);
  ck_assert_str_eq(text, "{\"exec_id\":\"ex_0123456789abcdef\",\"exit_code\":0,\"success\":true,"
                         "\"signal\":null,\"stdout\":\"2\\n\",\"stderr\":\"\",\"encoding\":\"utf8\","
                         "\"stdout_truncated\":false,\"stderr_truncated\":false,\"duration_ms\":42}");
  free(text);

  /* non-zero exit: success false */
  o.exit_code = 3;
  o.out_truncated = true;
  json_t *v = render_json(&o, 65536);
  ck_assert_int_eq(iget(v, "exit_code"), 3);
  ck_assert(json_is_false(json_object_get(v, "success")));
  ck_assert(json_is_null(json_object_get(v, "signal")));
  ck_assert(json_is_true(json_object_get(v, "stdout_truncated")));
  ck_assert(json_is_false(json_object_get(v, "stderr_truncated")));
  json_decref(v);

  /* killed by a signal */
  o.exit_code = -1;
  o.signal = 15;
  o.err_truncated = true;
  o.encoding = SBX_ENC_BASE64;
  v = render_json(&o, 65536);
  ck_assert_int_eq(iget(v, "exit_code"), -1);
  ck_assert_int_eq(iget(v, "signal"), 15);
  ck_assert(json_is_false(json_object_get(v, "success")));
  ck_assert_str_eq(sget(v, "encoding"), "base64");
  ck_assert_str_eq(sget(v, "stdout"), "Mgo=");
  ck_assert(json_is_true(json_object_get(v, "stderr_truncated")));
  ck_assert_int_eq(json_object_size(v), 10);
  json_decref(v);

  /* NULL streams render as empty */
  exec_output e = mkout(NULL, NULL, SBX_ENC_UTF8);
  v = render_json(&e, 5);
  ck_assert_str_eq(sget(v, "stdout"), "");
  ck_assert_str_eq(sget(v, "stderr"), "");
  json_decref(v);
  sbx_chunks_free(&out);
}
END_TEST

START_TEST(render_shape_timeout) {
  sbx_chunks out = {0}, err = {0};
  sbx_chunks_append(&out, "partial", 7);
  sbx_chunks_append(&err, "warn\n", 5);
  exec_output o = mkout(&out, &err, SBX_ENC_UTF8);
  o.timed_out = true;
  o.timeout_ms = 1500;
  o.exit_code = -1;
  o.signal = 9;
  o.duration_ms = 1503;
  json_t *v = render_json(&o, 1);
  ck_assert_int_eq(json_object_size(v), 1);
  json_t *e = json_object_get(v, "error");
  ck_assert(json_is_object(e));
  ck_assert_str_eq(sget(e, "kind"), "exec_timeout");
  ck_assert_str_eq(sget(e, "message"), "exec timed out after 1500 ms");
  ck_assert_str_eq(sget(e, "exec_id"), "ex_0123456789abcdef");
  ck_assert_int_eq(iget(e, "exit_code"), -1);
  ck_assert(json_is_false(json_object_get(e, "success")));
  ck_assert_int_eq(iget(e, "signal"), 9);
  ck_assert_str_eq(sget(e, "stdout"), "partial");
  ck_assert_str_eq(sget(e, "stderr"), "warn\n");
  ck_assert_str_eq(sget(e, "encoding"), "utf8");
  ck_assert(json_is_false(json_object_get(e, "stdout_truncated")));
  ck_assert(json_is_false(json_object_get(e, "stderr_truncated")));
  ck_assert_int_eq(iget(e, "duration_ms"), 1503);
  ck_assert_int_eq(json_object_size(e), 12);
  json_decref(v);

  /* timed out even with a zero exit code is not a success */
  o.exit_code = 0;
  v = render_json(&o, 100);
  ck_assert(json_is_false(json_object_get(json_object_get(v, "error"), "success")));
  json_decref(v);
  sbx_chunks_free(&out);
  sbx_chunks_free(&err);
}
END_TEST

START_TEST(render_ascii_and_controls) {
  check_utf8_bytes("hello, world", 12, "hello, world");
  char in[40];
  size_t n = 0;
  for (int c = 0; c < 0x20; c++)
    in[n++] = (char)c;
  in[n++] = '"';
  in[n++] = '\\';
  in[n++] = '/';
  in[n++] = 0x7f;
  check_utf8(&(sbx_chunks){0}, "", 0);
  sbx_chunks c = {0};
  sbx_chunks_append(&c, in, n);
  check_utf8(&c, in, n);

  /* the escapes themselves use the short forms */
  exec_output o = mkout(&c, NULL, SBX_ENC_UTF8);
  char *text = render_all(&o, 3, NULL);
  ck_assert_ptr_nonnull(strstr(text, "\\u0000\\u0001"));
  ck_assert_ptr_nonnull(strstr(text, "\\b\\t\\n\\u000b\\f\\r"));
  ck_assert_ptr_nonnull(strstr(text, "\\u001f\\\"\\\\/\x7f"));
  free(text);
  sbx_chunks_free(&c);
}
END_TEST

START_TEST(render_valid_multibyte) {
  const char *s = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF \xEF\xBF\xBD \xE0\xA0\x80"
                  "\xED\x9F\xBF\xEE\x80\x80\xF0\x90\x80\x80\xC2\x80";
  check_utf8_bytes(s, strlen(s), s);
}
END_TEST

START_TEST(render_invalid_bytes) {
  check_utf8_bytes("\xC0\x80", 2, FFFD FFFD);
  check_utf8_bytes("\xC1\xBF", 2, FFFD FFFD);
  check_utf8_bytes("\xE0\x80\x80", 3, FFFD FFFD FFFD);             /* overlong */
  check_utf8_bytes("\xED\xA0\x80", 3, FFFD FFFD FFFD);             /* surrogate */
  check_utf8_bytes("\xED\xBF\xBF", 3, FFFD FFFD FFFD);
  check_utf8_bytes("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);    /* > U+10FFFF */
  check_utf8_bytes("\xF5\x80\x80\x80", 4, FFFD FFFD FFFD FFFD);
  check_utf8_bytes("\xFF\xFE", 2, FFFD FFFD);
  check_utf8_bytes("\x80", 1, FFFD);                               /* lone continuation */
  check_utf8_bytes("a\x80\xBF" "b", 4, "a" FFFD FFFD "b");
  check_utf8_bytes("a\xE2\x82", 3, "a" FFFD);                      /* truncated at the end */
  check_utf8_bytes("\xF0\x9F\x98", 3, FFFD);
  check_utf8_bytes("\xC3", 1, FFFD);
  check_utf8_bytes("x\xE2\x82y", 4, "x" FFFD "y");                 /* maximal subpart */
  check_utf8_bytes("\xF0\x9F\x98\xC3\xA9", 5, FFFD "\xC3\xA9");
  check_utf8_bytes("\xE2\x82\xE2\x82\xAC", 5, FFFD "\xE2\x82\xAC");
  check_utf8_bytes("\xC3\"", 2, FFFD "\"");
  check_utf8_bytes("\xE1\x80\n", 3, FFFD "\n");
}
END_TEST

/* n filler bytes, then tail, appended in the given piece size. */
static void boundary_case(size_t fill, const char *tail, size_t tail_len, const char *want_tail) {
  sbx_chunks c = {0};
  char *buf = malloc(fill + tail_len);
  memset(buf, 'a', fill);
  memcpy(buf + fill, tail, tail_len);
  for (size_t off = 0; off < fill + tail_len;) {
    size_t step = off < fill ? (fill - off > 4096 ? 4096 : fill - off) : 1;
    ck_assert_int_eq(sbx_chunks_append(&c, buf + off, step), 0);
    off += step;
  }
  if (fill + tail_len > SBX_CHUNK_SIZE)
    ck_assert_ptr_nonnull(c.head->next); /* the tail really crosses a chunk */
  size_t wl = strlen(want_tail);
  char *want = malloc(fill + wl);
  memset(want, 'a', fill);
  memcpy(want + fill, want_tail, wl);
  check_utf8(&c, want, fill + wl);
  free(want);
  free(buf);
  sbx_chunks_free(&c);
}

START_TEST(render_across_chunks) {
  const size_t K = SBX_CHUNK_SIZE;
  boundary_case(K - 1, "\xE2\x82\xAC", 3, "\xE2\x82\xAC");
  boundary_case(K - 2, "\xE2\x82\xAC", 3, "\xE2\x82\xAC");
  boundary_case(K - 1, "\xF0\x9F\x98\x80z", 5, "\xF0\x9F\x98\x80z");
  boundary_case(K - 3, "\xF0\x9F\x98\x80z", 5, "\xF0\x9F\x98\x80z");
  boundary_case(K - 1, "\xC3\xA9", 2, "\xC3\xA9");
  boundary_case(K - 1, "\xE0\x80q", 3, FFFD FFFD "q");
  boundary_case(K - 1, "\xED\xA0\x80", 3, FFFD FFFD FFFD);
  boundary_case(K - 2, "\xE2\x82", 2, FFFD);  /* truncated: ends exactly at the boundary */
  boundary_case(K - 1, "\xE2\x82", 2, FFFD);  /* truncated after crossing */
  boundary_case(K - 1, "\xE2\x82\n", 3, FFFD "\n");
  boundary_case(K - 1, "\x01\"", 2, "\x01\"");
}
END_TEST

START_TEST(render_base64_large) {
  size_t n = 200 * 1024 + 1;
  uint8_t *data = malloc(n);
  srand(12345);
  for (size_t i = 0; i < n; i++)
    data[i] = (uint8_t)(rand() >> 7);
  sbx_chunks c = {0}, e = {0};
  /* odd append sizes so the chunk boundaries fall mid-group */
  for (size_t off = 0; off < n;) {
    size_t step = 1 + (size_t)rand() % 9000;
    if (step > n - off)
      step = n - off;
    sbx_chunks_append(&c, data + off, step);
    off += step;
  }
  sbx_chunks_append(&e, data, 2);
  size_t rlen;
  char *ref = sbx_b64_encode(data, n, &rlen);
  exec_output o = mkout(&c, &e, SBX_ENC_BASE64);
  size_t sizes[] = {1, 5, 4093, 65536};
  for (size_t i = 0; i < SBX_ARRAY_LEN(sizes); i++) {
    json_t *v = render_json(&o, sizes[i]);
    ck_assert_str_eq(sget(v, "encoding"), "base64");
    ck_assert_uint_eq(json_string_length(json_object_get(v, "stdout")), rlen);
    ck_assert(strcmp(sget(v, "stdout"), ref) == 0);
    size_t dl;
    uint8_t *dec = sbx_b64_decode(sget(v, "stdout"), rlen, &dl);
    ck_assert_uint_eq(dl, n);
    ck_assert(memcmp(dec, data, n) == 0);
    free(dec);
    char *eref = sbx_b64_encode(data, 2, NULL);
    ck_assert_str_eq(sget(v, "stderr"), eref);
    free(eref);
    json_decref(v);
  }
  free(ref);
  free(data);
  sbx_chunks_free(&c);
  sbx_chunks_free(&e);
}
END_TEST

START_TEST(render_piece_size_invariance) {
  /* random bytes (mostly invalid UTF-8, many escapes) over several chunks */
  size_t n = 3 * SBX_CHUNK_SIZE + 777;
  uint8_t *data = malloc(n);
  srand(777);
  for (size_t i = 0; i < n; i++)
    data[i] = (uint8_t)(rand() >> 5);
  /* sprinkle valid multibyte characters across the boundaries */
  memcpy(data + SBX_CHUNK_SIZE - 1, "\xF0\x9F\x98\x80", 4);
  memcpy(data + 2 * SBX_CHUNK_SIZE - 2, "\xE2\x82\xAC", 3);
  sbx_chunks c = {0};
  sbx_chunks_append(&c, data, n);
  for (int enc = 0; enc < 2; enc++) {
    exec_output o = mkout(&c, &c, enc ? SBX_ENC_BASE64 : SBX_ENC_UTF8);
    size_t la, lb, lc;
    char *a = render_all(&o, 65536, &la);
    char *b = render_all(&o, 1, &lb);
    char *d = render_all(&o, 13, &lc);
    ck_assert_uint_eq(la, lb);
    ck_assert_uint_eq(la, lc);
    ck_assert(memcmp(a, b, la) == 0);
    ck_assert(memcmp(a, d, la) == 0);
    json_error_t je;
    json_t *v = json_loadb(a, la, JSON_ALLOW_NUL, &je);
    ck_assert_msg(v != NULL, "not JSON: %s", je.text);
    json_decref(v);
    free(a);
    free(b);
    free(d);
  }
  free(data);
  sbx_chunks_free(&c);
}
END_TEST

static Suite *request_suite(void) {
  Suite *s = suite_create("request");
  TCase *t = tcase_create("sandbox");
  tcase_add_test(t, sandbox_defaults);
  tcase_add_test(t, sandbox_full);
  tcase_add_test(t, sandbox_errors);
  suite_add_tcase(s, t);
  t = tcase_create("exec");
  tcase_add_test(t, exec_defaults);
  tcase_add_test(t, exec_full);
  tcase_add_test(t, exec_errors);
  tcase_add_test(t, exec_stdin);
  tcase_add_test(t, exec_shell_mode);
  tcase_add_test(t, exec_ws_fields);
  tcase_add_test(t, agent_spec);
  suite_add_tcase(s, t);
  t = tcase_create("helpers");
  tcase_add_test(t, signals);
  tcase_add_test(t, base64_vectors);
  suite_add_tcase(s, t);
  t = tcase_create("render");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, render_shape_success);
  tcase_add_test(t, render_shape_timeout);
  tcase_add_test(t, render_ascii_and_controls);
  tcase_add_test(t, render_valid_multibyte);
  tcase_add_test(t, render_invalid_bytes);
  tcase_add_test(t, render_across_chunks);
  tcase_add_test(t, render_base64_large);
  tcase_add_test(t, render_piece_size_invariance);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(request_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
