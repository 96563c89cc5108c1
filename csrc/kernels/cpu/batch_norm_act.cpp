// Batch norm followed by an activation, fused, on channels-last float32 CPU tensors:
//
//   nasops::bn_act            out of place, with autograd (training): statistics in one pass
//                             over x, the activated result in a second; saves x, the batch mean
//                             and 1 / std for the backward, not the normalised values.
//   nasops::bn_act_backward   two passes over (x, grad_y): the sums of dz = dy * act'(z) and of
//                             dz * (x - mean), then grad_x, recomputing z.
//   nasops::batch_norm_act_   in place, no autograd (BN re-calibration and evaluation).
//
// PyTorch's batch norm and activation make five to six passes over memory forward and eight
// backward (and keep the normalised tensor alive for the activation's backward); these make
// three and five. Statistics are summed over a fixed number of row blocks in double, then the
// blocks in order, so results do not depend on the number of threads.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "batch_norm_act.h"
#include "dw_conv2d_cpu.h"

namespace nasops {
namespace {

Act act_of(const std::string& name, const char* op) {
  if (name == "identity") return Act::identity;
  if (name == "relu") return Act::relu;
  if (name == "silu") return Act::silu;
  if (name == "hardswish") return Act::hardswish;
  TORCH_CHECK_VALUE(false, op, ": act = '", name,
                    "' is not supported; allowed: identity, relu, silu, hardswish");
}

const BnKernels& kernels() {
  static const BnKernels base = cpu_base::bn_kernels();
#if defined(NASOPS_HAVE_AVX2)
  static const BnKernels avx2 = cpu_avx2::bn_kernels();
  static const BnKernels avx512 = cpu_avx512::bn_kernels();
  const std::string isa = cpu_isa();  // the depthwise kernels' switch (NASOPS_CPU_ISA) rules both
  if (isa == "avx512") return avx512;
  if (isa == "avx2") return avx2;
#endif
  return base;
}

// Rows of C values per task of the elementwise passes: about 32 K values.
int64_t grain(int64_t C) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, C)); }

constexpr int64_t kBlocks = 64;

// Runs body(rows begin, rows count, partial) over kBlocks fixed blocks of rows in parallel, each
// with its own 2 * C doubles (zeroed), then adds the blocks in order into a and b.
template <typename Body>
void blocked_sums(int64_t rows, int64_t C, double* a, double* b, Body&& body) {
  std::vector<double> partial(kBlocks * 2 * C, 0.0);
  const int64_t per_block = (rows + kBlocks - 1) / kBlocks;
  at::parallel_for(0, kBlocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t lo = std::min(rows, blk * per_block), hi = std::min(rows, lo + per_block);
      if (hi > lo) body(lo, hi - lo, partial.data() + blk * 2 * C, partial.data() + blk * 2 * C + C);
    }
  });
  std::fill(a, a + C, 0.0);
  std::fill(b, b + C, 0.0);
  for (int64_t blk = 0; blk < kBlocks; ++blk)
    for (int64_t c = 0; c < C; ++c) {
      a[c] += partial[blk * 2 * C + c];
      b[c] += partial[blk * 2 * C + C + c];
    }
}

void check_vector(const at::Tensor& x, const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(1), op, ": ", name, " must have C = ",
                    x.size(1), " values, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat && t.is_cpu(), op, ": ", name,
                   " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

void check_input(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": ", name, " must be 4-D [N, C, H, W], got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat && x.is_cpu(), op, ": ", name,
                   " must be a float32 CPU tensor, got ", x.scalar_type(), " on ", x.device());
}

// Per-channel mean and biased variance of a channels-last x [rows, C], in double: the moments
// of x minus its first row (a value of each channel, so near its mean however large that is
// against the spread), then shifted back.
void batch_moments(const float* x, int64_t rows, int64_t C, std::vector<double>& mean,
                   std::vector<double>& var) {
  std::vector<double> sum(C), squares(C);
  const BnKernels& k = kernels();
  blocked_sums(rows, C, sum.data(), squares.data(), [&](int64_t lo, int64_t n, double* s, double* q) {
    k.stats(x + lo * C, x, n, C, s, q);
  });
  mean.resize(C);
  var.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    const double d = sum[c] / rows;
    mean[c] = x[c] + d;
    var[c] = std::max(squares[c] / rows - d * d, 0.0);
  }
}

