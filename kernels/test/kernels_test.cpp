// Tests of every kernel in kernels/*.cu, run on the CPU through the CUDA emulation of emu.h
// (g++; scripts/test-kernels.sh builds and runs this). References are independent: gguf-py's
// dequantized weights (gen_weights.py) and plain double-precision loops written from the
// Backend trait's definitions (crates/edgetune-core/src/backend/mod.rs), not from the kernels.
//
// Usage: kernels_test WEIGHTS_DIR (the output of gen_weights.py). Exit status 0 iff all pass.
#include "../adamw.cu"
#include "../attention.cu"
#include "../cross_entropy.cu"
#include "../elementwise.cu"
#include "../embedding.cu"
#include "../grad_norm.cu"
#include "../matmul.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"
#include "../swiglu.cu"

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

static int failures = 0;
static int checks = 0;

static void report(bool ok, const std::string& what, double err, double tol) {
  checks++;
  if (!ok) {
    failures++;
    printf("FAIL %s: error %.3g (%.3g × the tolerance)\n", what.c_str(), err, tol);
  }
}

// max_i |got_i − want_i| / (abs_tol + rel_tol·scale_i) must be ≤ 1.
static void expect_close(const std::string& what, const std::vector<float>& got,
                         const std::vector<double>& want, double rel, double abs_tol,
                         const std::vector<double>* scale = nullptr) {
  double worst = 0, worst_err = 0;
  for (size_t i = 0; i < want.size(); i++) {
    const double s = scale ? (*scale)[i] : std::fabs(want[i]);
    const double err = std::fabs((double)got[i] - want[i]);
    const double r = err == 0 ? 0.0 : err / (abs_tol + rel * s);
    if (!(r <= worst)) {  // NaN counts as failure
      worst = std::isnan(r) ? 1e300 : r;
      worst_err = err;
    }
  }
  report(worst <= 1.0, what, worst_err, worst);
}

static std::vector<float> randv(size_t n, float amp, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-amp, amp);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

static unsigned cdiv(unsigned a, unsigned b) { return (a + b - 1) / b; }

template <class T>
static std::vector<T> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<T> v(bytes.size() / sizeof(T));
  memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

struct WeightCase {
  int type, rows, cols, row_bytes;
  std::vector<unsigned char> raw;
  std::vector<float> deq;  // gguf-py
};

// ---- dequant.cuh and embedding vs gguf-py ------------------------------------------------

static void test_dequant(const WeightCase& w) {
  std::vector<float> got((size_t)w.rows * w.cols);
  for (int r = 0; r < w.rows; r++)
    for (int g = 0; g < w.cols / 16; g++)
      et_dequant16(w.type, w.raw.data() + (size_t)r * w.row_bytes, g, w.cols - 16 * g,
                   &got[(size_t)r * w.cols + 16 * g]);
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); i++)
    if (memcmp(&got[i], &w.deq[i], 4) != 0 && !(got[i] == w.deq[i])) bad++;
  // Bit-exact for every type except Q2_K/Q3_K/K-quants where ggml and gguf-py multiply the
  // scales in a different order: allow 1 ulp-ish there.
  std::vector<double> want(w.deq.begin(), w.deq.end());
  expect_close("dequant16 type " + std::to_string(w.type), got, want, 1e-6, 1e-9);
  if (bad && (w.type <= 9 || w.type == 20 || w.type == 30))
    report(false, "dequant16 bit-exact type " + std::to_string(w.type), (double)bad, 0);

  // Embedding: rows 5, 0, 71, 5 of the table.
  std::vector<unsigned> tokens = {5, 0, (unsigned)w.rows - 1, 5};
  std::vector<float> out(tokens.size() * w.cols, -1.0f);
  et_emu_launch(et_embedding, {(unsigned)tokens.size(), 1, 1}, 128, 0, w.raw.data(), w.type,
                w.row_bytes, tokens.data(), out.data(), (int)tokens.size(), w.cols);
  std::vector<double> ewant;
  for (unsigned t : tokens)
    for (int c = 0; c < w.cols; c++) ewant.push_back(w.deq[(size_t)t * w.cols + c]);
  expect_close("embedding type " + std::to_string(w.type), out, ewant, 1e-6, 1e-9);
}

