/* The libsbx example of the README (README.md): built and run by test_libsbx. */
#include <stdio.h>
#include "client/sbx.h"

int main(int argc, char **argv) {
  sbx_error err;
  sbx_client *c = sbx_client_new(argc > 1 ? argv[1] : "http://127.0.0.1:7070", NULL, &err);
  if (!c) return fprintf(stderr, "%s\n", err.message), 1;
  sbx_create_opts o = {.name = "example", .env = (const char *[]){"GREETING=hi", NULL}, .replace = 1};
  sbx_sandbox *sb = sbx_sandbox_create(c, &o, &err);
  if (!sb) return fprintf(stderr, "create: %s (%s)\n", err.message, err.kind_name), 1;
  sbx_output *out = NULL;
  const char *args[] = {"-c", "import os; print(os.environ['GREETING'], 6 * 7)", NULL};
  int rc = sbx_exec(c, "example", "python3", args, NULL, &out, &err);
  if (rc == 0)  /* a non-zero exit is not an error: look at exit_code */
    printf("exit %d: %s", sbx_output_exit_code(out), sbx_output_stdout(out));
  else          /* exec_failed: err.failure says why; exec_timeout: out has the partial output */
    fprintf(stderr, "exec: %s (%s)\n", err.message, err.kind_name);
  sbx_output_free(out);
  sbx_sandbox_remove(c, sbx_sandbox_id(sb), NULL);
  sbx_sandbox_free(sb);
  sbx_client_free(c);
  return rc == 0 ? 0 : 1;
}
