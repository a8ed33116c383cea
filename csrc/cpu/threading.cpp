#include "cpu/threading.h"

#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace bnb::cpu {
namespace {

int env_threads(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  const int n = std::atoi(v);
  return n > 0 ? n : 0;
}

int detect_threads() {
  if (int n = env_threads("BNB_NUM_THREADS")) return n;
  if (int n = env_threads("OMP_NUM_THREADS")) return n;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

thread_local bool t_inside_worker = false;

// Workers sleep on a condition variable between jobs; a job is a generation counter plus the
// function and range. Exceptions from workers are captured and rethrown on the caller.
class Pool {
 public:
  explicit Pool(int threads) : size_(threads) {
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return size_; }

  void run(int64_t count, int parts, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> job_lock(job_mu_);  // one job at a time
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      count_ = count;
      parts_ = parts;
      pending_ = parts - 1;
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    run_part(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_part(int part) {
    const int64_t begin = count_ * part / parts_;
    const int64_t end = count_ * (part + 1) / parts_;
    if (begin >= end) return;
    const bool was_inside = t_inside_worker;
    t_inside_worker = true;
    try {
      (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
    t_inside_worker = was_inside;
  }

  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      int parts;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        parts = parts_;
      }
      if (index < parts) {
        run_part(index);
        std::lock_guard<std::mutex> lock(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex job_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t count_ = 0;
  int parts_ = 1;
  int pending_ = 0;
  std::exception_ptr error_;
};

// The host process's OpenMP runtime (bnb_set_cpu_threading_runtime): its GNU entry points, which
// libgomp, LLVM's libomp and Intel's libiomp5 all export.
struct OpenMP {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned);  // GOMP_parallel(fn, data, threads, flags)
  int (*thread_num)();
  int (*team_size)();
  int (*max_threads)();
};
std::atomic<const OpenMP*> g_openmp{nullptr};

// One parallel_for on the OpenMP team: each member takes parts id, id + team, ... (the runtime may
// give fewer threads than asked), the first exception is kept for the caller.
struct TeamJob {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t count;
  int parts;
  const OpenMP* omp;
  std::mutex mu;
  std::exception_ptr error;
};

void team_member(void* data) {
  auto& job = *static_cast<TeamJob*>(data);
  const int team = std::max(1, job.omp->team_size()), id = job.omp->thread_num();
  const bool was_inside = t_inside_worker;
  t_inside_worker = true;
  for (int part = id; part < job.parts; part += team) {
    const int64_t begin = job.count * part / job.parts, end = job.count * (part + 1) / job.parts;
    if (begin >= end) continue;
    try {
      (*job.fn)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.mu);
      if (!job.error) job.error = std::current_exception();
    }
  }
  t_inside_worker = was_inside;
}

// The OpenMP runtime to use, or null: none set, or BNB_NUM_THREADS asks for the own pool's count.
const OpenMP* openmp() {
  static const bool own_count = env_threads("BNB_NUM_THREADS") > 0;
  return own_count ? nullptr : g_openmp.load(std::memory_order_acquire);
}

Pool& pool() {
  // Leaked on purpose: joining threads from a static destructor at exit can deadlock when the
  // process exits from inside a worker or after fork.
  static Pool* p = new Pool(detect_threads());
  return *p;
}

}  // namespace

int num_threads() {
  if (const OpenMP* omp = openmp()) return std::max(1, omp->max_threads());
  return pool().size();
}

const char* threading_runtime() { return openmp() ? "openmp" : "own pool"; }

void parallel_for(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (count <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_parts = (count + grain - 1) / grain;
  const int parts = static_cast<int>(std::min<int64_t>(max_parts, t_inside_worker ? 1 : num_threads()));
  if (parts <= 1) {
    fn(0, count);
    return;
  }
  if (const OpenMP* omp = openmp()) {
    TeamJob job{&fn, count, parts, omp, {}, nullptr};
    omp->parallel(team_member, &job, static_cast<unsigned>(parts), 0);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  pool().run(count, parts, fn);
}

}  // namespace bnb::cpu

namespace bnb::backend {

bool use_threading_runtime(const char* path) {
  if (path == nullptr || *path == '\0') {
    cpu::g_openmp.store(nullptr, std::memory_order_release);
    return true;
  }
  // Only a runtime already in the process (RTLD_NOLOAD): the point is to share its threads. The handle
  // and the table are kept for the life of the process (kernels may be running on them).
  void* handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  const auto* omp = new cpu::OpenMP{
      reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(dlsym(handle, "GOMP_parallel")),
      reinterpret_cast<int (*)()>(dlsym(handle, "omp_get_thread_num")),
      reinterpret_cast<int (*)()>(dlsym(handle, "omp_get_num_threads")),
      reinterpret_cast<int (*)()>(dlsym(handle, "omp_get_max_threads"))};
  if (!omp->parallel || !omp->thread_num || !omp->team_size || !omp->max_threads) {
    delete omp;
    dlclose(handle);
    return false;
  }
  cpu::g_openmp.store(omp, std::memory_order_release);
  return true;
}

}  // namespace bnb::backend
