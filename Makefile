# sbx - one Makefile.  `make run` and `make test` install missing Debian
# packages first (scripts/deps.sh), then build.
#
#   make            build sbxd and sbx-agent into build/
#   make run        start sbxd on 127.0.0.1:7070 with data in ./var
#   make test       unit (Check) + integration tests against a real sbxd
#   make asan       the same tests with ASan+UBSan binaries (build-asan/)
#   make bench      the benchmark table
#   make fuzz       libFuzzer targets, FUZZ_SECONDS (60) each (scripts/fuzz-deps.sh)

BUILD  ?= build
CC     ?= gcc
SAN    ?=
PKGS   := libmicrohttpd libwebsockets jansson sqlite3 libseccomp
WARN   := -Wall -Wextra -Wshadow -Wpointer-arith -Wformat=2 -Wstrict-prototypes \
          -Wmissing-prototypes -Werror=implicit-function-declaration -Werror=return-type \
          -Werror=format-security -Wno-unused-parameter
CFLAGS ?= -O2 -g
override CFLAGS += -std=gnu11 $(WARN) -D_GNU_SOURCE -MMD -MP $(SAN)
CPPFLAGS += -I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread
override LDFLAGS += $(SAN)

# everything but main()s goes into one static library (crun's libcrun style)
CORE_SRC := $(wildcard common/*.c store/*.c vmm/*.c routes/*.c server/*.c) agent/proto.c
CORE_SRC := $(filter-out %main.c,$(CORE_SRC))
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/openapi.o $(BUILD)/gen/web.o
AGENT_SRC := $(wildcard agent/*.c) common/util.c common/err.c common/b64.c
# libsbx (the client library) is its own archive: client/*.c but the CLI's main
CLIENT_SRC := $(filter-out client/sbx_main.c,$(wildcard client/*.c))
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/%.o)
CLIENT_LIBS := $(shell pkg-config --libs libcurl libwebsockets jansson 2>/dev/null) -lpthread
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

all: $(BUILD)/sbxd $(BUILD)/sbx-agent $(BUILD)/sbx-launch $(BUILD)/sbx $(BUILD)/vm/initrd.img

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# the OpenAPI document is compiled in, YAML as written and converted to JSON
$(BUILD)/gen/openapi.c: openapi/openapi.yaml scripts/embed_openapi.py
	@mkdir -p $(dir $@)
	/usr/bin/python3 scripts/embed_openapi.py $< $@

$(BUILD)/gen/openapi.o: $(BUILD)/gen/openapi.c
	$(CC) $(CFLAGS) -c -o $@ $<

# the browser console is compiled in too: web/ plus xterm.js from npm, pinned
# by web/package-lock.json (npm ci runs when node_modules is missing or older)
WEB_SRC := $(wildcard web/index.html web/*.js web/*.css)

web/node_modules: web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	@touch $@

$(BUILD)/gen/web.c: scripts/embed_web.py $(WEB_SRC) web/node_modules
	@mkdir -p $(dir $@)
	/usr/bin/python3 scripts/embed_web.py web $@

$(BUILD)/gen/web.o: $(BUILD)/gen/web.c routes/web.h
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/libsbxcore.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/sbxd: $(BUILD)/server/main.o $(BUILD)/libsbxcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libsbx.a: $(CLIENT_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/sbx: $(BUILD)/client/sbx_main.o $(BUILD)/libsbx.a
	$(CC) $(LDFLAGS) -o $@ $^ $(CLIENT_LIBS)

# the ns driver's launcher: sbxd runs it (fork+exec, never fork alone in a
# threaded server) to build a sandbox's namespaces and start its agent
$(BUILD)/sbx-launch: $(BUILD)/vmm/launch_main.o $(BUILD)/libsbxcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The agent is PID 1 inside every sandbox: a static binary so that it runs on
# any image.  It links jansson statically (see README, "Architecture").
$(BUILD)/sbx-agent: $(AGENT_SRC) $(wildcard agent/*.h common/*.h)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g $(WARN) -D_GNU_SOURCE -I. -static -o $@ $(AGENT_SRC) \
	    -Wl,-Bstatic -ljansson

# The vm driver's guest: Debian's cloud kernel, fetched as a .deb and unpacked
# (never installed on the host), and an initramfs of busybox-static, the
# virtio modules, vm/init and the agent.  The script is idempotent and cheap
# when nothing changed; FORCE because the kernel follows apt's current one.
$(BUILD)/vm/initrd.img: scripts/vm-guest.sh vm/init $(BUILD)/sbx-agent FORCE
	@scripts/vm-guest.sh $(BUILD)/vm $(BUILD)/sbx-agent

FORCE:

# libsbx's tests link the client library, and compile the README example
$(BUILD)/tests/test_libsbx: tests/unit/test_libsbx.c tests/unit/example_libsbx.c $(BUILD)/libsbx.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $(BUILD)/tests/example_libsbx tests/unit/example_libsbx.c \
	    $(BUILD)/libsbx.a $(CLIENT_LIBS)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libsbx.a \
	    $(shell pkg-config --libs check) $(CLIENT_LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libsbxcore.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libsbxcore.a \
	    $(shell pkg-config --libs check) $(LDLIBS)

deps:
	@scripts/deps.sh

run: deps all
	@mkdir -p var/images
	$(BUILD)/sbxd --listen 127.0.0.1:7070 --data-dir ./var

unit: all $(UNIT_BIN)

test: deps
	$(MAKE) all unit
	BUILD=$(BUILD) tests/run.sh

# the exec, streaming and exec-record suites again with every sandbox a
# QEMU microVM (slow under TCG: `make test` runs test_vm.py's subset)
VM_SUITES := test_exec. test_ws. test_control. test_records. test_vm.
test-vm: deps
	$(MAKE) all
	SBX_TEST_DRIVER=vm BUILD=$(BUILD) tests/run.sh $(VM_SUITES)

asan: deps
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    CFLAGS="-O1 -g" all unit
	BUILD=build-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run.sh

bench: deps all
	@scripts/bench-deps.sh
	BUILD=$(BUILD) bench/run.sh

# libFuzzer targets (tests/fuzz/): clang builds them straight from the sources
# they exercise (not from the gcc-built libsbxcore.a), with ASan+UBSan, and
# runs each for FUZZ_SECONDS on a scratch corpus seeded from
# tests/fuzz/corpus/<target>/.  A crash stops `make fuzz`; its reproducer is
# in $(FUZZ_DIR)/artifacts/ (keep it as a seed once fixed).
FUZZ_DIR     ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_TARGETS := fuzz_request fuzz_frame fuzz_ws
FUZZ_SRC     := routes/request.c routes/render.c agent/proto.c vmm/agent_conn.c \
                $(wildcard common/*.c)
FUZZ_FLAGS   := -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -fno-omit-frame-pointer \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

$(FUZZ_DIR)/%: tests/fuzz/%.c $(FUZZ_SRC) $(wildcard common/*.h routes/*.h agent/*.h vmm/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(shell pkg-config --cflags jansson) -o $@ $< $(FUZZ_SRC) \
	    $(shell pkg-config --libs jansson) -lpthread

fuzz:
	@scripts/fuzz-deps.sh
	$(MAKE) $(FUZZ_TARGETS:%=$(FUZZ_DIR)/%)
	@mkdir -p $(FUZZ_DIR)/artifacts
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	  echo "== $$t: $(FUZZ_SECONDS)s"; \
	  dict=; [ -f tests/fuzz/$$t.dict ] && dict=-dict=tests/fuzz/$$t.dict; \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(FUZZ_DIR)/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -max_len=16384 -print_final_stats=1 $$dict -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- \
	    $(FUZZ_DIR)/corpus/$$t tests/fuzz/corpus/$$t 2>$(FUZZ_DIR)/$$t.log \
	    || { tail -n 60 $(FUZZ_DIR)/$$t.log; echo "fuzz: $$t FAILED (reproducer in $(FUZZ_DIR)/artifacts/)"; exit 1; }; \
	  grep -E '^#[0-9]+[[:space:]]+DONE|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
	    $(FUZZ_DIR)/$$t.log || true; \
	done

clean:
	rm -rf build build-asan $(FUZZ_DIR)

.PHONY: all deps run unit test test-vm asan bench clean fuzz FORCE
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
