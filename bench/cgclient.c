/* Callgrind client requests for bench/callgrind_classifier.py, called through ctypes.
   Built by bench/bench_replay.py --callgrind into its --out directory:
   cc -O2 -shared -fPIC bench/cgclient.c -o OUT/cgclient.so
   Outside valgrind every request is a no-op. */
#include <valgrind/callgrind.h>
#include <valgrind/valgrind.h>

int cg_running(void) { return RUNNING_ON_VALGRIND; }
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
