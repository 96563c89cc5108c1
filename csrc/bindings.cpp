// Python bindings of the core (module nasops._C). Arrays in and out are NumPy int64; every
// loop runs with the GIL released. std::invalid_argument surfaces as ValueError.
#include <ATen/Parallel.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

#include "flops.h"
#include "forest.h"
#include "kernels/cpu/dw_conv2d_cpu.h"
#include "sampler.h"
#include "space.h"

namespace py = pybind11;
using nasops::Sampler;
using nasops::SamplerState;
using nasops::Space;
using nasops::SpaceSpec;
using IntArray = py::array_t<int64_t, py::array::c_style>;

namespace {

// The choices of the validated YAML structure (see src/nasops/space.py) as the C++ spec.
SpaceSpec spec_from_dict(const py::dict& d) {
  SpaceSpec spec;
  spec.resolution = d["resolution"].cast<std::vector<int64_t>>();
  spec.stem_width = d["stem"]["width"].cast<std::vector<int64_t>>();
  for (const auto& item : d["stages"]) {
    const py::dict s = item.cast<py::dict>();
    nasops::StageSpec stage;
    stage.width = s["width"].cast<std::vector<int64_t>>();
    stage.depth = s["depth"].cast<std::vector<int64_t>>();
    stage.kernel_size = s["kernel_size"].cast<std::vector<int64_t>>();
    stage.expand_ratio = s["expand_ratio"].cast<std::vector<int64_t>>();
    spec.stages.push_back(stage);
  }
  spec.head_width = d["head"]["width"].cast<std::vector<int64_t>>();
  return spec;
}

// One cost table: an int64 array [N, 2] of (MACs, weights).
std::vector<nasops::Cost> costs_from_array(const IntArray& a, const std::string& name) {
  if (a.ndim() != 2 || a.shape(1) != 2)
    throw std::invalid_argument("cost table " + name + " must be an int64 array of shape [N, 2]");
  std::vector<nasops::Cost> out(a.shape(0));
  for (py::ssize_t i = 0; i < a.shape(0); ++i) out[i] = {a.at(i, 0), a.at(i, 1)};
  return out;
}

// The tables of cost_tables() in src/nasops/nn/supernet.py.
nasops::CostTables tables_from_dict(const py::dict& d) {
  nasops::CostTables t;
  t.stem = costs_from_array(d["stem"].cast<IntArray>(), "stem");
  t.head = costs_from_array(d["head"].cast<IntArray>(), "head");
  for (const auto& a : d["first"]) t.first.push_back(costs_from_array(a.cast<IntArray>(), "first"));
  for (const auto& a : d["rest"]) t.rest.push_back(costs_from_array(a.cast<IntArray>(), "rest"));
  return t;
}

// N of an [N, D] array of architectures (its shape checked; values are checked by the callers).
int64_t rows_of(const Space& space, const IntArray& archs) {
  if (archs.ndim() != 2 || archs.shape(1) != space.num_dims())
    throw std::invalid_argument("architectures must be an int64 array of shape [N, " +
                                std::to_string(space.num_dims()) + "]");
  return archs.shape(0);
}

IntArray new_archs(const Space& space, int64_t n) {
  return IntArray({n, space.num_dims()});
}

py::dict stats_to_dict(const nasops::SamplerStats& s) {
  return py::dict(py::arg("samples") = s.samples, py::arg("trials") = s.trials,
                  py::arg("fallbacks") = s.fallbacks,
                  py::arg("proportional_samples") = s.proportional_samples,
                  py::arg("proportional_draws") = s.proportional_draws);
}

py::dict state_to_dict(const SamplerState& s) {
  py::dict d;
  d["step"] = s.step;
  d["max_trials"] = s.max_trials;
  d["examples_per_bin"] = s.examples_per_bin;
  d["bins"] = s.bins;
  d["counts"] = s.counts;
  d["proposal"] = s.proposal;
  d["examples"] = s.examples;
  d["n_examples"] = s.n_examples;
  py::list rng;  // as hex strings: they are uint64 and must survive any serialiser
  for (uint64_t word : s.rng) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(word));
    rng.append(std::string(buf));
  }
  d["rng"] = rng;
  d["stats"] = stats_to_dict(s.stats);
  return d;
}

