// A CPU emulation of the few CUDA features the kernels in csrc/include/nemotron use, for checking kernel logic on
// a machine without a GPU (tests/test_decoder_cuda.py). Not part of the extension build.
//
// Every CUDA thread of a block is a fiber (ucontext) run by one OS thread; blocks run one after another, or, for
// launch_cooperative, all at once. A fiber runs until it reaches a barrier (__syncthreads, a warp exchange inside
// warp_allreduce_xor or shfl_xor, or grid_sync); when every fiber is blocked, the barriers whose participants have all
// arrived are released. A barrier that can never be
// released (threads of one block waiting at different barriers, or a barrier after some threads returned) is
// reported as an error instead of hanging. The order in which fibers run between barriers is forward, reversed or
// shuffled (the `schedule` argument of launch): a missing __syncthreads shows up as results that depend on it.
// Shared memory starts filled with NaN bytes, so a read before a write shows up too.
//
// Supported: threadIdx.x, blockIdx.x, blockDim.x, gridDim.x, __syncthreads, dynamic shared memory
// (emu::shared_memory), __fadd_rn / __fmul_rn, warp sums through emu::warp_allreduce_xor (the same butterfly
// order as a __shfl_xor_sync loop with m = 16, 8, 4, 2, 1), emu::shfl_xor (__shfl_xor_sync over a full warp) and
// emu::grid_sync (cooperative_groups::this_grid().sync(), under launch_cooperative only).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#define NEMOTRON_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace emu {

enum class Wait { kNone, kBlock, kWarp, kGrid, kDone };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  Wait wait = Wait::kNone;
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  unsigned current = 0;
  std::vector<unsigned char> smem;
  std::vector<float> warp_buf;  // [warps, 32, kMaxReduce]
  const std::function<void()>* body = nullptr;
  bool cooperative = false;
};

constexpr int kMaxReduce = 64;

inline Block* g_block = nullptr;
inline dim3 g_thread_idx, g_block_idx, g_block_dim, g_grid_dim;

inline unsigned char* shared_memory() {
  return g_block->smem.data();
}

inline void yield(Wait w) {
  Fiber& f = g_block->fibers[g_block->current];
  f.wait = w;
  swapcontext(&f.ctx, &g_block->scheduler);
}

inline void syncthreads() {
  yield(Wait::kBlock);
}

// v[0..n) summed over the 32 lanes of the calling warp, in the order of `v += __shfl_xor_sync(.., v, m)` for
// m = 16, 8, 4, 2, 1; every lane gets the result.
inline void warp_allreduce_xor(float* v, int n) {
  if (n > kMaxReduce) throw std::logic_error("emu: warp_allreduce_xor of too many values");
  const unsigned tid = g_block->current;
  const unsigned warp = tid / 32, lane = tid % 32;
  float* buf = g_block->warp_buf.data() + static_cast<size_t>(warp) * 32 * kMaxReduce;
  for (int i = 0; i < n; ++i) buf[lane * kMaxReduce + i] = v[i];
  yield(Wait::kWarp);
  float vals[32];
  for (int i = 0; i < n; ++i) {
    for (int l = 0; l < 32; ++l) vals[l] = buf[l * kMaxReduce + i];
    for (int m = 16; m > 0; m >>= 1) {
      float next[32];
      for (int l = 0; l < 32; ++l) next[l] = vals[l] + vals[l ^ m];
      std::memcpy(vals, next, sizeof(vals));
    }
    v[i] = vals[lane];
  }
  yield(Wait::kWarp);  // every lane has read buf before it is reused
}

// __shfl_xor_sync(0xffffffff, v, m): lane l gets lane (l ^ m)'s v.
template <typename V>
V shfl_xor(V v, int m) {
  static_assert(sizeof(V) == sizeof(float), "emu: shfl_xor of 4-byte values only");
  const unsigned tid = g_block->current;
  const unsigned warp = tid / 32, lane = tid % 32;
  float* buf = g_block->warp_buf.data() + static_cast<size_t>(warp) * 32 * kMaxReduce;
  std::memcpy(&buf[lane * kMaxReduce], &v, sizeof(v));
  yield(Wait::kWarp);
  V out;
  std::memcpy(&out, &buf[(lane ^ static_cast<unsigned>(m)) * kMaxReduce], sizeof(out));
  yield(Wait::kWarp);
  return out;
}

inline void grid_sync() {
  if (!g_block->cooperative) throw std::logic_error("emu: grid_sync outside launch_cooperative");
  yield(Wait::kGrid);
}

inline void fiber_entry() {
  (*g_block->body)();
  Fiber& f = g_block->fibers[g_block->current];
  f.wait = Wait::kDone;
  swapcontext(&f.ctx, &g_block->scheduler);
}

// Releases the warp exchanges and the __syncthreads of one block whose threads have all arrived; true if any.
inline bool release_block(Block& blk, unsigned block) {
  bool released = false;
  unsigned at_block = 0;
  for (auto& f : blk.fibers) at_block += f.wait == Wait::kBlock;
  for (unsigned w = 0; w < block / 32; ++w) {
    bool all = true;
    for (unsigned l = 0; l < 32; ++l) all = all && blk.fibers[w * 32 + l].wait == Wait::kWarp;
    if (all) {
      for (unsigned l = 0; l < 32; ++l) blk.fibers[w * 32 + l].wait = Wait::kNone;
      released = true;
    }
  }
  if (at_block == block) {
    for (auto& f : blk.fibers) f.wait = Wait::kNone;
    released = true;
  }
  return released;
}