// ---- matmul -------------------------------------------------------------------------------

static void test_matmul(const WeightCase& w, int n) {
  const int out = w.rows, in = w.cols;
  const std::string tag = " type " + std::to_string(w.type) + " n " + std::to_string(n);
  std::vector<float> x = randv((size_t)n * in, 1.0f, 11 + n), dy = randv((size_t)n * out, 1.0f, 12);
  // y = x·Ŵᵀ and dx = dy·Ŵ in double, with Σ|·||·| as the error scale.
  std::vector<double> y_ref((size_t)n * out), y_abs((size_t)n * out);
  std::vector<double> dx_ref((size_t)n * in), dx_abs((size_t)n * in);
  for (int i = 0; i < n; i++) {
    for (int r = 0; r < out; r++) {
      double s = 0, a = 0;
      for (int c = 0; c < in; c++) {
        const double p = (double)x[(size_t)i * in + c] * w.deq[(size_t)r * in + c];
        s += p;
        a += std::fabs(p);
      }
      y_ref[(size_t)i * out + r] = s;
      y_abs[(size_t)i * out + r] = a;
    }
    for (int c = 0; c < in; c++) {
      double s = 0, a = 0;
      for (int r = 0; r < out; r++) {
        const double p = (double)dy[(size_t)i * out + r] * w.deq[(size_t)r * in + c];
        s += p;
        a += std::fabs(p);
      }
      dx_ref[(size_t)i * in + c] = s;
      dx_abs[(size_t)i * in + c] = a;
    }
  }
  const unsigned char* wp = w.raw.data();
  std::vector<float> y((size_t)n * out, NAN), dx((size_t)n * in, NAN);
  et_emu_launch(et_matmul_xwt_simple, {cdiv(out, 8), cdiv(n, 4), 1}, 256, 0, x.data(), wp,
                w.type, w.row_bytes, y.data(), n, out, in);
  expect_close("matmul_xwt_simple" + tag, y, y_ref, 1e-5, 1e-6, &y_abs);
  et_emu_launch(et_matmul_dyw_simple, {cdiv(in, 256), cdiv(n, 4), 1}, 256, 0, dy.data(), wp,
                w.type, w.row_bytes, dx.data(), n, out, in);
  expect_close("matmul_dyw_simple" + tag, dx, dx_ref, 1e-5, 1e-6, &dx_abs);
  // bf16 operands: each product is off by up to ~2·2⁻⁸ relative.
  std::fill(y.begin(), y.end(), NAN);
  std::fill(dx.begin(), dx.end(), NAN);
  et_emu_launch(et_matmul_xwt_mma, {cdiv(out, 64), cdiv(n, 64), 1}, 128, 0, x.data(), wp, w.type,
                w.row_bytes, y.data(), n, out, in);
  expect_close("matmul_xwt_mma" + tag, y, y_ref, 1.0 / 128, 1e-6, &y_abs);
  et_emu_launch(et_matmul_dyw_mma, {cdiv(in, 64), cdiv(n, 64), 1}, 128, 0, dy.data(), wp, w.type,
                w.row_bytes, dx.data(), n, out, in);
  expect_close("matmul_dyw_mma" + tag, dx, dx_ref, 1.0 / 128, 1e-6, &dx_abs);
}

// ---- rmsnorm, rope, swiglu, elementwise ----------------------------------------------------

