// LeNet's two convolution blocks for the CPU, as XLA FFI handlers.
//
// A block is: 5x5 convolution (stride 1) plus bias, an activation (sigmoid or
// ReLU), then 2x2 average pooling with stride 2. LeNet has two:
//
//   block 1: x (N, 28, 28, 1), padding 2, kernel (5, 5, 1, 6)  -> (N, 14, 14, 6)
//   block 2: a (N, 14, 14, 6), no padding, kernel (5, 5, 6, 16) -> (N, 5, 5, 16)
//
// Images, kernels and results are float32 in JAX's layouts (NHWC, HWIO). Each
// handler works on one image at a time, so everything an image touches stays in
// the L1/L2 cache, and splits the batch into fixed chunks of images that the
// threads of XLA's intra-op pool take in turn. Sums over the batch (kernel and bias
// gradients) are kept per chunk and added in chunk order at the end, so results
// do not depend on the number of threads or on which thread ran which chunk.
//
// Why this exists: XLA:CPU's own convolutions with so few channels are 5-8x
// slower than PyTorch's, and the exact rewrites as matrix products (see
// convolution.py) spend most of their time in memory-bound elementwise passes
// over (N, 28, 28, 6) tensors. Here the convolution, activation and pooling of an
// image are one pass. The arithmetic is the same as PyTorch's (the same products
// and sums, in another order; exp to about 1 ulp), so results agree to float
// rounding; tests compare every output and gradient with XLA's convolution, and
// the parity suite the whole network with PyTorch. docs/performance.md has the
// measurements behind each choice below (vectors of 16 floats, independent sums).
//
// The forward pass also returns the activations (before pooling), which the
// backward pass needs; with `save` = false it skips them (evaluation).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kK = 5;               // kernel height and width
constexpr int kImagesPerChunk = 8;  // images per unit of work for a thread

// ---------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------

// exp(x) in float32 to about 1 ulp, written so that the compiler vectorises loops
// over it: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial
// (Cephes' coefficients), and 2^n put into the exponent bits.
inline float exp_f32(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  // n = round(x / ln2) by the 1.5 * 2^23 trick, which vectorises where floor may not.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

enum Activation : int32_t { kSigmoid = 0, kRelu = 1 };

template <int kAct>
inline float activate(float z) {
  if constexpr (kAct == kSigmoid) {
    return 1.0f / (1.0f + exp_f32(-z));
  } else {
    return z < 0.0f ? 0.0f : z;  // NaN stays NaN, as in PyTorch
  }
}

// The activation's derivative, from its output a = activate(z).
template <int kAct>
inline float activation_grad(float a) {
  if constexpr (kAct == kSigmoid) {
    return a * (1.0f - a);
  } else {
    return a > 0.0f ? 1.0f : 0.0f;
  }
}

// ---------------------------------------------------------------------------------
// Running chunks of the batch on XLA's intra-op thread pool
// ---------------------------------------------------------------------------------

// Calls body(chunk) for chunk in [0, chunks), on the calling thread and on up to
// num_threads - 1 tasks of the pool. Returns when every chunk is done. A task that
// starts late finds no chunk left and returns without touching `body`, which may
// be gone by then; the state it does touch is shared and outlives the call.
template <typename Body>
void parallel_chunks(ffi::ThreadPool& pool, int64_t chunks, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto run = [state, chunks, &body]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      body(c);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers =
      std::min<int64_t>(pool.num_threads(), chunks) - 1;  // the caller is one
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(run)(run));
  run();
  while (state->done.load(std::memory_order_acquire) < chunks) {
    std::this_thread::yield();
  }
}

int64_t num_chunks(int64_t n) { return (n + kImagesPerChunk - 1) / kImagesPerChunk; }

// Calls per_image(b, chunk) for every image b < n, chunk by chunk on the pool.
template <typename PerImage>
void for_each_image(ffi::ThreadPool& pool, int64_t n, const PerImage& per_image) {
  parallel_chunks(pool, num_chunks(n), [&](int64_t chunk) {
    const int64_t end = std::min(n, (chunk + 1) * kImagesPerChunk);
    for (int64_t b = chunk * kImagesPerChunk; b < end; ++b) per_image(b, chunk);
  });
}

