// Counts, per thread, the calls a process makes to oneDNN's host mapping
// (dnnl_memory_map_data) and stream wait (dnnl_stream_wait): the points where
// the host waits for the device, which on a GPU each cost a synchronisation.
// Preloaded by host_syncs.sh; prints one line per thread at exit:
//   host_syncs: thread 3: maps 9084 waits 1104
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

typedef void* memory_handle;
typedef void* stream_handle;
typedef int status;

enum { kMaxThreads = 512 };
static struct {
  pthread_t thread;
  long maps, waits;
} counts[kMaxThreads];
static int used;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int slot(void) {
  const pthread_t self = pthread_self();
  pthread_mutex_lock(&lock);
  int i = 0;
  while (i < used && !pthread_equal(counts[i].thread, self)) ++i;
  if (i == used && used < kMaxThreads) counts[used++].thread = self;
  if (i == kMaxThreads) i = kMaxThreads - 1;
  pthread_mutex_unlock(&lock);
  return i;
}

status dnnl_memory_map_data(memory_handle memory, void** mapped) {
  static status (*real)(memory_handle, void**);
  if (!real) real = (status(*)(memory_handle, void**))dlsym(RTLD_NEXT, "dnnl_memory_map_data");
  __atomic_add_fetch(&counts[slot()].maps, 1, __ATOMIC_RELAXED);
  return real(memory, mapped);
}

status dnnl_stream_wait(stream_handle stream) {
  static status (*real)(stream_handle);
  if (!real) real = (status(*)(stream_handle))dlsym(RTLD_NEXT, "dnnl_stream_wait");
  __atomic_add_fetch(&counts[slot()].waits, 1, __ATOMIC_RELAXED);
  return real(stream);
}

__attribute__((destructor)) static void report(void) {
  for (int i = 0; i < used; ++i)
    if (counts[i].maps || counts[i].waits)
      fprintf(stderr, "host_syncs: thread %d: maps %ld waits %ld\n", i, counts[i].maps, counts[i].waits);
}