static void test_rmsnorm() {
  const int n = 5, dim = 300;
  const float eps = 1e-5f;
  auto x = randv(n * dim, 2.0f, 1), w = randv(dim, 1.5f, 2), dy = randv(n * dim, 1.0f, 3);
  std::vector<float> y(n * dim), rstd(n), dx(n * dim);
  et_emu_launch(et_rmsnorm_fwd, {n, 1, 1}, 256, 0, x.data(), w.data(), y.data(), rstd.data(), n,
                dim, eps);
  std::vector<double> y_ref(n * dim), r_ref(n), dx_ref(n * dim);
  for (int i = 0; i < n; i++) {
    double ss = 0;
    for (int j = 0; j < dim; j++) ss += (double)x[i * dim + j] * x[i * dim + j];
    const double r = 1.0 / std::sqrt(ss / dim + eps);
    r_ref[i] = r;
    double dot = 0;
    for (int j = 0; j < dim; j++) {
      y_ref[i * dim + j] = x[i * dim + j] * r * w[j];
      dot += (double)dy[i * dim + j] * w[j] * x[i * dim + j];
    }
    for (int j = 0; j < dim; j++)
      dx_ref[i * dim + j] = r * (w[j] * (double)dy[i * dim + j] - x[i * dim + j] * r * r / dim * dot);
  }
  expect_close("rmsnorm_fwd y", y, y_ref, 1e-5, 1e-6);
  expect_close("rmsnorm_fwd rstd", rstd, r_ref, 1e-5, 1e-6);
  et_emu_launch(et_rmsnorm_fwd, {n, 1, 1}, 256, 0, x.data(), w.data(), y.data(), (float*)nullptr,
                n, dim, eps);
  expect_close("rmsnorm_fwd without rstd", y, y_ref, 1e-5, 1e-6);
  et_emu_launch(et_rmsnorm_bwd, {n, 1, 1}, 256, 0, x.data(), w.data(), rstd.data(), dy.data(),
                dx.data(), n, dim);
  expect_close("rmsnorm_bwd", dx, dx_ref, 1e-4, 1e-5);
}

static void test_rope() {
  const int n = 3, pos0 = 7, nh = 3, hd = 10, rd = 8;
  std::vector<float> inv(rd / 2);
  for (int j = 0; j < rd / 2; j++) inv[j] = (float)std::pow(10000.0, -2.0 * j / rd);
  auto x = randv(n * nh * hd, 1.0f, 4);
  for (float sign : {1.0f, -1.0f}) {
    std::vector<float> got = x;
    et_emu_launch(et_rope, {n, 1, 1}, 256, 0, got.data(), inv.data(), n, pos0, nh, hd, rd, sign);
    std::vector<double> want(x.begin(), x.end());
    for (int i = 0; i < n; i++)
      for (int h = 0; h < nh; h++)
        for (int j = 0; j < rd / 2; j++) {
          const double th = (double)((float)(pos0 + i) * inv[j]) * sign;
          const size_t at = (size_t)i * nh * hd + h * hd + 2 * j;
          const double a = x[at], b = x[at + 1];
          want[at] = a * std::cos(th) - b * std::sin(th);
          want[at + 1] = a * std::sin(th) + b * std::cos(th);
        }
    expect_close(sign > 0 ? "rope fwd" : "rope bwd", got, want, 1e-5, 1e-6);
  }
}

static void test_swiglu_elementwise() {
  const int n = 1000;
  auto g = randv(n, 6.0f, 5), u = randv(n, 2.0f, 6), dh = randv(n, 1.0f, 7);
  g[0] = -100.0f;  // e^100 overflows f32: the limit must come out as 0, not NaN
  std::vector<float> out(n), dg(n), du(n);
  et_emu_launch(et_swiglu_fwd, {cdiv(n, 256), 1, 1}, 256, 0, g.data(), u.data(), out.data(), n);
  et_emu_launch(et_swiglu_bwd, {cdiv(n, 256), 1, 1}, 256, 0, g.data(), u.data(), dh.data(),
                dg.data(), du.data(), n);
  std::vector<double> o_ref(n), dg_ref(n), du_ref(n);
  for (int i = 0; i < n; i++) {
    const double gg = g[i], s = 1.0 / (1.0 + std::exp(-gg));
    o_ref[i] = gg * s * u[i];
    dg_ref[i] = dh[i] * (double)u[i] * s * (1.0 + gg * (1.0 - s));
    du_ref[i] = dh[i] * gg * s;
  }
  expect_close("swiglu_fwd", out, o_ref, 1e-5, 1e-7);
  expect_close("swiglu_bwd dgate", dg, dg_ref, 1e-5, 1e-7);
  expect_close("swiglu_bwd dup", du, du_ref, 1e-5, 1e-7);

  auto x = randv(n, 1.0f, 8), y = randv(n, 1.0f, 9);
  std::vector<double> want(n);
  for (int i = 0; i < n; i++) want[i] = (double)x[i] + y[i];
  et_emu_launch(et_add_assign, {cdiv(n, 256), 1, 1}, 256, 0, x.data(), y.data(), n);
  expect_close("add_assign", x, want, 1e-7, 0);
  for (int i = 0; i < n; i++) want[i] = x[i] * 0.25;
  et_emu_launch(et_scale, {cdiv(n, 256), 1, 1}, 256, 0, x.data(), 0.25f, n);
  expect_close("scale", x, want, 0, 0);
  et_emu_launch(et_copy, {cdiv(n, 256), 1, 1}, 256, 0, y.data(), x.data(), n);
  expect_close("copy", y, want, 0, 0);
  et_emu_launch(et_zero, {cdiv(n - 1, 256), 1, 1}, 256, 0, x.data(), n - 1);
  std::fill(want.begin(), want.end() - 1, 0.0);
  expect_close("zero (n − 1: the last value stays)", x, want, 0, 0);
}

