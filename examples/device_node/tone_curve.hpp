// tone_curve: a user-written resource, a tone curve that any number of nodes
// share by name (here the `tone` node of tone.cpp).
//
// Example config (under `resources:`):
//   - name: curve
//     type: tone_curve
//     params: {black: -0.5, white: 0.9, gamma: 0.6}
//
// Values are on the image scale [-1, 1]: inputs at or below `black` become
// black (-1), inputs at or above `white` become white (1), and the range
// between follows a power curve with exponent `gamma` (below 1 brightens).
#pragma once

#include "graph/errors.hpp"
#include "graph/resource.hpp"

#include <sstream>

namespace example {

class ToneCurve : public diffuflow::Resource {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(double, black, -1.0, "input value that becomes black (-1)", .range(-1.0, 1.0));
    DIFFUFLOW_PARAM(double, white, 1.0, "input value that becomes white (1)", .range(-1.0, 1.0));
    DIFFUFLOW_PARAM(double, gamma, 1.0, "exponent of the curve between them; below 1 brightens", .range(0.1, 10.0));
  };

  static diffuflow::ResourceContract contract() {
    diffuflow::ResourceContract c;
    c.doc = "A tone curve (black point, white point, gamma) for images in [-1, 1]; an example of a user resource.";
    return c;
  }
  // Runs at validation, before anything is built: a rule across two parameters.
  static void check(const Params& p) {
    if (p.black >= p.white) {
      std::ostringstream what;
      what << "white (" << p.white << ") must be above black (" << p.black << ")";
      throw diffuflow::ConfigError({"", 0, 0, "white"}, what.str());
    }
  }

  ToneCurve(const diffuflow::ResourceConfig& config, diffuflow::RunContext&) : params(config.params_as<Params>()) {}

  const Params params;
};

}  // namespace example