// Sums over the batch, deterministically: per_image(b, d_kernel, d_bias) adds
// image b's gradients into its chunk's own zeroed sums, and the chunks' sums are
// then added in chunk order into d_kernel (kernel_size) and d_bias (bias_size).
template <typename PerImage>
void sum_over_images(ffi::ThreadPool& pool, int64_t n, int64_t kernel_size,
                     int64_t bias_size, float* d_kernel, float* d_bias,
                     const PerImage& per_image) {
  const int64_t size = kernel_size + bias_size;
  std::vector<float> partial(num_chunks(n) * size, 0.0f);
  for_each_image(pool, n, [&](int64_t b, int64_t chunk) {
    float* sums = partial.data() + chunk * size;
    per_image(b, sums, sums + kernel_size);
  });
  std::fill(d_kernel, d_kernel + kernel_size, 0.0f);
  std::fill(d_bias, d_bias + bias_size, 0.0f);
  for (int64_t c = 0; c < num_chunks(n); ++c) {
    const float* sums = partial.data() + c * size;
    for (int64_t k = 0; k < kernel_size; ++k) d_kernel[k] += sums[k];
    for (int64_t k = 0; k < bias_size; ++k) d_bias[k] += sums[kernel_size + k];
  }
}

// ---------------------------------------------------------------------------------
// Vectors of 16 floats (GCC/Clang vector extensions; one AVX-512 register where
// the CPU has them, two AVX ones or four SSE ones elsewhere)
// ---------------------------------------------------------------------------------

typedef float v16 __attribute__((vector_size(64)));

inline v16 load(const float* p) {
  v16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof v); }

inline v16 splat(float f) { return v16{} + f; }

inline float lane_sum(v16 v) {
  float s = 0.0f;
  for (int k = 0; k < 16; ++k) s += v[k];
  return s;
}

// Applies the activation to n floats in place (a loop the compiler vectorises).
template <int kAct>
inline void activate_all(float* z, int n) {
  for (int k = 0; k < n; ++k) z[k] = activate<kAct>(z[k]);
}

// Each block is a struct of static members: a namespace that the handlers below
// can take as a template parameter.
//
// ---------------------------------------------------------------------------------
// Block 1: (N, 28, 28, 1), pad 2, kernel (5, 5, 1, 6) -> (N, 14, 14, 6)
// Within an image the 28 columns of a row are the vectorised axis (two vectors of
// 16, the last 4 lanes unused); the saved activations are (N, 6, 28, 28).
// ---------------------------------------------------------------------------------