// ---- attention ----------------------------------------------------------------------------

static void test_attention(int n, int pos0, int nh, int nkv, int hd) {
  const int kv = pos0 + n, qw = nh * hd, kvw = nkv * hd, grp = nh / nkv;
  const std::string tag = " n " + std::to_string(n) + " pos0 " + std::to_string(pos0) + " heads " +
                          std::to_string(nh) + "/" + std::to_string(nkv) + " hd " + std::to_string(hd);
  auto q = randv((size_t)n * qw, 1.5f, 20), k = randv((size_t)kv * kvw, 1.5f, 21),
       v = randv((size_t)kv * kvw, 1.0f, 22), dout = randv((size_t)n * qw, 1.0f, 23);
  const double sc = 1.0 / std::sqrt((double)hd);
  std::vector<double> o_ref((size_t)n * qw, 0), lse_ref((size_t)n * nh), dq_ref((size_t)n * qw, 0),
      dk_ref((size_t)kv * kvw, 0), dv_ref((size_t)kv * kvw, 0);
  for (int i = 0; i < n; i++)
    for (int h = 0; h < nh; h++) {
      const int kh = h / grp, vis = pos0 + i + 1;
      std::vector<double> s(vis), p(vis);
      double mx = -1e300;
      for (int t = 0; t < vis; t++) {
        double d = 0;
        for (int c = 0; c < hd; c++)
          d += (double)q[(size_t)i * qw + h * hd + c] * k[(size_t)t * kvw + kh * hd + c];
        s[t] = d * sc;
        mx = std::max(mx, s[t]);
      }
      double sum = 0;
      for (int t = 0; t < vis; t++) sum += std::exp(s[t] - mx);
      const double lse = mx + std::log(sum);
      lse_ref[(size_t)i * nh + h] = lse;
      for (int t = 0; t < vis; t++) p[t] = std::exp(s[t] - lse);
      for (int c = 0; c < hd; c++) {
        double o = 0;
        for (int t = 0; t < vis; t++) o += p[t] * v[(size_t)t * kvw + kh * hd + c];
        o_ref[(size_t)i * qw + h * hd + c] = o;
      }
      double D = 0;
      for (int c = 0; c < hd; c++)
        D += (double)dout[(size_t)i * qw + h * hd + c] * o_ref[(size_t)i * qw + h * hd + c];
      for (int t = 0; t < vis; t++) {
        double dp = 0;
        for (int c = 0; c < hd; c++)
          dp += (double)dout[(size_t)i * qw + h * hd + c] * v[(size_t)t * kvw + kh * hd + c];
        const double ds = p[t] * (dp - D);
        for (int c = 0; c < hd; c++) {
          dq_ref[(size_t)i * qw + h * hd + c] += ds * k[(size_t)t * kvw + kh * hd + c] * sc;
          dk_ref[(size_t)t * kvw + kh * hd + c] += ds * q[(size_t)i * qw + h * hd + c] * sc;
          dv_ref[(size_t)t * kvw + kh * hd + c] += p[t] * dout[(size_t)i * qw + h * hd + c];
        }
      }
    }
  std::vector<float> out((size_t)n * qw, NAN), lse((size_t)n * nh, NAN);
  const size_t sh_fwd = 4 * (4 * hd + 64 * (hd + 1)), sh_dq = 4 * (8 * hd + 64 * (hd + 1)),
               sh_kv = 4 * (64 * (hd + 1) + 16 * hd + 512);
  et_emu_launch(et_attention_fwd, {cdiv(n, 4), (unsigned)nh, 1}, 128, sh_fwd, q.data(), k.data(),
                v.data(), out.data(), lse.data(), n, pos0, nh, nkv, hd);
  expect_close("attention_fwd out" + tag, out, o_ref, 1e-5, 1e-5);
  expect_close("attention_fwd lse" + tag, lse, lse_ref, 1e-5, 1e-5);
  // Feed the reference out/lse rounded to f32 (what a forward would have saved).
  std::vector<float> out_f(o_ref.begin(), o_ref.end()), lse_f(lse_ref.begin(), lse_ref.end());
  std::vector<float> dq((size_t)n * qw, NAN), dk((size_t)kv * kvw, NAN), dv((size_t)kv * kvw, NAN);
  et_emu_launch(et_attention_bwd_dq, {cdiv(n, 4), (unsigned)nh, 1}, 128, sh_dq, q.data(), k.data(),
                v.data(), out_f.data(), lse_f.data(), dout.data(), dq.data(), n, pos0, nh, nkv, hd);
  et_emu_launch(et_attention_bwd_dkdv, {cdiv(kv, 32), (unsigned)nkv, 1}, 256, sh_kv, q.data(),
                k.data(), v.data(), out_f.data(), lse_f.data(), dout.data(), dk.data(), dv.data(), n,
                pos0, nh, nkv, hd);
  expect_close("attention_bwd dq" + tag, dq, dq_ref, 1e-4, 1e-5);
  expect_close("attention_bwd dk" + tag, dk, dk_ref, 1e-4, 1e-5);
  expect_close("attention_bwd dv" + tag, dv, dv_ref, 1e-4, 1e-5);
}

