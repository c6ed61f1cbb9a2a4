// tone: a user-written device node. It applies a tone_curve resource
// (tone_curve.hpp) to images as one oneDNN primitive on the pipeline's device.
//
// Example config:
//   - name: tone
//     type: tone
//     params: {curve: curve}
//
// in:  x0    [N,C,H,W] f32 in [-1,1] (host)
// out: toned [N,C,H,W] f32 in [-1,1] on the device,
//            2 * clip((x0 - black) / (white - black), 0, 1)^gamma - 1
//
// The contract says host_only = false, so process() runs on the compute
// thread that owns the oneDNN cores. The arithmetic is one binary primitive,
// u = x0 - black, with three eltwise post-ops: clip u to [0, white - black],
// 2 * (u / (white - black))^gamma (a power with its scale folded into alpha),
// minus 1. It is created on the first batch of each shape and reused after
// that (a KernelSet keyed by shape, compute/kernels.hpp, which also gives it
// the user-mode scratchpad every primitive on the compute thread uses). (Given a fourth eltwise post-op, oneDNN 2.6.3's jit binary kernel
// skipped the last one without an error, so the scale is folded into the power.)
#include "tone_curve.hpp"

#include "compute/kernels.hpp"
#include "graph/registry.hpp"
#include "nodes/common/fields.hpp"

#include <dnnl.hpp>

#include <cmath>

namespace example {

using namespace diffuflow;

const TensorField kToned{"toned", DType::f32, 4, Place::device, "[N,C,H,W] images after the tone curve"};

class Tone : public Node {
 public:
  struct Params {
    DIFFUFLOW_PARAMS(Params);
    DIFFUFLOW_PARAM(std::string, curve, "", "the tone_curve resource to apply", .resource("tone_curve"));
  };

  static NodeContract contract() {
    NodeContract c;
    c.doc = "Applies a tone curve to x0 on the device (one oneDNN primitive); an example of a user device node.";
    c.example = "{name: tone, type: tone, params: {curve: curve}}";
    c.inputs = {{"in", {fields::kX0}, "x0 [N,C,H,W] f32 in [-1,1]"}};
    c.outputs = {{"out", {kToned}, "toned [N,C,H,W] f32 in [-1,1] on the device"}};
    c.host_only = false;
    c.max_concurrency = 1;  // one primitive per shape, built on first use
    return c;
  }

  Tone(const NodeConfig& config, RunContext& ctx)
      : Node(config, ctx),
        curve_(ctx.resource_as<ToneCurve>(config.params_as<Params>().curve)->params),
        black_({1, 1, 1, 1}, DType::f32, ctx.device().engine()),
        kernels_(ctx.device().engine()) {
    black_.map<float>()[0] = static_cast<float>(curve_.black);  // [1,1,1,1], broadcast over x0
  }

  void process(const NodeInput& in, Emitter& out) override {
    const Packet& packet = in.packet();
    const Tensor& x0 = packet.get(fields::kX0);  // [N,C,H,W] on the host
    Device& device = ctx().device();
    const Tensor src = device.is_cpu() ? x0 : x0.copy_to(device.engine());
    Tensor toned(x0.shape(), DType::f32, device.engine());  // [N,C,H,W] on the device
    kernel_for(src).run(device.stream(), {{DNNL_ARG_SRC_0, src.memory()},
                                          {DNNL_ARG_SRC_1, black_.memory()},
                                          {DNNL_ARG_DST, toned.memory()}});
    device.stream().wait();
    out.emit(packet.with(kToned, toned));
  }

 private:
  // The primitive for x's shape, built on the first batch of that shape.
  const Kernel& kernel_for(const Tensor& x) {
    return kernels_.get(x.shape(), [&] {
      using dnnl::algorithm;
      const double range = curve_.white - curve_.black;
      dnnl::post_ops ops;
      ops.append_eltwise(1.f, algorithm::eltwise_clip, 0.f, static_cast<float>(range));
      ops.append_eltwise(1.f, algorithm::eltwise_pow, static_cast<float>(2.0 * std::pow(1.0 / range, curve_.gamma)),
                         static_cast<float>(curve_.gamma));
      ops.append_eltwise(1.f, algorithm::eltwise_linear, 1.f, -1.f);
      dnnl::primitive_attr attr = user_scratchpad_attr();
      attr.set_post_ops(ops);
      const dnnl::binary::desc desc(algorithm::binary_sub, x.desc(), black_.desc(), x.desc());
      return dnnl::binary::primitive_desc(desc, attr, kernels_.engine());
    });
  }

  const ToneCurve::Params curve_;
  Tensor black_;
  KernelSet<Shape> kernels_;
};

}  // namespace example

DIFFUFLOW_REGISTER_NODE(tone, example::Tone);
