// Stand-in for CUDA's <math_constants.h> in the SIMT emulator (tests/simt/simt.h).
#pragma once

#include <cmath>

#define CUDART_INF_F INFINITY
#define CUDART_NAN_F NAN