// ---- cross-entropy ------------------------------------------------------------------------

static void test_cross_entropy() {
  // Several rows: row_loss comes from thread 0 while another thread owns logit[t] (a race
  // there shows up with probability 1/2 per row under the emulator's random order).
  const int rows = 10, vocab = 1000;
  const float scale = 1.0f / 9.0f;
  auto logits = randv((size_t)rows * vocab, 8.0f, 30);
  std::vector<int> targets = {17, -100, 999, 0, 300, 511, 128, 77, 640, 255};
  std::vector<double> want((size_t)rows * vocab, 0), loss_ref(rows, 0);
  for (int r = 0; r < rows; r++) {
    if (targets[r] == -100) continue;
    double mx = -1e300, sum = 0;
    for (int j = 0; j < vocab; j++) mx = std::max(mx, (double)logits[(size_t)r * vocab + j]);
    for (int j = 0; j < vocab; j++) sum += std::exp(logits[(size_t)r * vocab + j] - mx);
    loss_ref[r] = mx + std::log(sum) - logits[(size_t)r * vocab + targets[r]];
    for (int j = 0; j < vocab; j++)
      want[(size_t)r * vocab + j] =
          (std::exp(logits[(size_t)r * vocab + j] - mx) / sum - (j == targets[r])) * scale;
  }
  std::vector<float> loss(rows, NAN);
  et_emu_launch(et_ce_softmax_grad, {rows, 1, 1}, 256, 0, logits.data(), targets.data(),
                loss.data(), rows, vocab, scale);
  expect_close("ce_softmax_grad dlogits", logits, want, 1e-5, 1e-8);
  expect_close("ce_softmax_grad row_loss", loss, loss_ref, 1e-6, 1e-6);
}

// ---- AdamW --------------------------------------------------------------------------------

// bitsandbytes create_dynamic_map (as crates/edgetune-core/src/optim/state8bit.rs): levels from 7 decades.
static std::vector<float> dynamic_map(bool sign) {
  std::vector<double> lv;
  for (int i = 0; i < 7; i++) {
    const int nb = sign ? (1 << i) + 1 : (1 << (i + 1)) + 1;
    const double scale = std::pow(10.0, i - 6), step = 0.9 / (nb - 1);
    for (int kk = 0; kk < nb - 1; kk++) {
      const double mid = ((0.1 + step * kk) + (0.1 + step * (kk + 1))) / 2;
      lv.push_back(scale * mid);
      if (sign) lv.push_back(-scale * mid);
    }
  }
  lv.push_back(0.0);
  lv.push_back(1.0);
  std::sort(lv.begin(), lv.end());
  return std::vector<float>(lv.begin(), lv.end());
}

