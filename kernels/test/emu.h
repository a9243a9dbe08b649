// A CPU emulation of the slice of the CUDA execution model the edgetune kernels use, so that
// kernels/*.cu compile with g++ and run in tests without a GPU (kernels/test/kernels_test.cpp,
// scripts/test-kernels.sh).
//
// Blocks of a launch run one after another; the threads of a block run as fibers (ucontext) on
// one OS thread, switching only at barriers: __syncthreads, and one barrier per warp for
// __syncwarp and the shuffles (every lane writes its value to a slot, waits, reads its source
// lane's slot, waits). A thread that returns early must not be waited for by a later barrier
// (true of every kernel here: early returns are whole-block or after the last barrier). `__shared__`
// becomes `static`: blocks never overlap, so one static array per kernel is the block's shared
// memory. The bf16 tensor-core mma is emulated per the PTX ISA fragment layout of
// mma.m16n8k16 (.row.col, bf16 inputs, f32 accumulation); cvt.rn.bf16x2 rounds to nearest even.
// Only what the kernels use is defined; the real PTX comes from NVRTC, not from this file.
#pragma once
#include <math.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(x)
#define __align__(n) __attribute__((aligned(n)))
#define ET_DYNAMIC_SHARED(T, name) T* name = (T*)et_emu_block->dyn

struct EtDim3 {
  unsigned x, y, z;
};
// One OS thread runs every CUDA thread of a block as a fiber (ucontext), switching only at
// barriers: these are plain globals set by the scheduler before it resumes a fiber.
inline EtDim3 threadIdx, blockIdx, blockDim, gridDim;

struct EtFiber {
  ucontext_t ctx;
  std::vector<char> stack;
  unsigned tid;
  bool done;
};
inline ucontext_t et_emu_sched;
inline EtFiber* et_emu_cur;
inline void et_emu_yield() { swapcontext(&et_emu_cur->ctx, &et_emu_sched); }

// A barrier of `expected` fibers: the last to arrive opens it; the others yield until then.
struct EtEmuBarrier {
  explicit EtEmuBarrier(unsigned n) : expected(n) {}
  unsigned expected, count = 0;
  unsigned long gen = 0;
  void arrive_and_wait() {
    const unsigned long g = gen;
    if (++count == expected) {
      count = 0;
      gen++;
      return;
    }
    while (gen == g) et_emu_yield();
  }
};

struct EtEmuWarp {
  EtEmuBarrier bar{32};
  uint64_t slot[32];
  uint32_t a[32][4], b[32][2];
};
struct EtEmuBlock {
  explicit EtEmuBlock(unsigned threads, void* d) : bar(threads), warps(threads / 32), dyn(d) {
    for (auto& w : warps) w = std::make_unique<EtEmuWarp>();
  }
  EtEmuBarrier bar;
  std::vector<std::unique_ptr<EtEmuWarp>> warps;
  void* dyn;
};
inline EtEmuBlock* et_emu_block;