// running = (1 - momentum) running + momentum batch (the variance unbiased), as PyTorch does.
void update_running(float* running_mean, float* running_var, const std::vector<double>& mean,
                    const std::vector<double>& var, int64_t rows, double momentum) {
  const double n = static_cast<double>(rows);
  for (size_t c = 0; c < mean.size(); ++c) {
    running_mean[c] = static_cast<float>((1 - momentum) * running_mean[c] + momentum * mean[c]);
    running_var[c] = static_cast<float>((1 - momentum) * running_var[c] + momentum * var[c] * n / (n - 1));
  }
}

// The per-channel affine map of the kernels, z = (x - center) * scale + shift: center is the
// mean rounded to float, scale = weight / sqrt(var + eps), shift = bias minus what the rounding
// of the mean left out.
struct Affine {
  std::vector<float> center, scale, shift;
  Affine(const float* w, const float* b, const double* mean, const double* invstd, int64_t C)
      : center(C), scale(C), shift(C) {
    for (int64_t c = 0; c < C; ++c) {
      const double s = w[c] * invstd[c];
      center[c] = static_cast<float>(mean[c]);
      scale[c] = static_cast<float>(s);
      shift[c] = static_cast<float>(b[c] - (mean[c] - center[c]) * s);
    }
  }
};

void normalize(const float* x, float* y, int64_t rows, int64_t C, const Affine& f, Act act) {
  const auto run = kernels().forward[static_cast<int>(act)];
  at::parallel_for(0, rows, grain(C), [&](int64_t begin, int64_t end) {
    run(x + begin * C, y + begin * C, end - begin, C, f.center.data(), f.scale.data(),
        f.shift.data());
  });
}

// ---- nasops::bn_act -------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_cpu(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool training, double momentum, double eps, const std::string& act_name) {
  const char* op = "bn_act";
  const Act act = act_of(act_name, op);
  check_input(input, op);
  check_vector(input, weight, op, "weight");
  check_vector(input, bias, op, "bias");
  const bool running = running_mean.has_value() && running_var.has_value();
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(), op,
                    ": give both running_mean and running_var, or neither");
  if (running) {
    check_vector(input, *running_mean, op, "running_mean");
    check_vector(input, *running_var, op, "running_var");
    TORCH_CHECK_VALUE(running_mean->is_contiguous() && running_var->is_contiguous(), op,
                      ": running statistics must be contiguous");
  }
  TORCH_CHECK_VALUE(training || running, op, ": evaluation mode needs the running statistics");
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  const int64_t C = x.size(1), rows = C == 0 ? 0 : x.numel() / C;
  TORCH_CHECK_VALUE(!training || rows > 1, op, ": training mode needs more than one value per ",
                    "channel, got shape ", x.sizes());
  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  at::Tensor save_mean = at::zeros({C}, x.options()), save_invstd = at::zeros({C}, x.options());
  if (rows == 0) return {y, save_mean, save_invstd};
  std::vector<double> mean, var;
  if (training) {
    batch_moments(x.data_ptr<float>(), rows, C, mean, var);
    if (running)
      update_running(running_mean->data_ptr<float>(), running_var->data_ptr<float>(), mean, var,
                     rows, momentum);
  } else {
    const float* rm = running_mean->data_ptr<float>();
    const float* rv = running_var->data_ptr<float>();
    mean.assign(rm, rm + C);
    var.assign(rv, rv + C);
  }
  std::vector<double> invstd(C);
  for (int64_t c = 0; c < C; ++c) {
    invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    save_mean.data_ptr<float>()[c] = static_cast<float>(mean[c]);
    save_invstd.data_ptr<float>()[c] = static_cast<float>(invstd[c]);
  }
  normalize(x.data_ptr<float>(), y.data_ptr<float>(), rows, C,
            Affine(w.data_ptr<float>(), b.data_ptr<float>(), mean.data(), invstd.data(), C), act);
  return {y, save_mean, save_invstd};
}