// Nearest level by linear scan, ties to the lower level (the spec, not a binary search).
static int nearest(const std::vector<float>& map, float x) {
  if (std::isnan(x)) return 0;
  int best = 0;
  for (int c = 1; c < 256; c++)
    if (std::fabs(map[c] - x) < std::fabs(map[best] - x)) best = c;
  return best;
}

struct Hyper {
  float decay, omb1, beta2, omb2, step, bc2, eps;
};

// adamw_element of crates/edgetune-core/src/optim/adamw.rs (f32 operations in its order; built with
// -ffp-contract=off, so no FMA).
static void adamw_ref(float& p, float g, float& m, float& v, const Hyper& k) {
  p *= k.decay;
  m += k.omb1 * (g - m);
  v = v * k.beta2 + k.omb2 * g * g;
  const float denom = std::sqrt(v) / k.bc2 + k.eps;
  p += -k.step * m / denom;
}

static void test_adamw() {
  const double lr = 1e-3, wd = 0.01, b1 = 0.9, b2 = 0.999, t = 3;
  const Hyper k = {(float)(1 - lr * wd), (float)(1 - b1), (float)b2, (float)(1 - b2),
                   (float)(lr / (1 - std::pow(b1, t))), (float)std::sqrt(1 - std::pow(b2, t)),
                   1e-8f};
  const int n = 1000;
  auto p = randv(n, 1.0f, 40), g = randv(n, 0.1f, 41), m = randv(n, 0.01f, 42), v = randv(n, 1e-4f, 43);
  for (auto& x : v) x = std::fabs(x);
  auto p2 = p, m2 = m, v2 = v;
  et_emu_launch(et_adamw_f32, {cdiv(n, 256), 1, 1}, 256, 0, p.data(), g.data(), m.data(), v.data(),
                n, k.decay, k.omb1, k.beta2, k.omb2, k.step, k.bc2, k.eps);
  for (int i = 0; i < n; i++) adamw_ref(p2[i], g[i], m2[i], v2[i], k);
  report(p == p2 && m == m2 && v == v2, "adamw_f32 bit-identical to adamw_element", 0, 0);

  // 8-bit: n = 1000 → 4 blocks, the last one short; block 2 all-zero gradient and state.
  auto sm = dynamic_map(true), um = dynamic_map(false);
  std::vector<float> maps(sm);
  maps.insert(maps.end(), um.begin(), um.end());
  const int nb = 4, szero = nearest(sm, 0.0f);
  std::vector<float> absmax(2 * nb), pp = randv(n, 1.0f, 44), gg = randv(n, 0.1f, 45);
  std::vector<unsigned char> qm(n), qv(n);
  std::mt19937 rng(46);
  for (int i = 0; i < n; i++) {
    qm[i] = rng() & 255;
    qv[i] = rng() & 255;
  }
  for (int b = 0; b < nb; b++) {
    absmax[b] = 0.01f * (b + 1);
    absmax[nb + b] = 1e-4f * (b + 1);
  }
  absmax[2] = absmax[nb + 2] = 0;
  for (int i = 512; i < 768; i++) {
    gg[i] = 0;
    qm[i] = szero;
    qv[i] = 0;
  }
  // Reference: the state8bit.rs algorithm with a linear nearest-level scan.
  auto p_ref = pp;
  auto am_ref = absmax;
  std::vector<unsigned char> qm_ref(qm), qv_ref(qv);
  for (int b = 0; b < nb; b++) {
    const int s = b * 256, e = std::min(n, s + 256);
    std::vector<float> mm, vv;
    float mxm = 0, mxv = 0;
    for (int i = s; i < e; i++) {
      float mi = sm[qm[i]] * absmax[b], vi = um[qv[i]] * absmax[nb + b];
      adamw_ref(p_ref[i], gg[i], mi, vi, k);
      mm.push_back(mi);
      vv.push_back(vi);
      mxm = std::max(mxm, std::fabs(mi));
      mxv = std::max(mxv, std::fabs(vi));
    }
    am_ref[b] = mxm;
    am_ref[nb + b] = mxv;
    for (int i = s; i < e; i++) {
      qm_ref[i] = mxm > 0 ? nearest(sm, mm[i - s] / mxm) : szero;
      qv_ref[i] = mxv > 0 ? nearest(um, vv[i - s] / mxv) : 0;
    }
  }
  et_emu_launch(et_adamw_8bit, {nb, 1, 1}, 256, 0, pp.data(), gg.data(), absmax.data(), qm.data(),
                qv.data(), maps.data(), szero, n, k.decay, k.omb1, k.beta2, k.omb2, k.step, k.bc2,
                k.eps);
  report(pp == p_ref, "adamw_8bit params bit-identical", 0, 0);
  report(absmax == am_ref, "adamw_8bit absmax bit-identical", 0, 0);
  report(qm == qm_ref && qv == qv_ref, "adamw_8bit codes identical", 0, 0);
  report(absmax[2] == 0 && qm[600] == szero, "adamw_8bit all-zero block", 0, 0);
}

