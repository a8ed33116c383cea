#include "cpu/threading.h"

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

Pool& pool() {
  // Leaked on purpose: joining threads from a static destructor at exit can deadlock when the
  // process exits from inside a worker or after fork.
  static Pool* p = new Pool(detect_threads());
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_for(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (count <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_parts = (count + grain - 1) / grain;
  const int parts = static_cast<int>(std::min<int64_t>(max_parts, t_inside_worker ? 1 : num_threads()));
  if (parts <= 1) {
    fn(0, count);
    return;
  }
  pool().run(count, parts, fn);
}

}  // namespace bnb::cpu