// ---- nasops::bn_act_backward ----------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& save_mean, const at::Tensor& save_invstd,
    bool training, const std::string& act_name, std::array<bool, 3> output_mask) {
  const char* op = "bn_act_backward";
  const Act act = act_of(act_name, op);
  check_input(input, op, "input");
  check_input(grad_output, op, "grad_output");
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(), op, ": grad_output has shape ",
                    grad_output.sizes(), " but input has ", input.sizes());
  for (auto [t, name] : {std::pair{&weight, "weight"}, {&bias, "bias"}, {&save_mean, "save_mean"},
                         {&save_invstd, "save_invstd"}})
    check_vector(input, *t, op, name);
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor dy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t C = x.size(1), rows = C == 0 ? 0 : x.numel() / C;
  at::Tensor grad_input, grad_weight = at::empty({C}, x.options()), grad_bias = at::empty({C}, x.options());
  if (output_mask[0]) grad_input = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (rows == 0) {
    grad_weight.zero_();
    grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  const BnKernels& k = kernels();
  const int a = static_cast<int>(act);
  const float* xp = x.data_ptr<float>();
  const float* gp = dy.data_ptr<float>();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  const at::Tensor saved_mean = save_mean.contiguous(), saved_invstd = save_invstd.contiguous();
  const float* mean_f = saved_mean.data_ptr<float>();
  const float* invstd_f = saved_invstd.data_ptr<float>();
  std::vector<double> mean(mean_f, mean_f + C), invstd(invstd_f, invstd_f + C);
  const Affine f(w.data_ptr<float>(), b.data_ptr<float>(), mean.data(), invstd.data(), C);
  // Sums of dz and dz (x - mean): the bias and weight gradients, and the training-mode terms
  // of the input gradient.
  std::vector<double> sum_dz(C), sum_dzx(C);
  const bool need_sums = training || output_mask[1] || output_mask[2];
  if (need_sums)
    blocked_sums(rows, C, sum_dz.data(), sum_dzx.data(), [&](int64_t lo, int64_t n, double* s, double* q) {
      k.grad_stats[a](gp + lo * C, xp + lo * C, n, C, f.center.data(), f.scale.data(),
                      f.shift.data(), s, q);
    });
  for (int64_t c = 0; c < C; ++c) {
    sum_dzx[c] -= (mean[c] - f.center[c]) * sum_dz[c];  // from x - center to x - mean
    grad_bias.data_ptr<float>()[c] = static_cast<float>(sum_dz[c]);
    grad_weight.data_ptr<float>()[c] = static_cast<float>(sum_dzx[c] * invstd[c]);
  }
  if (output_mask[0]) {
    // dx = scale * (dz - sum_dz / M - (x - mean) invstd^2 sum_dzx / M) in training mode, and
    // scale * dz in evaluation mode: dz * scale + ca * (x - center) + cb.
    std::vector<float> ca(C, 0.0f), cb(C, 0.0f);
    if (training) {
      for (int64_t c = 0; c < C; ++c) {
        const double s = f.scale[c], slope = -s * invstd[c] * invstd[c] * sum_dzx[c] / rows;
        ca[c] = static_cast<float>(slope);
        cb[c] = static_cast<float>(-s * sum_dz[c] / rows - slope * (mean[c] - f.center[c]));
      }
    }
    float* ip = grad_input.data_ptr<float>();
    at::parallel_for(0, rows, grain(C), [&](int64_t begin, int64_t end) {
      k.grad_input[a](gp + begin * C, xp + begin * C, ip + begin * C, end - begin, C,
                      f.center.data(), f.scale.data(), f.shift.data(), ca.data(), cb.data());
    });
  }
  return {grad_input, output_mask[1] ? grad_weight : at::Tensor(),
          output_mask[2] ? grad_bias : at::Tensor()};
}

// ---- autograd ---------------------------------------------------------------------------------

