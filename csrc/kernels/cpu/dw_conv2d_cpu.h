// Which instruction set the CPU depthwise kernels use (for tests and benchmarks).
#pragma once
#include <string>
#include <vector>

namespace nasops {
std::string cpu_isa();                  // "avx512", "avx2" or "base"
std::vector<std::string> cpu_isas();    // what this processor can run
void set_cpu_isa(const std::string& name);
}  // namespace nasops