SamplerState state_from_dict(const py::dict& d) {
  SamplerState s;
  s.step = d["step"].cast<double>();
  s.max_trials = d["max_trials"].cast<int64_t>();
  s.examples_per_bin = d["examples_per_bin"].cast<int64_t>();
  s.bins = d["bins"].cast<std::vector<int64_t>>();
  s.counts = d["counts"].cast<std::vector<int64_t>>();
  s.proposal = d["proposal"].cast<std::vector<int64_t>>();
  s.examples = d["examples"].cast<std::vector<int64_t>>();
  s.n_examples = d["n_examples"].cast<std::vector<int64_t>>();
  const auto rng = d["rng"].cast<std::vector<std::string>>();
  if (rng.size() != 4) throw std::invalid_argument("sampler state: rng must hold 4 words");
  for (int i = 0; i < 4; ++i) s.rng[i] = std::stoull(rng[i], nullptr, 16);
  const py::dict stats = d["stats"];
  s.stats.samples = stats["samples"].cast<int64_t>();
  s.stats.trials = stats["trials"].cast<int64_t>();
  s.stats.fallbacks = stats["fallbacks"].cast<int64_t>();
  s.stats.proportional_samples = stats["proportional_samples"].cast<int64_t>();
  s.stats.proportional_draws = stats["proportional_draws"].cast<int64_t>();
  return s;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "nasops C++ core: FLOPs, parameter counts and samplers over search spaces";
  m.def("cpu_isa", &nasops::cpu_isa, "instruction set of the CPU depthwise kernels in use");
  m.def("cpu_isas", &nasops::cpu_isas, "instruction sets this processor can run");
  m.def("set_cpu_isa", &nasops::set_cpu_isa,
        "use the 'base', 'avx2' or 'avx512' CPU kernels (depthwise, batch norm + activation)");

  py::class_<Space, std::shared_ptr<Space>>(m, "Space")
      .def(py::init([](const py::dict& d, const py::dict& tables) {
        return std::make_shared<Space>(spec_from_dict(d), tables_from_dict(tables));
      }))
      .def_property_readonly("num_dims", &Space::num_dims)
      .def("dims",
           [](const Space& s) {
             py::list out;
             for (const auto& d : s.dims()) out.append(py::make_tuple(d.name, d.choices));
             return out;
           })
      .def("check",
           [](const Space& s, const IntArray& archs) {
             const int64_t n = rows_of(s, archs);
             py::gil_scoped_release release;
             s.check(archs.data(), n);
           })
      .def(
          "cost",
          [](const Space& s, const IntArray& archs) {
            const int64_t n = rows_of(s, archs);
            IntArray macs(n), params(n);
            {
              py::gil_scoped_release release;
              s.check(archs.data(), n);
              const nasops::CostModel& model = s.cost_model();
              const int64_t D = s.num_dims();
              std::vector<int32_t> x(D);
              int64_t* m = macs.mutable_data();
              int64_t* p = params.mutable_data();
              for (int64_t i = 0; i < n; ++i) {
                s.to_indices(archs.data() + i * D, x.data());
                const nasops::Cost c = model.of_indices(x.data());
                m[i] = c.macs;
                p[i] = c.params;
              }
            }
            return py::make_tuple(macs, params);
          },
          py::arg("archs"), "(MACs, weights) of each row of an [N, D] int64 array, exact integers")
      .def("sample_uniform",
           [](const Space& s, int64_t n, uint64_t seed) {
             IntArray out = new_archs(s, n);
             nasops::Rng rng(seed);
             py::gil_scoped_release release;
             s.sample_uniform(rng, out.mutable_data(), n);
             return out;
           })
      .def("min_arch", &Space::min_arch)
      .def("max_arch", &Space::max_arch);

  py::class_<Sampler>(m, "Sampler")
      .def(py::init([](std::shared_ptr<Space> space, int64_t n_prior, double step, uint64_t seed,
                       int64_t max_trials, int64_t examples_per_bin) {
             py::gil_scoped_release release;
             return std::make_unique<Sampler>(space, n_prior, step, seed, max_trials,
                                              examples_per_bin);
           }),
           py::arg("space"), py::arg("n_prior"), py::arg("step"), py::arg("seed"),
           py::arg("max_trials"), py::arg("examples_per_bin"))
      .def_static("from_state",
                  [](std::shared_ptr<Space> space, const py::dict& state) {
                    return std::make_unique<Sampler>(space, state_from_dict(state));
                  })
      .def("state", [](const Sampler& s) { return state_to_dict(s.state()); })
      .def("stats", [](const Sampler& s) { return stats_to_dict(s.stats()); })
      .def("bins", &Sampler::bins)
      .def("counts", &Sampler::counts)
      .def("bin_of", &Sampler::bin_of)
      .def("find_bin", &Sampler::find_bin)
      .def("sample_bins",
           [](Sampler& s, int64_t n, bool uniform_over_bins) {
             IntArray out(n);
             py::gil_scoped_release release;
             s.sample_bins(out.mutable_data(), n, uniform_over_bins);
             return out;
           })
      .def("sample",
           [](Sampler& s, int64_t bin_pos, int64_t n) {
             IntArray out = new_archs(s.space(), n);
             py::gil_scoped_release release;
             s.sample(bin_pos, out.mutable_data(), n);
             return out;
           })
      .def("sample_proportional",
           [](Sampler& s, int64_t n, bool by_flops) {
             IntArray out = new_archs(s.space(), n);
             py::gil_scoped_release release;
             s.sample_proportional(out.mutable_data(), n, by_flops);
             return out;
           });

  py::class_<nasops::Forest>(m, "Forest")
      .def(py::init([](std::vector<int32_t> feature, std::vector<double> threshold,
                       std::vector<int32_t> left, std::vector<int32_t> right,
                       std::vector<double> value, std::vector<int32_t> roots,
                       int64_t num_features) {
             nasops::Forest f{std::move(feature), std::move(left), std::move(right),
                              std::move(roots), std::move(threshold), std::move(value),
                              num_features};
             f.validate();
             return f;
           }),
           py::arg("feature"), py::arg("threshold"), py::arg("left"), py::arg("right"),
           py::arg("value"), py::arg("roots"), py::arg("num_features"))
      .def("predict", [](const nasops::Forest& f,
                         const py::array_t<double, py::array::c_style | py::array::forcecast>& x) {
        if (x.ndim() != 2) throw std::invalid_argument("forest input must be a 2-D array");
        const int64_t rows = x.shape(0), cols = x.shape(1);
        if (cols != f.num_features)
          throw std::invalid_argument("forest input has " + std::to_string(cols) +
                                      " features per row; the forest was fitted on " +
                                      std::to_string(f.num_features));
        py::array_t<double> out(rows);
        const double* in = x.data();
        double* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          at::parallel_for(0, rows, 1024, [&](int64_t begin, int64_t end) {
            f.predict(in + begin * cols, end - begin, o + begin);
          });
        }
        return out;
      });
}