// Autograd of bn_act in C++: no Python on the training hot path.
class BnActFunction : public torch::autograd::Function<BnActFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
      const at::Tensor& bias, const std::optional<at::Tensor>& running_mean,
      const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
      const std::string& act) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("nasops::bn_act", "")
                               .typed<decltype(bn_act_cpu)>();
    auto [y, mean, invstd] = op.call(x, weight, bias, running_mean, running_var, training,
                                     momentum, eps, act);
    ctx->save_for_backward({x, weight, bias, mean, invstd});
    ctx->saved_data["training"] = training;
    ctx->saved_data["act"] = act;
    ctx->mark_non_differentiable({mean, invstd});
    return {y, mean, invstd};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("nasops::bn_act_backward", "")
                               .typed<decltype(bn_act_backward_cpu)>();
    const at::Tensor& grad = grads[0];
    if (!grad.defined())
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor(), at::Tensor(), at::Tensor()};
    auto [gx, gw, gb] = op.call(grad, saved[0], saved[1], saved[2], saved[3], saved[4],
                                ctx->saved_data["training"].toBool(),
                                ctx->saved_data["act"].toStringRef(),
                                {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                 ctx->needs_input_grad(2)});
    return {gx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_autograd(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool training, double momentum, double eps, const std::string& act) {
  auto out = BnActFunction::apply(x, weight, bias, running_mean, running_var, training, momentum,
                                  eps, act);
  return {out[0], out[1], out[2]};
}

// ---- nasops::batch_norm_act_ (in place, no autograd) -----------------------------------------

void batch_norm_act_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& running_mean, const at::Tensor& running_var,
                        bool training, double momentum, double eps, const std::string& act_name) {
  const char* op = "batch_norm_act_";
  const Act act = act_of(act_name, op);
  TORCH_CHECK_VALUE(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), op,
                    ": x must be a channels-last [N, C, H, W] tensor, got shape ", x.sizes(),
                    " with strides ", x.strides());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x has dtype ", x.scalar_type(),
                   "; allowed: float32");
  TORCH_CHECK(!(at::GradMode::is_enabled() && x.requires_grad()),
              "batch_norm_act_ has no gradient; call it under torch.no_grad()");
  for (auto [t, name] : {std::pair{&weight, "weight"}, {&bias, "bias"},
                         {&running_mean, "running_mean"}, {&running_var, "running_var"}}) {
    check_vector(x, *t, op, name);
    TORCH_CHECK_VALUE(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }
  const int64_t C = x.size(1), rows = x.numel() / std::max<int64_t>(C, 1);
  if (rows == 0 || C == 0) return;
  TORCH_CHECK_VALUE(!training || rows > 1, op, ": training mode needs more than one ",
                    "value per channel, got shape ", x.sizes());
  float* data = x.data_ptr<float>();
  std::vector<double> mean, var;
  if (training) {
    batch_moments(data, rows, C, mean, var);
    update_running(running_mean.data_ptr<float>(), running_var.data_ptr<float>(), mean, var, rows,
                   momentum);
  } else {
    const float* rm = running_mean.data_ptr<float>();
    const float* rv = running_var.data_ptr<float>();
    mean.assign(rm, rm + C);
    var.assign(rv, rv + C);
  }
  std::vector<double> invstd(C);
  for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
  normalize(data, data, rows, C,
            Affine(weight.data_ptr<float>(), bias.data_ptr<float>(), mean.data(), invstd.data(), C),
            act);
}

}  // namespace
}  // namespace nasops

TORCH_LIBRARY_FRAGMENT(nasops, m) {
  m.def("batch_norm_act_(Tensor(a!) x, Tensor weight, Tensor bias, Tensor(b!) running_mean, "
        "Tensor(c!) running_var, bool training, float momentum, float eps, str act) -> ()");
  m.def("bn_act(Tensor x, Tensor weight, Tensor bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps, str act) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("bn_act_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor bias, "
        "Tensor save_mean, Tensor save_invstd, bool training, str act, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nasops, CPU, m) {
  m.impl("batch_norm_act_", &nasops::batch_norm_act_cpu);
  m.impl("bn_act", &nasops::bn_act_cpu);
  m.impl("bn_act_backward", &nasops::bn_act_backward_cpu);
}

TORCH_LIBRARY_IMPL(nasops, Autograd, m) { m.impl("bn_act", &nasops::bn_act_autograd); }
