// precision: fastest's probe: it times both precisions where bf16 is native,
// applies its margin, and is measured once per thread count.
#include "compute/precision_probe.hpp"

#include <doctest/doctest.h>
#include <omp.h>

using namespace diffuflow;

TEST_CASE("the precision probe times f32 and bf16 where bf16 is native and takes bf16 only past its margin") {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  const PrecisionProbe probe = probe_precision(engine);
  CHECK(probe.threads == omp_get_max_threads());
  if (native_bf16(engine)) {
    CHECK(probe.f32_ms > 0);
    CHECK(probe.bf16_ms > 0);
    const bool bf16_clearly_faster = probe.f32_ms >= kBf16Margin * probe.bf16_ms;
    CHECK(probe.chosen == (bf16_clearly_faster ? Precision::bf16 : Precision::f32));
    CHECK(probe.summary().find("f32 ") != std::string::npos);
  } else {
    CHECK(probe.chosen == Precision::f32);
    CHECK(probe.bf16_ms == 0);
    CHECK(probe.summary().find("no native bf16") != std::string::npos);
  }
  MESSAGE(probe.summary());

  // Kept for the process: a second model made at the same thread count gets
  // the same answer without timing again (the same figures, to the bit).
  const PrecisionProbe again = probe_precision(engine);
  CHECK(again.chosen == probe.chosen);
  CHECK(again.f32_ms == probe.f32_ms);
  CHECK(again.bf16_ms == probe.bf16_ms);
}