inline EtEmuWarp& et_emu_warp() { return *et_emu_block->warps[threadIdx.x / 32]; }
inline void __syncthreads() { et_emu_block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { et_emu_warp().bar.arrive_and_wait(); }

template <class T>
inline T et_emu_exchange(T v, int src) {
  EtEmuWarp& w = et_emu_warp();
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  w.slot[threadIdx.x % 32] = bits;
  w.bar.arrive_and_wait();
  bits = w.slot[src & 31];
  w.bar.arrive_and_wait();
  T r;
  memcpy(&r, &bits, sizeof(T));
  return r;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
  return et_emu_exchange(v, (int)(threadIdx.x % 32) ^ o);
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
  return et_emu_exchange(v, src);
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float __int_as_float(int i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
inline float __uint_as_float(unsigned i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
// The _rn intrinsics are single IEEE operations; the test build uses -ffp-contract=off.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }

// f32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN), as cvt.rn.bf16x2.f32.
inline uint32_t et_emu_bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}
inline float et_emu_bf16_value(uint32_t bits16) {
  uint32_t u = (bits16 & 0xffffu) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c with d = c, per the PTX ISA
// fragment layout (groupID = lane / 4, tig = lane % 4; the lower-indexed element of a pair in
// the low 16 bits):
//   A 16×16: a[0] = (row g, k 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B 16×8 (K×N): b[0] = (k 2t..2t+1, col g), b[1] = (k 2t+8.., col g)
//   C 16×8: c[0], c[1] = (row g, cols 2t, 2t+1), c[2], c[3] = (row g+8, cols 2t, 2t+1)
inline void et_emu_mma_m16n8k16_bf16(float* c, const uint32_t* a, const uint32_t* b) {
  EtEmuWarp& w = et_emu_warp();
  const int lane = threadIdx.x % 32;
  for (int r = 0; r < 4; r++) w.a[lane][r] = a[r];
  w.b[lane][0] = b[0];
  w.b[lane][1] = b[1];
  w.bar.arrive_and_wait();
  auto a_at = [&](int row, int k) {
    const int l = (row % 8) * 4 + (k % 8) / 2;
    const int r = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return et_emu_bf16_value(w.a[l][r] >> (16 * (k % 2)));
  };
  auto b_at = [&](int k, int col) {
    const int l = col * 4 + (k % 8) / 2;
    const int r = k >= 8 ? 1 : 0;
    return et_emu_bf16_value(w.b[l][r] >> (16 * (k % 2)));
  };
  const int g = lane / 4, t = lane % 4;
  float d[4];
  for (int e = 0; e < 4; e++) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e % 2);
    float s = c[e];
    for (int k = 0; k < 16; k++) s += a_at(row, k) * b_at(k, col);
    d[e] = s;
  }
  w.bar.arrive_and_wait();
  for (int e = 0; e < 4; e++) c[e] = d[e];
}

// Runs kernel<<<grid, block, shmem>>>(args...) on the CPU: blocks one after another, the
// block's threads as fibers scheduled round-robin. Returns when the launch is complete.
inline std::function<void()> et_emu_body;
inline uint64_t et_emu_rng = 0x853c49e6748fea9bull;
inline void et_emu_entry() {
  et_emu_body();
  et_emu_cur->done = true;  // uc_link returns to the scheduler
}
template <class... P, class... A>
inline void et_emu_launch(void (*kernel)(P...), EtDim3 grid, unsigned block, size_t shmem,
                          A... args) {
  blockDim = {block, 1, 1};
  gridDim = grid;
  std::vector<double> dyn(shmem / sizeof(double) + 1);
  std::vector<EtFiber> fibers(block);
  for (auto& f : fibers) f.stack.resize(256 * 1024);
  et_emu_body = [&] { kernel(static_cast<P>(args)...); };
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        EtEmuBlock blk(block, dyn.data());
        et_emu_block = &blk;
        blockIdx = {x, y, z};
        for (unsigned t = 0; t < block; t++) {
          EtFiber& f = fibers[t];
          f.tid = t;
          f.done = false;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = &et_emu_sched;
          makecontext(&f.ctx, et_emu_entry, 0);
        }
        // Each pass resumes every live fiber once, in a fresh pseudo-random order, so that a
        // missing barrier (two threads touching one address between the same two barriers)
        // shows up as a wrong result instead of depending on a fixed thread order.
        std::vector<unsigned> order(block);
        for (unsigned t = 0; t < block; t++) order[t] = t;
        for (unsigned left = block; left > 0;) {
          left = 0;
          for (unsigned t = block - 1; t > 0; t--) {
            et_emu_rng = et_emu_rng * 6364136223846793005ull + 1442695040888963407ull;
            std::swap(order[t], order[(et_emu_rng >> 33) % (t + 1)]);
          }
          for (unsigned t : order) {
            EtFiber& f = fibers[t];
            if (f.done) continue;
            threadIdx = {f.tid, 0, 0};
            et_emu_cur = &f;
            swapcontext(&et_emu_sched, &f.ctx);
            if (!f.done) left++;
          }
        }
      }
}