struct Block1 {
static constexpr int H = 28, P = 2, HP = H + 2 * P, C = 6, HO = H / 2;
static constexpr int L = 32;       // lanes per row: 28 used
static constexpr int XW = L + 16;  // padded rows: [j, j + 32) is in bounds
static constexpr int64_t kImage = H * H, kActs = C * H * H, kOut = HO * HO * C;

// The image zero-padded to (32, XW), columns shifted by the padding.
static void pad_image(const float* x, float (&xp)[HP][XW]) {
  std::memset(xp, 0, sizeof xp);
  for (int h = 0; h < H; ++h) std::memcpy(&xp[h + P][P], x + h * H, H * sizeof(float));
}

template <int kAct>
static void forward_image(const float* x, const float* kernel, const float* bias,
                   float* acts, float* out) {
  float xp[HP][XW];
  pad_image(x, xp);
  float a[C][H][L];
  for (int h = 0; h < H; ++h) {
    v16 z[C][2];  // 12 independent sums, so the multiply-adds pipeline
    for (int o = 0; o < C; ++o) z[o][0] = z[o][1] = splat(bias[o]);
    for (int i = 0; i < kK; ++i) {
      for (int j = 0; j < kK; ++j) {
        const v16 r0 = load(&xp[h + i][j]), r1 = load(&xp[h + i][j + 16]);
        const float* k = kernel + (i * kK + j) * C;
        for (int o = 0; o < C; ++o) {
          z[o][0] += r0 * k[o];
          z[o][1] += r1 * k[o];
        }
      }
    }
    for (int o = 0; o < C; ++o) {
      store(&a[o][h][0], z[o][0]);
      store(&a[o][h][16], z[o][1]);
      activate_all<kAct>(a[o][h], L);
    }
  }
  if (acts != nullptr) {
    for (int o = 0; o < C; ++o)
      for (int h = 0; h < H; ++h)
        std::memcpy(acts + (o * H + h) * H, a[o][h], H * sizeof(float));
  }
  for (int hp = 0; hp < HO; ++hp) {
    for (int wp = 0; wp < HO; ++wp) {
      for (int o = 0; o < C; ++o) {
        const float s = a[o][2 * hp][2 * wp] + a[o][2 * hp][2 * wp + 1] +
                        a[o][2 * hp + 1][2 * wp] + a[o][2 * hp + 1][2 * wp + 1];
        out[(hp * HO + wp) * C + o] = s * 0.25f;
      }
    }
  }
}

// Adds this image's kernel gradient (5, 5, 6 as [i][j][o]) and bias gradient (6)
// to d_kernel and d_bias.
template <int kAct>
static void backward_image(const float* x, const float* acts, const float* g,
                    float* d_kernel, float* d_bias) {
  float xp[HP][XW];
  pad_image(x, xp);
  float up[C][HO][HO];  // the pooled gradient spread over each 2x2 window
  for (int hp = 0; hp < HO; ++hp)
    for (int wp = 0; wp < HO; ++wp)
      for (int o = 0; o < C; ++o) up[o][hp][wp] = g[(hp * HO + wp) * C + o] * 0.25f;
  float dz[C][H][L];
  for (int o = 0; o < C; ++o) {
    for (int h = 0; h < H; ++h) {
      const float* a = acts + (o * H + h) * H;
      for (int w = 0; w < H; ++w) dz[o][h][w] = activation_grad<kAct>(a[w]);
      for (int w = 0; w < H; ++w) dz[o][h][w] *= up[o][h / 2][w / 2];
      for (int w = H; w < L; ++w) dz[o][h][w] = 0.0f;
    }
  }
  for (int o = 0; o < C; ++o) {
    v16 db = {};
    for (int h = 0; h < H; ++h) db += load(&dz[o][h][0]) + load(&dz[o][h][16]);
    d_bias[o] += lane_sum(db);
    for (int i = 0; i < kK; ++i) {
      v16 acc[kK][2] = {};  // 10 independent sums
      for (int h = 0; h < H; ++h) {
        const v16 d0 = load(&dz[o][h][0]), d1 = load(&dz[o][h][16]);
        for (int j = 0; j < kK; ++j) {
          acc[j][0] += load(&xp[h + i][j]) * d0;
          acc[j][1] += load(&xp[h + i][j + 16]) * d1;
        }
      }
      for (int j = 0; j < kK; ++j)
        d_kernel[(i * kK + j) * C + o] += lane_sum(acc[j][0] + acc[j][1]);
    }
  }
}
};

// ---------------------------------------------------------------------------------
// Block 2: (N, 14, 14, 6), no padding, kernel (5, 5, 6, 16) -> (N, 5, 5, 16)
// The 16 output channels are one vector; the saved activations are (N, 10, 10, 16).
// ---------------------------------------------------------------------------------

