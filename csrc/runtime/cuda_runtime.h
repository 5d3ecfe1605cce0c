// CUDA runtime queries, callable without CUDA headers.
#pragma once

namespace lumo {
namespace cuda {

// Number of visible CUDA devices; 0 when there is none. Throws
// std::runtime_error when the driver cannot be queried (e.g. no driver).
int device_count();

// cudaRuntimeGetVersion(): 1000 * major + 10 * minor of the linked cudart.
int runtime_version();

// cudaDriverGetVersion(): 0 when no driver is installed.
int driver_version();

}  // namespace cuda
}  // namespace lumo
