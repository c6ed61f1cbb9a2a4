#include "tone_curve.hpp"

#include "graph/registry.hpp"

DIFFUFLOW_REGISTER_RESOURCE(tone_curve, example::ToneCurve);