// ---- grad norm ----------------------------------------------------------------------------

static void test_grad_norm() {
  const int n1 = 5000, n2 = 77;
  auto a = randv(n1, 3.0f, 50), b = randv(n2, 3.0f, 51);
  double want = 0;
  for (float x : a) want += (double)x * x;
  for (float x : b) want += (double)x * x;
  std::vector<double> partials(1024, NAN), out(1, NAN);
  const unsigned g1 = std::min(1024u, cdiv(n1, 2048)), g2 = std::max(1u, std::min(1024u, cdiv(n2, 2048)));
  et_emu_launch(et_sum_squares, {g1, 1, 1}, 256, 0, a.data(), n1, partials.data());
  et_emu_launch(et_reduce_f64, {1, 1, 1}, 256, 0, (const double*)partials.data(), (int)g1,
                out.data(), 0);
  et_emu_launch(et_sum_squares, {g2, 1, 1}, 256, 0, b.data(), n2, partials.data());
  et_emu_launch(et_reduce_f64, {1, 1, 1}, 256, 0, (const double*)partials.data(), (int)g2,
                out.data(), 1);
  report(std::fabs(out[0] - want) <= 1e-12 * want, "grad_norm sum of squares", std::fabs(out[0] - want),
         1e-12 * want);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s WEIGHTS_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream cases(dir + "/cases.txt");
  std::vector<WeightCase> weights;
  WeightCase w;
  while (cases >> w.type >> w.rows >> w.cols >> w.row_bytes) {
    w.raw = read_file<unsigned char>(dir + "/" + std::to_string(w.type) + ".raw");
    w.deq = read_file<float>(dir + "/" + std::to_string(w.type) + ".f32");
    if (w.raw.size() != (size_t)w.rows * w.row_bytes || w.deq.size() != (size_t)w.rows * w.cols) {
      fprintf(stderr, "bad weight case %d in %s\n", w.type, dir.c_str());
      return 2;
    }
    weights.push_back(w);
  }
  if (weights.size() != 16) {
    fprintf(stderr, "expected 16 weight types in %s/cases.txt, got %zu\n", dir.c_str(), weights.size());
    return 2;
  }
  for (const auto& wc : weights) test_dequant(wc);
  for (const auto& wc : weights) {
    // The main types at two sizes (generation-sized and a partial 64-token tile), the rest once.
    const bool main_type = wc.type == ET_Q4_0 || wc.type == ET_Q4_K || wc.type == ET_Q6_K ||
                           wc.type == ET_Q8_0 || wc.type == ET_F32 || wc.type == ET_F16;
    test_matmul(wc, 6);
    if (main_type) test_matmul(wc, 70);
  }
  test_rmsnorm();
  test_rope();
  test_swiglu_elementwise();
  test_attention(37, 5, 4, 2, 40);
  test_attention(9, 30, 2, 2, 64);
  test_attention(5, 0, 8, 1, 128);
  test_cross_entropy();
  test_adamw();
  test_grad_norm();
  printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