struct Block2 {
static constexpr int H = 14, C = 6, O = 16, HZ = H - kK + 1, HO = HZ / 2;
static constexpr int kTaps = kK * kK * C;  // 150 rows of the (150, 16) kernel matrix
static constexpr int kRow = kK * C;        // 30 floats: one kernel row (j, c)
static constexpr int kRowL = 32;           // ... padded to two vectors
static constexpr int XW = H * C + 8;       // a padded input-gradient row
static constexpr int64_t kImage = H * H * C, kActs = HZ * HZ * O, kOut = HO * HO * O;

template <int kAct>
static void forward_image(const float* x, const float* kernel, const float* bias,
                   float* acts, float* out) {
  float a[HZ][HZ][O];
  const v16 b = load(bias);
  for (int h = 0; h < HZ; ++h) {
    v16 z[HZ];  // one output row: 10 independent sums
    for (int w = 0; w < HZ; ++w) z[w] = b;
    for (int i = 0; i < kK; ++i) {
      const float* row = x + (h + i) * H * C;  // input row h + i, (14, 6)
      for (int j = 0; j < kK; ++j) {
        for (int c = 0; c < C; ++c) {
          const v16 k = load(kernel + ((i * kK + j) * C + c) * O);
          for (int w = 0; w < HZ; ++w) z[w] += row[(w + j) * C + c] * k;
        }
      }
    }
    for (int w = 0; w < HZ; ++w) store(a[h][w], z[w]);
    activate_all<kAct>(&a[h][0][0], HZ * O);
  }
  if (acts != nullptr) std::memcpy(acts, a, sizeof a);
  for (int hp = 0; hp < HO; ++hp) {
    for (int wp = 0; wp < HO; ++wp) {
      const v16 s = load(a[2 * hp][2 * wp]) + load(a[2 * hp][2 * wp + 1]) +
                    load(a[2 * hp + 1][2 * wp]) + load(a[2 * hp + 1][2 * wp + 1]);
      store(out + (hp * HO + wp) * O, s * 0.25f);
    }
  }
}

// Writes this image's input gradient (14, 14, 6) to d_x and adds its kernel and
// bias gradients to d_kernel (150, 16) and d_bias (16). kernel_t is the kernel
// as (16, 5, 32): [o][i][(j, c)], the last 2 of each 32 zero.
template <int kAct>
static void backward_image(const float* x, const float* kernel_t, const float* acts,
                    const float* g, float* d_x, float* d_kernel, float* d_bias) {
  float dz[HZ][HZ][O];
  v16 db = {};
  for (int h = 0; h < HZ; ++h) {
    for (int w = 0; w < HZ; ++w) {
      const float* up = g + ((h / 2) * HO + w / 2) * O;
      const float* a = acts + (h * HZ + w) * O;
      for (int o = 0; o < O; ++o)
        dz[h][w][o] = up[o] * 0.25f * activation_grad<kAct>(a[o]);
      db += load(dz[h][w]);
    }
  }
  store(d_bias, load(d_bias) + db);
  // Kernel: d_kernel[(i, j, c), :] += sum_{h, w} x[h + i, w + j, c] dz[h, w, :].
  for (int i = 0; i < kK; ++i) {
    for (int j = 0; j < kK; ++j) {
      v16 acc[C] = {};  // 6 independent sums
      for (int h = 0; h < HZ; ++h) {
        const float* row = x + (h + i) * H * C;
        for (int w = 0; w < HZ; ++w) {
          const v16 d = load(dz[h][w]);
          const float* v = row + (w + j) * C;
          for (int c = 0; c < C; ++c) acc[c] += v[c] * d;
        }
      }
      float* dk = d_kernel + (i * kK + j) * C * O;
      for (int c = 0; c < C; ++c) store(dk + c * O, load(dk + c * O) + acc[c]);
    }
  }
  // Input: each output position spreads dz[h, w, :] @ kernel_t over the 5 x 5 x 6
  // window it read; a window row (j, c) is 30 contiguous floats of a d_x row.
  float dx[H][XW] = {};
  for (int h = 0; h < HZ; ++h) {
    for (int w = 0; w < HZ; ++w) {
      v16 t[kK][2] = {};
      for (int o = 0; o < O; ++o) {
        const float d = dz[h][w][o];
        const float* k = kernel_t + o * kK * kRowL;
        for (int i = 0; i < kK; ++i) {
          t[i][0] += d * load(k + i * kRowL);
          t[i][1] += d * load(k + i * kRowL + 16);
        }
      }
      for (int i = 0; i < kK; ++i) {
        float* dst = &dx[h + i][w * C];
        store(dst, load(dst) + t[i][0]);
        store(dst + 16, load(dst + 16) + t[i][1]);
      }
    }
  }
  for (int h = 0; h < H; ++h)
    std::memcpy(d_x + h * H * C, dx[h], H * C * sizeof(float));
}
};