// Schedule for launch_cooperative: the blocks in turn, last block first, each run until all of its threads wait at
// grid_sync (or returned) before the next block runs: one block far ahead of another, as can happen on a GPU.
constexpr unsigned kBlocksInTurn = 3;

// Runs blocks first .. first + count - 1 of a grid of `grid` blocks, all resident at once, to completion: their
// fibers interleave in `schedule`'s order (0 forward, 1 reversed, kBlocksInTurn, others shuffled by rng), and
// grid_sync (cooperative only) releases when every thread of these blocks has reached it.
inline void run_blocks(unsigned grid, unsigned first, unsigned count, unsigned block, size_t smem_bytes,
                       const std::function<void()>& body, unsigned schedule, bool cooperative, std::mt19937& rng) {
  std::vector<Block> blocks(count);
  for (Block& blk : blocks) {
    blk.body = &body;
    blk.cooperative = cooperative;
    blk.smem.assign(smem_bytes + 16, 0xFF);  // NaN floats, -1 ints
    blk.warp_buf.assign(static_cast<size_t>(block / 32) * 32 * kMaxReduce, 0.f);
    blk.fibers.resize(block);
    for (Fiber& f : blk.fibers) {
      f.stack.resize(256 * 1024);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, fiber_entry, 0);
    }
  }
  g_block_dim.x = block;
  g_grid_dim.x = grid;
  auto run = [&](unsigned b, unsigned i) {
    Block& blk = blocks[b];
    if (blk.fibers[i].wait != Wait::kNone) return;
    g_block = &blk;
    g_block_idx.x = first + b;
    blk.current = i;
    g_thread_idx.x = i;
    swapcontext(&blk.scheduler, &blk.fibers[i].ctx);
    g_block = nullptr;
  };
  std::vector<std::pair<unsigned, unsigned>> order;
  for (unsigned b = 0; b < count; ++b) {
    for (unsigned i = 0; i < block; ++i) order.emplace_back(b, i);
  }
  if (schedule == 1) std::reverse(order.begin(), order.end());
  const size_t total = order.size();
  while (true) {
    bool released = false;
    if (schedule == kBlocksInTurn) {
      for (unsigned b = count; b-- > 0;) {
        do {
          for (unsigned i = 0; i < block; ++i) run(b, i);
        } while (release_block(blocks[b], block));
      }
    } else {
      if (schedule >= 2) std::shuffle(order.begin(), order.end(), rng);
      for (const auto& [b, i] : order) run(b, i);
      for (auto& blk : blocks) released = release_block(blk, block) || released;
    }
    size_t done = 0, at_grid = 0;
    for (auto& blk : blocks) {
      for (auto& f : blk.fibers) {
        done += f.wait == Wait::kDone;
        at_grid += f.wait == Wait::kGrid;
      }
    }
    if (done == total) break;
    if (!released && at_grid == total) {
      for (auto& blk : blocks) {
        for (auto& f : blk.fibers) f.wait = Wait::kNone;
      }
      released = true;
    }
    if (!released) {  // the fibers' stacks are dropped with `blocks`
      throw std::runtime_error("emu: deadlock in blocks " + std::to_string(first) + ".." +
                               std::to_string(first + count - 1) + ": " + std::to_string(done) +
                               " threads returned, " + std::to_string(at_grid) + " at grid_sync, " +
                               std::to_string(total - done - at_grid) + " at __syncthreads or a warp exchange");
    }
  }
}

// Runs body() as grid x block CUDA threads, one block after another; schedule 0 forward, 1 reversed, >= 2
// shuffled with that seed. Throws std::runtime_error on a barrier that cannot be released.
inline void launch(unsigned grid, unsigned block, size_t smem_bytes, const std::function<void()>& body,
                   unsigned schedule) {
  if (block == 0 || block % 32 != 0) throw std::runtime_error("emu: blockDim.x must be a positive multiple of 32");
  std::mt19937 rng(schedule);
  for (unsigned b = 0; b < grid; ++b) run_blocks(grid, b, 1, block, smem_bytes, body, schedule, false, rng);
}

// Runs body() as grid x block CUDA threads with every block resident at once, as cudaLaunchCooperativeKernel does
// (schedules as in run_blocks). Throws std::runtime_error on a barrier that cannot be released.
inline void launch_cooperative(unsigned grid, unsigned block, size_t smem_bytes, const std::function<void()>& body,
                               unsigned schedule) {
  if (block == 0 || block % 32 != 0) throw std::runtime_error("emu: blockDim.x must be a positive multiple of 32");
  std::mt19937 rng(schedule);
  run_blocks(grid, 0, grid, block, smem_bytes, body, schedule, true, rng);
}

}  // namespace emu

#define threadIdx (::emu::g_thread_idx)
#define blockIdx (::emu::g_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)
#define __syncthreads() ::emu::syncthreads()

inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
