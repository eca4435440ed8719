/* test_web.c - the console's embedded file table (routes/web.h), as
 * scripts/embed_web.py generated it: every file findable with a content type
 * and an ETag that is the hash index.html versions it with. */
#include "routes/web.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_required_files) {
  const char *need[] = {"index.html", "app.js", "api.js", "terminal.js", "style.css",
                        "xterm.js",   "xterm.css", "addon-fit.js"};
  for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
    const web_file *f = web_file_find(need[i]);
    ck_assert_msg(f != NULL, "%s is not embedded", need[i]);
    ck_assert_str_eq(f->path, need[i]);
    ck_assert_uint_gt(f->len, 0);
    ck_assert_msg(f->bytes[f->len] == '\0', "%s is not NUL-terminated past its length", need[i]);
  }
  ck_assert_ptr_null(web_file_find("nope.js"));
  ck_assert_ptr_null(web_file_find(""));
  ck_assert_ptr_null(web_file_find("../index.html"));
}
END_TEST

START_TEST(test_types_and_etags) {
  ck_assert_uint_ge(web_files_count, 8);
  for (size_t i = 0; i < web_files_count; i++) {
    const web_file *f = &web_files[i];
    const char *dot = strrchr(f->path, '.');
    ck_assert_ptr_nonnull(dot);
    const char *want = !strcmp(dot, ".html") ? "text/html; charset=utf-8"
                       : !strcmp(dot, ".js") ? "text/javascript; charset=utf-8"
                       : !strcmp(dot, ".css") ? "text/css; charset=utf-8"
                                             : "?";
    ck_assert_str_eq(f->content_type, want);
    size_t n = strlen(f->etag);
    ck_assert_msg(n > 2 && f->etag[0] == '"' && f->etag[n - 1] == '"', "bad ETag %s", f->etag);
    ck_assert_uint_eq(strspn(f->etag + 1, "0123456789abcdef"), n - 2);
    for (size_t j = 0; j < i; j++)
      ck_assert_str_ne(web_files[j].path, f->path);
  }
}
END_TEST

/* index.html links each asset as /web/NAME?v=HASH with HASH its ETag. */
START_TEST(test_index_versions_match) {
  const web_file *idx = web_file_find("index.html");
  ck_assert_ptr_nonnull(idx);
  const char *html = (const char *)idx->bytes;
  int links = 0;
  for (size_t i = 0; i < web_files_count; i++) {
    const web_file *f = &web_files[i];
    if (!strcmp(f->path, "index.html"))
      continue;
    char ref[256];
    snprintf(ref, sizeof ref, "\"/web/%s?v=%.*s\"", f->path, (int)strlen(f->etag) - 2, f->etag + 1);
    if (strstr(html, ref))
      links++;
  }
  /* xterm.js, xterm.css, addon-fit.js, app.js, style.css; the modules app.js imports are not */
  ck_assert_int_ge(links, 5);
  ck_assert_ptr_null(strstr(html, "?v=\"")); /* no empty version */
}
END_TEST

static Suite *web_suite(void) {
  Suite *s = suite_create("web");
  TCase *tc = tcase_create("files");
  tcase_add_test(tc, test_required_files);
  tcase_add_test(tc, test_types_and_etags);
  tcase_add_test(tc, test_index_versions_match);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(web_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