// ---------------------------------------------------------------------------------
// FFI handlers
// ---------------------------------------------------------------------------------

// Calls f(std::integral_constant<int, kAct>) for the activation code `act`, so
// that the per-image functions are compiled once for each activation.
template <typename F>
ffi::Error with_activation(int32_t act, const F& f) {
  if (act == kSigmoid) {
    f(std::integral_constant<int, kSigmoid>{});
  } else if (act == kRelu) {
    f(std::integral_constant<int, kRelu>{});
  } else {
    return ffi::Error::InvalidArgument("activation must be 0 (sigmoid) or 1 (relu)");
  }
  return ffi::Error::Success();
}

// Either block's forward pass: out (N, ...) and, with `save`, the activations.
template <typename Block>
ffi::Error BlockForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                        ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> acts, int32_t act, bool save) {
  return with_activation(act, [&](auto a) {
    for_each_image(pool, x.dimensions()[0], [&](int64_t b, int64_t) {
      Block::template forward_image<decltype(a)::value>(
          x.typed_data() + b * Block::kImage, kernel.typed_data(), bias.typed_data(),
          save ? acts->typed_data() + b * Block::kActs : nullptr,
          out->typed_data() + b * Block::kOut);
    });
  });
}

ffi::Error Block1Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> g,
                          ffi::ResultBuffer<ffi::F32> d_kernel,
                          ffi::ResultBuffer<ffi::F32> d_bias, int32_t act) {
  using B = Block1;
  return with_activation(act, [&](auto a) {
    sum_over_images(
        pool, x.dimensions()[0], kK * kK * B::C, B::C, d_kernel->typed_data(),
        d_bias->typed_data(), [&](int64_t b, float* dk, float* db) {
          B::backward_image<decltype(a)::value>(x.typed_data() + b * B::kImage,
                                                acts.typed_data() + b * B::kActs,
                                                g.typed_data() + b * B::kOut, dk, db);
        });
  });
}

ffi::Error Block2Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> acts,
                          ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> d_x,
                          ffi::ResultBuffer<ffi::F32> d_kernel,
                          ffi::ResultBuffer<ffi::F32> d_bias, int32_t act) {
  using B = Block2;
  float kernel_t[B::O * kK * B::kRowL] = {};
  for (int o = 0; o < B::O; ++o)
    for (int i = 0; i < kK; ++i)
      for (int q = 0; q < B::kRow; ++q)
        kernel_t[(o * kK + i) * B::kRowL + q] =
            kernel.typed_data()[(i * B::kRow + q) * B::O + o];
  return with_activation(act, [&](auto a) {
    sum_over_images(
        pool, x.dimensions()[0], B::kTaps * B::O, B::O, d_kernel->typed_data(),
        d_bias->typed_data(), [&](int64_t b, float* dk, float* db) {
          B::backward_image<decltype(a)::value>(
              x.typed_data() + b * B::kImage, kernel_t,
              acts.typed_data() + b * B::kActs, g.typed_data() + b * B::kOut,
              d_x->typed_data() + b * B::kImage, dk, db);
        });
  });
}

// The forward passes' signature: x, kernel, bias -> out, activations.
auto forward_binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int32_t>("activation")
      .Attr<bool>("save");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetBlock1Forward, BlockForward<Block1>,
                              forward_binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetBlock1Backward, Block1Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetBlock2Forward, BlockForward<Block2>,
                              forward_binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LenetBlock2Backward, Block2Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("activation"));
